//! Getting results out: profile bytes and files (later: Prometheus, push).

pub mod files;
pub mod profile;
