//! The ABI between qprof's BPF programs and its agent.
//!
//! Every type that crosses the kernel boundary lives here, uses fixed-width
//! integers, spells out its padding and pins its size with a const assert, so a
//! change on one side that the other does not see fails the build instead of
//! corrupting data at run time.
#![no_std]

pub mod counters;
pub mod cpu;
pub mod discovery;
pub mod hist;
pub mod memory;
pub mod offcpu;
pub mod queries;
pub mod query_pq;
pub mod query_sqlite;
pub mod query_tls;
pub mod syscalls;
pub mod tcp;
