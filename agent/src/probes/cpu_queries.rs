//! `record cpu --by-query`: the query tracer runs inside the CPU sampler's
//! object, so the CPU program can read which query each thread is in
//! (`QUERY_ACTIVE`); samples then carry that query's fingerprint id.

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap},
};
use qprof_common::{
    cpu::{CONFIG_BY_QUERY, MAP_CONFIG},
    queries::{ActiveQuery, MAP_ACTIVE},
};

use super::{
    ProbeError, map, map_mut,
    queries::{QueryError, QueryOptions, QueryProbes, events::QueryEvent},
};
use crate::aggregate::{fingerprint::id_hex, query_texts::QueryTexts};

/// Texts seen for the capture's queries, and the probes that send them.
pub struct QueryLabels {
    probes: QueryProbes,
    /// The shared text table (normalized text only: labels never carry
    /// literals).
    texts: QueryTexts,
}

impl QueryLabels {
    pub fn attach(ebpf: &mut Ebpf, pids: &[u32]) -> Result<Self, QueryError> {
        let map = map_mut(ebpf, MAP_CONFIG)?;
        let mut cfg: Array<_, u64> = Array::try_from(map).map_err(|source| ProbeError::Map {
            name: MAP_CONFIG,
            source,
        })?;
        cfg.set(CONFIG_BY_QUERY, 1, 0)
            .map_err(|source| ProbeError::Map {
                name: MAP_CONFIG,
                source,
            })?;
        let probes = QueryProbes::attach(
            ebpf,
            &QueryOptions {
                pids: pids.to_vec(),
                raw_queries: false,
            },
        )?;
        let mut labels = Self {
            probes,
            texts: QueryTexts::new(false),
        };
        labels.print_warnings();
        Ok(labels)
    }

    /// Finds new libraries and learns texts; completions mark their texts
    /// used, so the texts of running statements are the last evicted.
    pub fn poll(&mut self, ebpf: &mut Ebpf) {
        self.probes.rescan(ebpf);
        let texts = &mut self.texts;
        self.probes.poll(|ev| match ev {
            QueryEvent::Text {
                text_id,
                bytes,
                truncated,
                ..
            } => texts.learn(text_id, &bytes, truncated),
            QueryEvent::Done(done) => _ = texts.resolve(done.text_id),
            // Labels only: `record queries` reports what it cannot follow.
            QueryEvent::Unfollowed(_) => {}
        });
        let forgotten = self.texts.take_forgotten();
        if let Err(err) = QueryProbes::forget_texts(ebpf, &forgotten) {
            eprintln!("qprof: forgetting evicted query texts: {err}");
        }
        self.print_warnings();
    }

    /// Libraries that cannot be traced are named as they are found.
    fn print_warnings(&mut self) {
        for warning in self.probes.take_warnings() {
            eprintln!("qprof: {warning}");
        }
    }

    /// The text id of the query thread `tid` is inside now, 0 if none (for
    /// threads whose block has not ended, which the kernel side never saw
    /// come back).
    #[must_use]
    pub fn active(ebpf: &Ebpf, tid: u32) -> u64 {
        map(ebpf, MAP_ACTIVE)
            .ok()
            .and_then(|m| BpfHashMap::<_, u32, ActiveQuery>::try_from(m).ok())
            .and_then(|m| m.get(&tid, 0).ok())
            .map_or(0, |q| q.text_id)
    }

    /// The `query` label of a sample taken inside query `text_id`
    /// ("unknown" when its text was never seen or was evicted).
    #[must_use]
    pub fn label(&self, text_id: u64) -> String {
        self.texts
            .peek(text_id)
            .map_or_else(|| "unknown".to_owned(), |n| id_hex(n.id))
    }

    /// Text ids evicted from the table so far (a drop, for summaries).
    #[must_use]
    pub fn texts_evicted(&self) -> u64 {
        self.texts.evicted()
    }
}
