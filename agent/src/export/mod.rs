//! Getting results out: profile bytes and files, the agent's store, its
//! Prometheus metrics, pushes to Pyroscope.

pub mod files;
pub mod metrics;
pub mod profile;
pub mod pyroscope;
pub mod store;
