//! Feeding the agent's Prometheus metrics (`export::metrics`) with what
//! only the daemon knows: host and store readings on a timer, and the
//! encoding of a scrape.

use std::{sync::Arc, time::Duration};

use super::{Shared, log};
use crate::export::metrics::host::HostSampler;

/// How often host, process and store readings are refreshed: scrapes
/// come every 15-60 s; reading every process's stats more often than
/// that would only cost CPU.
const SAMPLE_EVERY: Duration = Duration::from_secs(15);

/// Processes reported by CPU and by RSS: the heaviest few of a host are
/// what an operator looks for; more would only add series.
const TOP_PROCESSES: usize = 20;

/// Content type and body of a scrape.
pub fn encode(shared: &Shared, accept: Option<&str>) -> (&'static str, String) {
    match shared.metrics.encode(accept) {
        Ok(pair) => pair,
        Err(e) => (
            "text/plain; charset=utf-8",
            format!("# encoding failed: {e}\n"),
        ),
    }
}

/// Refreshes host, process and store readings every [`SAMPLE_EVERY`].
pub fn spawn_sampler(shared: &Arc<Shared>) {
    let s = shared.clone();
    shared.tracker.spawn(async move {
        let mut sampler = match HostSampler::new(TOP_PROCESSES) {
            Ok(h) => Some(h),
            Err(e) => {
                log(&format!("host metrics unavailable: {e}"));
                None
            }
        };
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tokio::select! {
                () = s.cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Some(h) = sampler.as_mut() {
                s.metrics.set_host(h.sample());
            }
            s.metrics.set_store_bytes("data", s.store.size());
        }
    });
}
