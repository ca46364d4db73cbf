//! Getting results out: profile bytes and files, the agent's store, its
//! Prometheus metrics.

pub mod files;
pub mod metrics;
pub mod profile;
pub mod store;
