//! Getting results out: profile files on disk (later: Prometheus, push).

pub mod files;
pub mod pyroscope;
