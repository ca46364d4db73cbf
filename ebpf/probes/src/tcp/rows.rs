//! Endpoint rows: building them from a connection, and adding to their
//! per-CPU counters and histogram cells.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::PerCpuHashMap,
};
use qprof_common::{
    counters::Counter,
    tcp::{
        DIR_INBOUND, DIR_OUTBOUND, Endpoint, EndpointStats, FourTuple, HIST_CAPACITY, HistKey,
        STATS_CAPACITY, TcpConfig,
    },
};

use crate::counters::bump;

/// Per-CPU, so each CPU adds to its own copy without atomics; allocated on
/// use because most of the capacity is never needed. Two generations (see
/// `qprof_common::tcp`): the agent reads and empties the one not written.
#[map(name = "TCP_STATS")]
static TCP_STATS: PerCpuHashMap<Endpoint, EndpointStats> =
    PerCpuHashMap::with_max_entries(STATS_CAPACITY, BPF_F_NO_PREALLOC);

#[map(name = "TCP_STATS_1")]
static TCP_STATS_1: PerCpuHashMap<Endpoint, EndpointStats> =
    PerCpuHashMap::with_max_entries(STATS_CAPACITY, BPF_F_NO_PREALLOC);

#[map(name = "TCP_HIST")]
static TCP_HIST: PerCpuHashMap<HistKey, u64> =
    PerCpuHashMap::with_max_entries(HIST_CAPACITY, BPF_F_NO_PREALLOC);

#[map(name = "TCP_HIST_1")]
static TCP_HIST_1: PerCpuHashMap<HistKey, u64> =
    PerCpuHashMap::with_max_entries(HIST_CAPACITY, BPF_F_NO_PREALLOC);

/// The generation the agent wants written now.
#[inline(always)]
pub fn generation() -> u16 {
    super::config().map_or(0, |c| c.generation)
}

#[inline(always)]
fn stats_map() -> &'static PerCpuHashMap<Endpoint, EndpointStats> {
    if generation() == 0 {
        &TCP_STATS
    } else {
        &TCP_STATS_1
    }
}

#[inline(always)]
fn hist_map() -> &'static PerCpuHashMap<HistKey, u64> {
    if generation() == 0 {
        &TCP_HIST
    } else {
        &TCP_HIST_1
    }
}

/// The row of a connection. The ephemeral side's port is folded to 0 so
/// that every connection between the same two services shares one row:
/// the local port of a connection we opened, the remote port of one we
/// accepted, and, when we do not know who opened it, any port in the
/// ephemeral range (the local one first).
#[inline(always)]
pub fn endpoint(
    cfg: &TcpConfig,
    t: &FourTuple,
    pid: u32,
    direction: u8,
    comm: [u8; 16],
) -> Endpoint {
    let ephemeral = |p: u16| p >= cfg.ephemeral_low && p <= cfg.ephemeral_high;
    let (mut local_port, mut remote_port) = (t.local_port, t.remote_port);
    if direction == DIR_OUTBOUND {
        local_port = 0;
    } else if direction == DIR_INBOUND {
        remote_port = 0;
    } else if ephemeral(local_port) {
        local_port = 0;
    } else if ephemeral(remote_port) {
        remote_port = 0;
    }
    Endpoint {
        pid,
        family: t.family,
        direction,
        pad0: 0,
        local_port,
        remote_port,
        pad1: 0,
        local_addr: t.local_addr,
        remote_addr: t.remote_addr,
        comm,
    }
}

/// Runs `update` on this CPU's counters of `row`, creating them if needed.
#[inline(always)]
pub fn with_stats(row: &Endpoint, update: impl FnOnce(&mut EndpointStats)) {
    let stats = stats_map();
    let slot = stats.get_ptr_mut(row).or_else(|| {
        // EEXIST means another CPU created the row after our lookup: the
        // entry then exists for every CPU and the lookup below finds ours.
        let _ = stats.insert(row, EndpointStats::default(), u64::from(BPF_NOEXIST));
        stats.get_ptr_mut(row)
    });
    let Some(slot) = slot else {
        bump(Counter::TcpStatsMapFull);
        return;
    };
    // SAFETY: this CPU's slot of a live per-CPU entry; BPF programs do not
    // preempt each other on one CPU, and rows are deleted only from the
    // generation no program writes (after an RCU grace period).
    update(unsafe { &mut *slot });
}

/// Adds `count` samples to histogram cell (`row`, `kind`, `bucket`).
#[inline(always)]
pub fn hist_add(row: &Endpoint, kind: u32, bucket: u32, count: u64) {
    let key = HistKey {
        endpoint: *row,
        kind,
        bucket,
    };
    let hist = hist_map();
    if let Some(cell) = hist.get_ptr_mut(key) {
        // SAFETY: as in `with_stats`.
        unsafe { *cell += count };
        return;
    }
    if hist.insert(key, count, u64::from(BPF_NOEXIST)).is_ok() {
        return;
    }
    match hist.get_ptr_mut(key) {
        // SAFETY: as in `with_stats`.
        Some(cell) => unsafe { *cell += count },
        None => bump(Counter::TcpHistMapFull),
    }
}
