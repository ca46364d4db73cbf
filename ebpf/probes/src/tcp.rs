//! TCP: connection lifecycle (`sock:inet_sock_set_state`), smoothed RTT
//! (`tcp:tcp_probe`), retransmits and resets, aggregated in the kernel per
//! endpoint row (see `qprof_common::tcp`). Userspace reads summaries at the
//! end; no event per packet or per connection crosses to it.
//!
//! Sockets are tracked by their kernel address in `TCP_SOCKS` from connect
//! (in the connecting process's context, which is how the owner is known)
//! or accept (owner: whoever listens on the port) to `TCP_CLOSE`, which
//! every full TCP socket reaches (`tcp_done`, also on the way to TIME_WAIT).
//! Connections already open when the capture starts are adopted on their
//! first packet, with the owner the agent found for them in `/proc`.

mod record;
mod rows;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, LruHashMap},
    programs::TracePointContext,
};
use qprof_common::{
    counters::Counter,
    hist::bucket_of,
    tcp::{
        AddrLayout, DIR_INBOUND, DIR_OUTBOUND, DIR_UNKNOWN, Endpoint, FourTuple, HIST_CONNECT_NS,
        HIST_LIFETIME_NS, HIST_RTT_US, IGNORED_CAPACITY, IPPROTO_TCP, LISTENERS_CAPACITY, Owner,
        SEED_CAPACITY, SOCK_ADOPTED, SOCK_ESTABLISHED, SOCK_PROBED, SOCKS_CAPACITY, SockInfo,
        TARGET_PIDS_CAPACITY, TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN, TCP_SYN_RECV, TCP_SYN_SENT,
        TcpConfig,
    },
};
use record::{read, skaddr, tuple};
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

#[inline(always)]
fn sock_ptr(sk: u64) -> Option<*mut SockInfo> {
    TCP_SOCKS.get_ptr_mut(sk)
}

/// `sock:inet_sock_set_state`.
#[inline(always)]
pub fn on_set_state(ctx: &TracePointContext) {
    let Some(cfg) = config() else { return };
    if try_set_state(ctx, cfg).is_err() {
        bump(Counter::TcpReadError);
    }
}

fn try_set_state(ctx: &TracePointContext, cfg: &TcpConfig) -> Result<(), i32> {
    if read::<u16>(ctx, cfg.protocol)? != IPPROTO_TCP {
        return Ok(());
    }
    let old: i32 = read(ctx, cfg.oldstate)?;
    let new: i32 = read(ctx, cfg.newstate)?;
    let layout = &cfg.set_state;
    match (old, new) {
        (_, TCP_SYN_SENT) => connect_started(ctx, cfg),
        (_, TCP_LISTEN) => listening(ctx, cfg),
        (TCP_SYN_SENT, TCP_ESTABLISHED) => connected(ctx, layout),
        (TCP_SYN_RECV, TCP_ESTABLISHED) => accepted(ctx, cfg),
        (TCP_CLOSE, TCP_CLOSE) => Ok(()),
        (_, TCP_CLOSE) => closed(ctx, cfg, old),
        _ => Ok(()),
    }
}

/// CLOSE -> SYN_SENT runs in `connect()`, in the owner's context.
fn connect_started(ctx: &TracePointContext, cfg: &TcpConfig) -> Result<(), i32> {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if filtered_out(cfg, pid) {
        return Ok(());
    }
    let sk = skaddr(ctx, &cfg.set_state)?;
    // The source port is not chosen yet (and is folded anyway); the
    // addresses are refreshed when the connection is established.
    let t = tuple(ctx, &cfg.set_state)?;
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let info = SockInfo {
        endpoint: endpoint(cfg, &t, pid, DIR_OUTBOUND, comm),
        start_ns: now_ns(),
        established_ns: 0,
        bytes_sent: 0,
        last_snd_nxt: 0,
        flags: 0,
        rtt_bucket: 0,
        rtt_pending: 0,
    };
    // Overwrites a stale entry left by a socket whose address was reused.
    if TCP_SOCKS.insert(sk, info, 0).is_err() {
        bump(Counter::TcpSockMapFull);
    }
    Ok(())
}

/// -> LISTEN runs in `listen()`: remember who owns the port, to attribute
/// the connections it accepts.
fn listening(ctx: &TracePointContext, cfg: &TcpConfig) -> Result<(), i32> {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if filtered_out(cfg, pid) {
        return Ok(());
    }
    let t = tuple(ctx, &cfg.set_state)?;
    let owner = Owner {
        pid,
        direction: DIR_INBOUND,
        pad: [0; 3],
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    // LRU: never refuses, evicts the least recently used port instead.
    let _ = TCP_LISTENERS.insert(u32::from(t.local_port), owner, 0);
    Ok(())
}

/// SYN_SENT -> ESTABLISHED: an active connect completed.
fn connected(ctx: &TracePointContext, layout: &AddrLayout) -> Result<(), i32> {
    let sk = skaddr(ctx, layout)?;
    // Not tracked: the connect began before the capture, or belongs to an
    // untraced process. Its packets will adopt it.
    let Some(ptr) = sock_ptr(sk) else {
        return Ok(());
    };
    // SAFETY: the entry of this socket, which is only removed at TCP_CLOSE;
    // its events run under the socket lock, so nothing else writes it now.
    let info = unsafe { &mut *ptr };
    let t = tuple(ctx, layout)?;
    info.endpoint.local_addr = t.local_addr;
    info.endpoint.remote_addr = t.remote_addr;
    let now = now_ns();
    let latency = now.saturating_sub(info.start_ns);
    info.established_ns = now;
    info.flags |= SOCK_ESTABLISHED;
    with_stats(&info.endpoint, |s| {
        s.connects += 1;
        s.connect_max_ns = s.connect_max_ns.max(latency);
    });
    hist_add(
        &info.endpoint,
        HIST_CONNECT_NS,
        bucket_of(latency) as u32,
        1,
    );
    Ok(())
}

/// The owner of a local port we accept on, if known.
#[inline(always)]
fn listener(port: u16) -> Option<Owner> {
    // SAFETY: copied out at once; a concurrent update can only replace the
    // whole value of a preallocated LRU entry, which at worst mixes two
    // owners' fields for one attribution.
    unsafe { TCP_LISTENERS.get(u32::from(port)) }.copied()
}

/// SYN_RECV -> ESTABLISHED: a passive open completed (in softirq, where the
/// current task is arbitrary: the owner is the listener).
fn accepted(ctx: &TracePointContext, cfg: &TcpConfig) -> Result<(), i32> {
    let t = tuple(ctx, &cfg.set_state)?;
    let (pid, comm) = match listener(t.local_port) {
        Some(owner) => (owner.pid, owner.comm),
        None if filtering(cfg) => return Ok(()),
        None => (0, [0; 16]),
    };
    let sk = skaddr(ctx, &cfg.set_state)?;
    let info = SockInfo {
        endpoint: endpoint(cfg, &t, pid, DIR_INBOUND, comm),
        start_ns: 0,
        established_ns: now_ns(),
        bytes_sent: 0,
        last_snd_nxt: 0,
        flags: SOCK_ESTABLISHED,
        rtt_bucket: 0,
        rtt_pending: 0,
    };
    if TCP_SOCKS.insert(sk, info, 0).is_err() {
        bump(Counter::TcpSockMapFull);
    }
    with_stats(&info.endpoint, |s| s.connects += 1);
    Ok(())
}

/// -> CLOSE: a failed connect (died before ESTABLISHED) or the end of an
/// established connection. Either way the socket is forgotten.
fn closed(ctx: &TracePointContext, cfg: &TcpConfig, old: i32) -> Result<(), i32> {
    let sk = skaddr(ctx, &cfg.set_state)?;
    let Some(ptr) = sock_ptr(sk) else {
        // SYN_RECV sockets are not tracked (they are born and established
        // in one softirq); one that dies is a failed passive open.
        if old == TCP_SYN_RECV {
            let t = tuple(ctx, &cfg.set_state)?;
            let (pid, comm) = match listener(t.local_port) {
                Some(owner) => (owner.pid, owner.comm),
                None if filtering(cfg) => return Ok(()),
                None => (0, [0; 16]),
            };
            let row = endpoint(cfg, &t, pid, DIR_INBOUND, comm);
            with_stats(&row, |s| s.failed_syn_recv += 1);
        }
        return Ok(());
    };
    // SAFETY: as in `connected`.
    let info = unsafe { &mut *ptr };
    if info.flags & (SOCK_ESTABLISHED | SOCK_ADOPTED) == 0 {
        // The source address and port are known by now.
        if let Ok(t) = tuple(ctx, &cfg.set_state) {
            info.endpoint.local_addr = t.local_addr;
            info.endpoint.remote_addr = t.remote_addr;
        }
        with_stats(&info.endpoint, |s| {
            if old == TCP_SYN_SENT {
                s.failed_syn_sent += 1;
            } else {
                s.failed_syn_recv += 1;
            }
        });
    } else {
        flush_closed(info);
    }
    let _ = TCP_SOCKS.remove(sk);
    Ok(())
}

/// Moves a closing socket's lifetime, bytes and pending RTT samples into
/// its row.
#[inline(always)]
fn flush_closed(info: &SockInfo) {
    let lifetime = if info.flags & SOCK_ADOPTED == 0 {
        now_ns().saturating_sub(info.established_ns)
    } else {
        0
    };
    let probed = info.flags & SOCK_PROBED != 0;
    with_stats(&info.endpoint, |s| {
        s.closes += 1;
        s.lifetime_ns_total += lifetime;
        s.lifetime_max_ns = s.lifetime_max_ns.max(lifetime);
        if probed {
            s.probed_closes += 1;
            s.bytes_sent += info.bytes_sent;
        }
    });
    if info.flags & SOCK_ADOPTED == 0 {
        hist_add(
            &info.endpoint,
            HIST_LIFETIME_NS,
            bucket_of(lifetime) as u32,
            1,
        );
    }
    if info.rtt_pending > 0 {
        hist_add(
            &info.endpoint,
            HIST_RTT_US,
            info.rtt_bucket,
            u64::from(info.rtt_pending),
        );
    }
}

/// The row of a socket we do not track: with the owner the agent found for
/// its 4-tuple, else (host-wide only) owner 0. With `--pid`, sockets of
/// other processes are remembered in `TCP_IGNORED` so their next packets
/// cost one lookup.
#[inline(always)]
fn untracked_row(
    ctx: &TracePointContext,
    cfg: &TcpConfig,
    layout: &AddrLayout,
    sk: u64,
) -> Result<Option<Endpoint>, i32> {
    // SAFETY: presence check only.
    if filtering(cfg) && unsafe { TCP_IGNORED.get(sk) }.is_some() {
        return Ok(None);
    }
    let t = tuple(ctx, layout)?;
    // SAFETY: the seed is written by the agent before the programs attach
    // and never changes afterwards; copied out at once.
    let (pid, direction, comm) = match unsafe { TCP_SEED.get(&t) } {
        Some(owner) => (owner.pid, owner.direction, owner.comm),
        None if filtering(cfg) => {
            if sk != 0 {
                let _ = TCP_IGNORED.insert(sk, 1, 0);
            }
            return Ok(None);
        }
        None => (0, DIR_UNKNOWN, [0; 16]),
    };
    Ok(Some(endpoint(cfg, &t, pid, direction, comm)))
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
    untracked_row(ctx, cfg, layout, sk)
}

/// `tcp:tcp_probe`: runs for every segment received in ESTABLISHED, so it
/// is the hot path: one copy of the record, one hash lookup, and a
/// histogram update only when the socket's RTT bucket changes.
#[inline(always)]
pub fn on_probe(ctx: &TracePointContext) {
    let Some(cfg) = config() else { return };
    if try_probe(ctx, cfg).is_err() {
        bump(Counter::TcpReadError);
    }
}

fn try_probe(ctx: &TracePointContext, cfg: &TcpConfig) -> Result<(), i32> {
    let rec = record::copy_probe(ctx, cfg)?;
    let sk: u64 = record::field(rec, cfg.probe.skaddr)?;
    let ptr = match sock_ptr(sk) {
        Some(ptr) => ptr,
        None => match adopt(ctx, cfg, sk)? {
            Some(ptr) => ptr,
            None => return Ok(()),
        },
    };
    // SAFETY: as in `connected` (tcp_rcv_established runs under the socket
    // lock, in softirq or from the owner's backlog).
    let info = unsafe { &mut *ptr };
    let srtt: u32 = record::field(rec, cfg.srtt)?;
    let snd_nxt: u32 = record::field(rec, cfg.snd_nxt)?;
    if info.flags & SOCK_PROBED == 0 {
        // Everything up to snd_una was acknowledged before this first look.
        let snd_una: u32 = record::field(rec, cfg.snd_una)?;
        info.bytes_sent += u64::from(snd_nxt.wrapping_sub(snd_una));
        info.flags |= SOCK_PROBED;
    } else {
        info.bytes_sent += u64::from(snd_nxt.wrapping_sub(info.last_snd_nxt));
    }
    info.last_snd_nxt = snd_nxt;
    if srtt == 0 {
        return Ok(()); // no RTT sample yet
    }
    let bucket = bucket_of(u64::from(srtt)) as u32;
    if info.rtt_pending > 0 && bucket == info.rtt_bucket {
        info.rtt_pending += 1;
    } else {
        if info.rtt_pending > 0 {
            hist_add(
                &info.endpoint,
                HIST_RTT_US,
                info.rtt_bucket,
                u64::from(info.rtt_pending),
            );
        }
        info.rtt_bucket = bucket;
        info.rtt_pending = 1;
    }
    Ok(())
}

/// Starts tracking an established socket seen for the first time.
#[inline(always)]
fn adopt(ctx: &TracePointContext, cfg: &TcpConfig, sk: u64) -> Result<Option<*mut SockInfo>, i32> {
    let Some(row) = untracked_row(ctx, cfg, &cfg.probe, sk)? else {
        return Ok(None);
    };
    let info = SockInfo {
        endpoint: row,
        start_ns: 0,
        established_ns: 0,
        bytes_sent: 0,
        last_snd_nxt: 0,
        flags: SOCK_ADOPTED,
        rtt_bucket: 0,
        rtt_pending: 0,
    };
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
    if let Some(row) = row_of(ctx, cfg, &cfg.retransmit, sk)? {
        with_stats(&row, |s| s.retransmits += 1);
    }
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
