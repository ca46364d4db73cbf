//! Pure aggregation over plain structs: no kernel, no I/O, tested without root.

pub mod histogram;
pub mod names;
pub mod stacks;
pub mod syscalls;
pub mod tcp;
