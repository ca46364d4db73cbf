//! Getting results out: profile files on disk, Prometheus metrics (later: push).

pub mod files;
pub mod metrics;
