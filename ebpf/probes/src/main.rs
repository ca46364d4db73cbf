//! qprof's BPF programs. Entry points only: each one forwards to the module of
//! its capability and maps `Result` to the program's return value, so that the
//! logic stays in plain functions (aya-template's pattern).
#![no_std]
#![no_main]
#![expect(
    clippy::inline_always,
    reason = "BPF helpers are inlined into their program: fewer bpf-to-bpf calls, simpler verification"
)]

mod counters;
mod cpu;

use aya_ebpf::{macros::perf_event, programs::PerfEventContext};

/// One CPU sample: runs on the cpu-clock software event of every online CPU.
#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    cpu::on_sample(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic, so this is never entered.
    loop {}
}
