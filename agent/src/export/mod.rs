//! Getting results out: profile bytes and files, the agent's store.

pub mod files;
pub mod profile;
pub mod store;
