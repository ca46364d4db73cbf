//! Pure aggregation over plain structs: no kernel, no I/O, tested without root.

pub mod drops;
pub mod fine_histogram;
pub mod fingerprint;
pub mod histogram;
pub mod memory;
pub mod names;
pub mod queries;
pub mod query_texts;
pub mod stacks;
pub mod syscalls;
pub mod tcp;
