//! qprof's BPF programs. Entry points only: each one forwards to the module of
//! its capability, so that the logic stays in plain functions
//! (aya-template's pattern).
#![no_std]
#![no_main]
#![expect(
    clippy::inline_always,
    reason = "BPF helpers are inlined into their program: fewer bpf-to-bpf calls, simpler verification"
)]

mod counters;
mod cpu;
mod discovery;
mod offcpu;
mod syscalls;
mod tcp;

use aya_ebpf::{
    macros::{perf_event, raw_tracepoint, tracepoint},
    programs::{PerfEventContext, RawTracePointContext, TracePointContext},
};

/// One CPU sample: runs on the cpu-clock software event of every online CPU.
#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    cpu::on_sample(&ctx);
    0
}

/// Raw tracepoint `sys_enter`: (regs, syscall id).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    syscalls::on_enter(&ctx);
    0
}

/// Raw tracepoint `sys_exit`: (regs, return value).
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    syscalls::on_exit(&ctx);
    0
}

/// `sock:inet_sock_set_state`: connects, accepts, failures, closes.
#[tracepoint]
pub fn tcp_set_state(ctx: TracePointContext) -> u32 {
    tcp::on_set_state(&ctx);
    0
}

/// `tcp:tcp_probe`: smoothed RTT on every ACK processed.
#[tracepoint]
pub fn tcp_probe(ctx: TracePointContext) -> u32 {
    tcp::on_probe(&ctx);
    0
}

/// `tcp:tcp_retransmit_skb`.
#[tracepoint]
pub fn tcp_retransmit(ctx: TracePointContext) -> u32 {
    tcp::on_retransmit(&ctx);
    0
}

/// `tcp:tcp_send_reset`.
#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    tcp::on_send_reset(&ctx);
    0
}

/// `tcp:tcp_receive_reset`.
#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    tcp::on_receive_reset(&ctx);
    0
}

/// `sched:sched_switch`: off-CPU time (switch-out starts, switch-in ends).
#[tracepoint]
pub fn offcpu_switch(ctx: TracePointContext) -> u32 {
    offcpu::on_switch(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic, so this is never entered.
    loop {}
}
