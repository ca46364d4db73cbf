//! TCP: connection lifecycle (`sock:inet_sock_set_state`), smoothed RTT
//! (`tcp_probe`, as a BTF tracepoint), retransmits and resets, aggregated in the kernel per
//! endpoint row (see `qprof_common::tcp`). Userspace reads summaries at the
//! end; no event per packet or per connection crosses to it.
//!
//! Sockets are tracked by their kernel address in `TCP_SOCKS` from connect
//! (in the connecting process's context, which is how the owner is known)
//! or accept (owner: whoever listens on the port) to `TCP_CLOSE`, which
//! every full TCP socket reaches (`tcp_done`, also on the way to `TIME_WAIT`).
//! Connections already open when the capture starts are adopted on their
//! first packet, with the owner the agent found for them in `/proc`.

mod lifecycle;
mod record;
mod rows;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, LruHashMap},
    programs::{BtfTracePointContext, TracePointContext},
};
use qprof_common::{
    counters::Counter,
    hist::bucket_of,
    tcp::{
        AddrLayout, DIR_UNKNOWN, Endpoint, FourTuple, HIST_RTT_US, IGNORED_CAPACITY,
        LISTENERS_CAPACITY, NO_FIELD, Owner, RTT_SLOTS, SEED_CAPACITY, SOCK_ADOPTED, SOCK_BASES,
        SOCK_ESTABLISHED, SOCK_PROBED, SOCK_RECEIVED, SOCKS_CAPACITY, SockInfo, SockLayout,
        TARGET_PIDS_CAPACITY, TcpConfig,
    },
};
use record::{read, skaddr, sock_tuple, tuple};
use rows::{endpoint, hist_add, with_stats};

use crate::counters::bump;

#[map(name = "TCP_CONFIG")]
static TCP_CONFIG: Array<TcpConfig> = Array::with_max_entries(1, 0);

#[map(name = "TCP_TARGET_PIDS")]
static TCP_TARGET_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(TARGET_PIDS_CAPACITY, 0);

/// Preallocated: the per-packet lookup must not allocate, and inserts
/// (one per connection) must not fail for want of memory.
#[map(name = "TCP_SOCKS")]
static TCP_SOCKS: HashMap<u64, SockInfo> = HashMap::with_max_entries(SOCKS_CAPACITY, 0);

#[map(name = "TCP_IGNORED")]
static TCP_IGNORED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(IGNORED_CAPACITY, 0);

#[map(name = "TCP_SEED")]
static TCP_SEED: HashMap<FourTuple, Owner> = HashMap::with_max_entries(SEED_CAPACITY, 0);

#[map(name = "TCP_LISTENERS")]
static TCP_LISTENERS: LruHashMap<u32, Owner> = LruHashMap::with_max_entries(LISTENERS_CAPACITY, 0);

/// Nanoseconds since boot (`CLOCK_MONOTONIC`).
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns takes no arguments and cannot fail.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn config() -> Option<&'static TcpConfig> {
    TCP_CONFIG.get(0)
}

#[inline(always)]
fn filtering(cfg: &TcpConfig) -> bool {
    cfg.filter_by_pid != 0
}

/// Pid filtering happens before any other work on the process-context
/// events (connect, listen).
#[inline(always)]
fn filtered_out(cfg: &TcpConfig, pid: u32) -> bool {
    // SAFETY: presence check only; the value is not read.
    filtering(cfg) && unsafe { TCP_TARGET_PIDS.get(pid) }.is_none()
}

/// A fresh tracking entry. The kernel's byte counters start at zero for
/// a connection opened during the capture, so their bases are 0.
#[inline(always)]
fn new_info(cfg: &TcpConfig, endpoint: Endpoint, start_ns: u64, flags: u16) -> SockInfo {
    let bases = if cfg.sock_bytes_acked != NO_FIELD && cfg.sock_bytes_received != NO_FIELD {
        SOCK_BASES
    } else {
        0
    };
    SockInfo {
        endpoint,
        start_ns,
        established_ns: if flags & SOCK_ESTABLISHED != 0 {
            start_ns
        } else {
            0
        },
        bytes_sent: 0,
        acked_base: 0,
        received_base: 0,
        received_last: 0,
        last_snd_nxt: 0,
        flags: flags | bases,
        rtt_buckets: [0; RTT_SLOTS],
        rtt_counts: [0; RTT_SLOTS],
        generation: rows::generation(),
    }
}

#[inline(always)]
fn sock_ptr(sk: u64) -> Option<*mut SockInfo> {
    TCP_SOCKS.get_ptr_mut(sk)
}

/// `sock:inet_sock_set_state`.
#[inline(always)]
pub fn on_set_state(ctx: &TracePointContext) {
    let Some(cfg) = config() else { return };
    if lifecycle::try_set_state(ctx, cfg).is_err() {
        bump(Counter::TcpReadError);
    }
}

/// With `--pid`, sockets of other processes are remembered in
/// `TCP_IGNORED` so that their next packets cost one lookup.
#[inline(always)]
fn ignored(cfg: &TcpConfig, sk: u64) -> bool {
    // SAFETY: presence check only.
    filtering(cfg) && unsafe { TCP_IGNORED.get(sk) }.is_some()
}

/// The row of a socket we do not track: with the owner the agent found for
/// its 4-tuple, else (host-wide only) owner 0. With `--pid`, a socket of
/// another process is added to `TCP_IGNORED` and has no row.
#[inline(always)]
fn untracked_row(cfg: &TcpConfig, t: &FourTuple, sk: u64) -> Option<Endpoint> {
    // SAFETY: the seed is written by the agent before the programs attach
    // and never changes afterwards; copied out at once.
    let (pid, direction, comm) = match unsafe { TCP_SEED.get(t) } {
        Some(owner) => (owner.pid, owner.direction, owner.comm),
        None if filtering(cfg) => {
            if sk != 0 {
                let _ = TCP_IGNORED.insert(sk, 1, 0);
            }
            return None;
        }
        None => (0, DIR_UNKNOWN, [0; 16]),
    };
    Some(endpoint(cfg, t, pid, direction, comm))
}

/// The row to count a socket's event against, tracked or not.
#[inline(always)]
fn row_of(
    ctx: &TracePointContext,
    cfg: &TcpConfig,
    layout: &AddrLayout,
    sk: u64,
) -> Result<Option<Endpoint>, i32> {
    if sk != 0
        && let Some(ptr) = sock_ptr(sk)
    {
        // SAFETY: read-only copy of a live entry (see `connected`).
        return Ok(Some(unsafe { (*ptr).endpoint }));
    }
    if ignored(cfg, sk) {
        return Ok(None);
    }
    let t = tuple(ctx, layout)?;
    Ok(untracked_row(cfg, &t, sk))
}

/// `tcp_probe(struct sock *sk, const struct sk_buff *skb)` (BTF
/// tracepoint): runs for every segment received in ESTABLISHED, so it is
/// the hot path: one hash lookup, a few field reads, and a histogram update
/// only when the socket's RTT bucket changes.
#[inline(always)]
pub fn on_probe(ctx: &BtfTracePointContext) {
    let Some(cfg) = config() else { return };
    let sk: u64 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    if try_probe(cfg, sk, skb).is_err() {
        bump(Counter::TcpReadError);
    }
}

fn try_probe(cfg: &TcpConfig, sk: u64, skb: u64) -> Result<(), i32> {
    let layout = &cfg.sock;
    let ptr = match sock_ptr(sk) {
        Some(ptr) => ptr,
        None => match adopt(cfg, sk)? {
            Some(ptr) => ptr,
            None => return Ok(()),
        },
    };
    // SAFETY: as in `connected` (tcp_rcv_established runs under the socket
    // lock, in softirq or from the owner's backlog).
    let info = unsafe { &mut *ptr };
    move_window(info, rows::generation());
    // As the classic tracepoint's `srtt` field: microseconds.
    let srtt: u32 = record::kernel_field::<u32>(sk, layout.srtt_us)? >> 3;
    let snd_nxt: u32 = record::kernel_field(sk, layout.snd_nxt)?;
    if info.flags & SOCK_PROBED == 0 {
        // Everything up to snd_una was acknowledged before this first look.
        let snd_una: u32 = record::kernel_field(sk, layout.snd_una)?;
        info.bytes_sent += u64::from(snd_nxt.wrapping_sub(snd_una));
        info.flags |= SOCK_PROBED;
    } else {
        info.bytes_sent += u64::from(snd_nxt.wrapping_sub(info.last_snd_nxt));
    }
    info.last_snd_nxt = snd_nxt;
    // The kernel's counter only moves with payload: a pure ACK (the bulk of
    // what a sender receives) leaves the last reading valid, so skip it.
    if info.flags & SOCK_BASES != 0 {
        let segment = payload(skb, layout);
        if (segment > 0 || info.flags & SOCK_RECEIVED == 0)
            && let Ok(received) = record::kernel_field::<u64>(sk, cfg.sock_bytes_received)
        {
            info.received_last = received + u64::from(segment);
            info.flags |= SOCK_RECEIVED;
        }
    }
    if srtt == 0 {
        return Ok(()); // no RTT sample yet
    }
    add_rtt(info, bucket_of(u64::from(srtt)) as u16);
    Ok(())
}

/// Counts one smoothed-RTT sample in the socket's batching slots; when a
/// new bucket finds them all taken, they are flushed to the histogram map.
#[inline(always)]
fn add_rtt(info: &mut SockInfo, bucket: u16) {
    for (b, c) in info.rtt_buckets.iter().zip(info.rtt_counts.iter_mut()) {
        if *c > 0 && *b == bucket {
            *c += 1;
            return;
        }
    }
    for (b, c) in info.rtt_buckets.iter_mut().zip(info.rtt_counts.iter_mut()) {
        if *c == 0 {
            *b = bucket;
            *c = 1;
            return;
        }
    }
    flush_rtt(info);
    info.rtt_buckets[0] = bucket;
    info.rtt_counts[0] = 1;
}

/// At a socket's first segment after a window change, moves what it
/// accumulated (batched RTT samples, bytes since the last move) to its row
/// in the current generation, so a long-lived connection shows up in every
/// window it is active in (one window late), not only when it closes. The
/// cost is one comparison per segment, and one row update per socket and
/// window.
#[inline(always)]
fn move_window(info: &mut SockInfo, generation: u16) {
    if info.generation == generation {
        return;
    }
    info.generation = generation;
    flush_rtt(info);
    let sent = (info.flags & SOCK_PROBED != 0).then_some(info.bytes_sent);
    let received = (info.flags & SOCK_BASES != 0 && info.flags & SOCK_RECEIVED != 0)
        .then(|| info.received_last.wrapping_sub(info.received_base));
    if sent.is_none() && received.is_none() {
        return;
    }
    // From now on the socket's counts start here.
    if let Some(sent) = sent {
        info.bytes_sent = 0;
        info.acked_base = info.acked_base.wrapping_add(sent);
    }
    if let Some(received) = received {
        info.received_base = info.received_base.wrapping_add(received);
    }
    with_stats(&info.endpoint, |s| {
        if let Some(sent) = sent {
            s.bytes_sent += sent;
            s.sent_measured += 1;
        }
        if let Some(received) = received {
            s.bytes_received += received;
            s.received_measured += 1;
        }
    });
}

/// Moves a socket's batched RTT samples into its row's histogram.
#[inline(always)]
fn flush_rtt(info: &mut SockInfo) {
    for (b, c) in info.rtt_buckets.iter().zip(info.rtt_counts.iter_mut()) {
        if *c > 0 {
            hist_add(&info.endpoint, HIST_RTT_US, u32::from(*b), u64::from(*c));
            *c = 0;
        }
    }
}

/// Payload bytes of the segment being received (the probe fires before it
/// is processed, so the socket's counter does not include them yet):
/// `end_seq - seq` of its control block, less the FIN and SYN that each
/// take one sequence number. 0 when unreadable.
#[inline(always)]
fn payload(skb: u64, layout: &SockLayout) -> u32 {
    const FIN_SYN: u8 = 0x03;
    let seq: u32 = record::kernel_field(skb, layout.cb_seq).unwrap_or(0);
    let end_seq: u32 = record::kernel_field(skb, layout.cb_end_seq).unwrap_or(0);
    let flags: u8 = record::kernel_field(skb, layout.cb_flags).unwrap_or(0);
    // Spelled out: BPF has no popcount instruction.
    let control = u32::from(flags & FIN_SYN & 1) + u32::from((flags & FIN_SYN) >> 1);
    end_seq.wrapping_sub(seq).saturating_sub(control)
}

/// Starts tracking an established socket seen for the first time.
#[inline(always)]
fn adopt(cfg: &TcpConfig, sk: u64) -> Result<Option<*mut SockInfo>, i32> {
    if ignored(cfg, sk) {
        return Ok(None);
    }
    let t = sock_tuple(sk, &cfg.sock)?;
    let Some(row) = untracked_row(cfg, &t, sk) else {
        return Ok(None);
    };
    let mut info = new_info(cfg, row, 0, SOCK_ADOPTED);
    // Already open: its counters so far belong before the capture.
    match (
        record::kernel_field::<u64>(sk, cfg.sock_bytes_acked),
        record::kernel_field::<u64>(sk, cfg.sock_bytes_received),
    ) {
        (Ok(acked), Ok(received)) => {
            info.acked_base = acked;
            info.received_base = received;
        }
        _ => info.flags &= !SOCK_BASES,
    }
    if TCP_SOCKS.insert(sk, info, u64::from(BPF_NOEXIST)).is_err() {
        bump(Counter::TcpSockMapFull);
        return Ok(None);
    }
    Ok(sock_ptr(sk))
}

/// `tcp:tcp_retransmit_skb`: counted only when the retransmit went out
/// (`err == 0`), as the kernel's `RetransSegs` does.
#[inline(always)]
pub fn on_retransmit(ctx: &TracePointContext) {
    let Some(cfg) = config() else { return };
    if try_retransmit(ctx, cfg).is_err() {
        bump(Counter::TcpReadError);
    }
}

fn try_retransmit(ctx: &TracePointContext, cfg: &TcpConfig) -> Result<(), i32> {
    if cfg.retransmit_err != qprof_common::tcp::NO_FIELD
        && read::<i32>(ctx, cfg.retransmit_err)? != 0
    {
        return Ok(());
    }
    let sk = skaddr(ctx, &cfg.retransmit)?;
    let Some(row) = row_of(ctx, cfg, &cfg.retransmit, sk)? else {
        return Ok(());
    };
    // A GSO packet of several segments is retransmitted (and traced) once
    // but counted per segment by the kernel's RetransSegs.
    let skb: u64 = read(ctx, cfg.retransmit_skbaddr).unwrap_or(0);
    let segs = match record::kernel_field::<u16>(skb, cfg.skb_gso_segs) {
        Ok(n) if n > 0 => u64::from(n),
        _ => 1,
    };
    with_stats(&row, |s| s.retransmits += segs);
    Ok(())
}

/// `tcp:tcp_send_reset`; its socket is NULL for a reset answering a
/// packet that matched no socket (a connect to a closed port).
#[inline(always)]
pub fn on_send_reset(ctx: &TracePointContext) {
    let Some(cfg) = config() else { return };
    let counted = skaddr(ctx, &cfg.send_reset)
        .and_then(|sk| row_of(ctx, cfg, &cfg.send_reset, sk))
        .map(|row| {
            if let Some(row) = row {
                with_stats(&row, |s| s.resets_sent += 1);
            }
        });
    if counted.is_err() {
        bump(Counter::TcpReadError);
    }
}

/// `tcp:tcp_receive_reset`.
#[inline(always)]
pub fn on_receive_reset(ctx: &TracePointContext) {
    let Some(cfg) = config() else { return };
    let counted = skaddr(ctx, &cfg.receive_reset)
        .and_then(|sk| row_of(ctx, cfg, &cfg.receive_reset, sk))
        .map(|row| {
            if let Some(row) = row {
                with_stats(&row, |s| s.resets_received += 1);
            }
        });
    if counted.is_err() {
        bump(Counter::TcpReadError);
    }
}
