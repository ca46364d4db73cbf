//! qprof: an eBPF host and query profiler.
//!
//! The pipeline reads left to right: `probes` (kernel side, loading and
//! draining) -> `aggregate` (pure) -> `symbolize` -> `profiles` (the formats
//! crate) -> `export`; `cli` drives it. No module reaches back.

pub mod aggregate;
pub mod cli;
pub mod daemon;
pub mod export;
pub mod probes;
pub mod server;
pub mod symbolize;
pub mod trigger;
