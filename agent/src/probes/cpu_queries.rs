//! `record cpu --by-query`: the query tracer runs inside the CPU sampler's
//! object, so the CPU program can read which query each thread is in
//! (`QUERY_ACTIVE`); samples then carry that query's fingerprint id.

use std::collections::HashMap;

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
    queries::{QueryError, QueryOptions, QueryTracer, events::QueryEvent},
};
use crate::aggregate::fingerprint::{id_hex, normalize_captured};

/// Text ids remembered: twice the kernel's "already sent" table.
const MAX_TEXTS: usize = 131_072;

/// Texts seen for the capture's queries, and the tracer that sends them.
pub struct QueryLabels {
    tracer: QueryTracer,
    /// text id -> fingerprint id (hex).
    fingerprints: HashMap<u64, String>,
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
        let tracer = QueryTracer::attach(
            ebpf,
            &QueryOptions {
                pids: pids.to_vec(),
            },
        )?;
        Ok(Self {
            tracer,
            fingerprints: HashMap::new(),
        })
    }

    /// Finds new libraries and learns texts (completions are not needed).
    pub fn poll(&mut self, ebpf: &mut Ebpf) {
        let _ = self.tracer.scan(ebpf, false);
        let fingerprints = &mut self.fingerprints;
        self.tracer.poll(|ev| {
            if let QueryEvent::Text {
                text_id,
                bytes,
                truncated,
                ..
            } = ev
            {
                // Bounded like `record queries`' text table: past it, start
                // over (samples of forgotten texts are labelled "unknown").
                if fingerprints.len() >= MAX_TEXTS {
                    fingerprints.clear();
                }
                fingerprints
                    .entry(text_id)
                    .or_insert_with(|| id_hex(normalize_captured(&bytes, truncated).id));
            }
        });
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

    /// The `query` label of a sample taken inside query `text_id`.
    #[must_use]
    pub fn label(&self, text_id: u64) -> String {
        self.fingerprints
            .get(&text_id)
            .cloned()
            .unwrap_or_else(|| "unknown".to_owned())
    }
}
