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
mod memory;
mod offcpu;
mod query_events;
mod query_pq;
mod query_pq_wire;
mod query_sqlite;
mod query_tls;
mod syscalls;
mod tcp;

use aya_ebpf::{
    macros::{btf_tracepoint, perf_event, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, PerfEventContext, RawTracePointContext, TracePointContext},
};
// Memory profiling's uprobes (kept apart from the line above).
use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
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

/// `tcp_probe` (BTF tracepoint): smoothed RTT and bytes on every segment
/// received on an established socket.
#[btf_tracepoint(function = "tcp_probe")]
pub fn tcp_probe(ctx: BtfTracePointContext) -> i32 {
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

/// `sched_switch` (BTF tracepoint): an off-CPU block starts.
#[btf_tracepoint(function = "sched_switch")]
pub fn offcpu_switch(ctx: BtfTracePointContext) -> i32 {
    offcpu::on_switch(&ctx);
    0
}

/// `sched_exit_tp` (BTF tracepoint, end of `__schedule`): a block ends.
#[btf_tracepoint(function = "sched_exit_tp")]
pub fn offcpu_back(ctx: BtfTracePointContext) -> i32 {
    offcpu::on_sched_exit(&ctx);
    0
}

/// `malloc(size)`.
#[uprobe]
pub fn mem_malloc(ctx: ProbeContext) -> u32 {
    let size: u64 = ctx.arg(0).unwrap_or(0);
    memory::on_alloc_entry(&ctx, size, 0, 0);
    0
}

/// `calloc(n, size)`; an overflowing product fails in libc, so it counts 0.
#[uprobe]
pub fn mem_calloc(ctx: ProbeContext) -> u32 {
    let n: u64 = ctx.arg(0).unwrap_or(0);
    let size: u64 = ctx.arg(1).unwrap_or(0);
    // Not checked_mul: its 128-bit multiply has no BPF instruction (and
    // black_box stops LLVM from turning the division back into one).
    let limit = core::hint::black_box(u64::MAX.checked_div(n).unwrap_or(u64::MAX));
    let total = if size > limit {
        0
    } else {
        n.wrapping_mul(size)
    };
    memory::on_alloc_entry(&ctx, total, 0, 0);
    0
}

/// `realloc(ptr, size)`.
#[uprobe]
pub fn mem_realloc(ctx: ProbeContext) -> u32 {
    let ptr: u64 = ctx.arg(0).unwrap_or(0);
    let size: u64 = ctx.arg(1).unwrap_or(0);
    memory::on_alloc_entry(&ctx, size, ptr, 0);
    0
}

/// `aligned_alloc(alignment, size)` and `memalign(alignment, size)`.
#[uprobe]
pub fn mem_memalign(ctx: ProbeContext) -> u32 {
    let size: u64 = ctx.arg(1).unwrap_or(0);
    memory::on_alloc_entry(&ctx, size, 0, 0);
    0
}

/// `posix_memalign(memptr, alignment, size)`: the block comes back in *memptr.
#[uprobe]
pub fn mem_posix_memalign(ctx: ProbeContext) -> u32 {
    let out: u64 = ctx.arg(0).unwrap_or(0);
    let size: u64 = ctx.arg(2).unwrap_or(0);
    memory::on_alloc_entry(&ctx, size, 0, out);
    0
}

/// Return of every allocating function above.
#[uretprobe]
pub fn mem_alloc_ret(ctx: RetProbeContext) -> u32 {
    memory::on_alloc_return(&ctx);
    0
}

/// `free(ptr)`.
#[uprobe]
pub fn mem_free(ctx: ProbeContext) -> u32 {
    let ptr: u64 = ctx.arg(0).unwrap_or(0);
    memory::on_free(&ctx, ptr);
    0
}

/// libpq `PQsendQuery` (also reached from `PQexec`).
#[uprobe]
pub fn pq_send_query(ctx: ProbeContext) -> u32 {
    query_pq::on_send_query(&ctx);
    0
}

/// libpq `PQsendQueryParams` (also reached from `PQexecParams`).
#[uprobe]
pub fn pq_send_query_params(ctx: ProbeContext) -> u32 {
    query_pq::on_send_query_params(&ctx);
    0
}

/// libpq `PQsendPrepare` (also reached from `PQprepare`).
#[uprobe]
pub fn pq_send_prepare(ctx: ProbeContext) -> u32 {
    query_pq::on_send_prepare(&ctx);
    0
}

/// libpq `PQsendQueryPrepared` (also reached from `PQexecPrepared`).
#[uprobe]
pub fn pq_send_query_prepared(ctx: ProbeContext) -> u32 {
    query_pq::on_send_query_prepared(&ctx);
    0
}

/// `syscalls:sys_enter_sendto`: libpq flushing queries to a connection.
#[tracepoint]
pub fn pq_sendto(ctx: TracePointContext) -> u32 {
    query_pq::on_sendto(&ctx);
    0
}

/// `syscalls:sys_enter_recvfrom`: a receive on a followed connection.
#[tracepoint]
pub fn pq_recvfrom_enter(ctx: TracePointContext) -> u32 {
    query_pq::on_recvfrom_enter(&ctx);
    0
}

/// `syscalls:sys_exit_recvfrom`: the server's messages arrived.
#[tracepoint]
pub fn pq_recvfrom_exit(ctx: TracePointContext) -> u32 {
    query_pq::on_recvfrom_exit(&ctx);
    0
}

/// OpenSSL's internal read (behind `SSL_read` and `SSL_read_ex`) or
/// `SSL_read_ex` itself: `(ssl, buf, num, size_t *readbytes)`.
#[uprobe]
pub fn tls_read_ex(ctx: ProbeContext) -> u32 {
    query_tls::on_read(&ctx, true);
    0
}

/// `SSL_read(ssl, buf, num)`, when the internal read cannot be found.
#[uprobe]
pub fn tls_read(ctx: ProbeContext) -> u32 {
    query_tls::on_read(&ctx, false);
    0
}

/// Return of every read above.
#[uretprobe]
pub fn tls_read_ret(ctx: RetProbeContext) -> u32 {
    query_tls::on_read_return(&ctx);
    0
}

/// SQLite `sqlite3_prepare(db, zSql, nByte, ppStmt, pzTail)` and
/// `sqlite3_prepare_v2` (same arguments).
#[uprobe]
pub fn sqlite_prepare(ctx: ProbeContext) -> u32 {
    let sql: u64 = ctx.arg(1).unwrap_or(0);
    let n_byte = ctx.arg::<u64>(2).unwrap_or(0) as u32 as i32;
    let pp_stmt: u64 = ctx.arg(3).unwrap_or(0);
    let pz_tail: u64 = ctx.arg(4).unwrap_or(0);
    query_sqlite::on_prepare(&ctx, sql, i64::from(n_byte), pp_stmt, pz_tail);
    0
}

/// `sqlite3_prepare_v3(db, zSql, nByte, prepFlags, ppStmt, pzTail)`.
#[uprobe]
pub fn sqlite_prep_v3(ctx: ProbeContext) -> u32 {
    let sql: u64 = ctx.arg(1).unwrap_or(0);
    let n_byte = ctx.arg::<u64>(2).unwrap_or(0) as u32 as i32;
    let pp_stmt: u64 = ctx.arg(4).unwrap_or(0);
    let pz_tail: u64 = ctx.arg(5).unwrap_or(0);
    query_sqlite::on_prepare(&ctx, sql, i64::from(n_byte), pp_stmt, pz_tail);
    0
}

/// Return of every `sqlite3_prepare*` above.
#[uretprobe]
pub fn sqlite_prep_ret(ctx: RetProbeContext) -> u32 {
    query_sqlite::on_prepare_return(&ctx);
    0
}

/// `sqlite3_step(stmt)`; the attach cookie locates the statement's text.
#[uprobe]
pub fn sqlite_step(ctx: ProbeContext) -> u32 {
    let stmt: u64 = ctx.arg(0).unwrap_or(0);
    query_sqlite::on_step(&ctx, stmt);
    0
}

#[uretprobe]
pub fn sqlite_step_ret(ctx: RetProbeContext) -> u32 {
    query_sqlite::on_step_return(&ctx);
    0
}

/// `sqlite3_reset(stmt)`.
#[uprobe]
pub fn sqlite_reset(ctx: ProbeContext) -> u32 {
    query_sqlite::on_reset(ctx.arg(0).unwrap_or(0), false);
    0
}

/// `sqlite3_finalize(stmt)`.
#[uprobe]
pub fn sqlite_finalize(ctx: ProbeContext) -> u32 {
    query_sqlite::on_reset(ctx.arg(0).unwrap_or(0), true);
    0
}

/// `sqlite3_exec(db, sql, callback, arg, errmsg)`.
#[uprobe]
pub fn sqlite_exec(ctx: ProbeContext) -> u32 {
    query_sqlite::on_exec(&ctx, ctx.arg(1).unwrap_or(0));
    0
}

#[uretprobe]
pub fn sqlite_exec_ret(ctx: RetProbeContext) -> u32 {
    query_sqlite::on_exec_return(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic, so this is never entered.
    loop {}
}
