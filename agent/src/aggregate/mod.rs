//! Pure aggregation over plain structs: no kernel, no I/O, tested without root.

pub mod histogram;
pub mod stacks;
