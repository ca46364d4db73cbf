//! Connection lifecycle from `sock:inet_sock_set_state`: connects (with
//! their latency), accepts, listeners, failures by the state they died in,
//! and closes (lifetime, bytes, batched RTT samples).

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    programs::TracePointContext,
};
use qprof_common::{
    counters::Counter,
    hist::bucket_of,
    tcp::{
        AddrLayout, DIR_INBOUND, DIR_OUTBOUND, HIST_CONNECT_NS, HIST_LIFETIME_NS, IPPROTO_TCP,
        Owner, SOCK_ADOPTED, SOCK_BASES, SOCK_ESTABLISHED, SOCK_PROBED, SockInfo, TCP_CLOSE,
        TCP_CLOSING, TCP_ESTABLISHED, TCP_FIN_WAIT2, TCP_LAST_ACK, TCP_LISTEN, TCP_SYN_RECV,
        TCP_SYN_SENT, TCP_TIME_WAIT, TcpConfig,
    },
};

use super::{
    TCP_LISTENERS, TCP_SOCKS, filtered_out, filtering, flush_rtt, new_info, now_ns,
    record::{self, read, skaddr, tuple},
    rows::{endpoint, hist_add, with_stats},
    sock_ptr,
};
use crate::counters::bump;

/// Dispatches one state change; only TCP (the tracepoint also fires for
/// SCTP and MPTCP).
pub(super) fn try_set_state(ctx: &TracePointContext, cfg: &TcpConfig) -> Result<(), i32> {
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

/// `CLOSE` -> `SYN_SENT` runs in `connect()`, in the owner's context.
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
    let row = endpoint(cfg, &t, pid, DIR_OUTBOUND, comm);
    let info = new_info(cfg, row, now_ns(), 0);
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

/// `SYN_SENT` -> `ESTABLISHED`: an active connect completed.
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

/// `SYN_RECV` -> `ESTABLISHED`: a passive open completed (in softirq, where the
/// current task is arbitrary: the owner is the listener).
fn accepted(ctx: &TracePointContext, cfg: &TcpConfig) -> Result<(), i32> {
    let t = tuple(ctx, &cfg.set_state)?;
    let (pid, comm) = match listener(t.local_port) {
        Some(owner) => (owner.pid, owner.comm),
        None if filtering(cfg) => return Ok(()),
        None => (0, [0; 16]),
    };
    let sk = skaddr(ctx, &cfg.set_state)?;
    let row = endpoint(cfg, &t, pid, DIR_INBOUND, comm);
    let info = new_info(cfg, row, now_ns(), SOCK_ESTABLISHED);
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
        flush_closed(cfg, sk, info, old);
    }
    let _ = TCP_SOCKS.remove(sk);
    Ok(())
}

/// Moves a closing socket's lifetime, bytes and pending RTT samples into
/// its row. Bytes come from the kernel's own counters when their offsets
/// are known (exact, including the last segments), else from `snd_nxt`.
/// The kernel's counters count sequence space: closing from a state
/// reached by exchanging FINs takes one off each, and a connection we
/// opened also had its SYN acknowledged. What window changes already
/// moved to the row was taken off `bytes_sent` and added to the bases.
#[inline(always)]
fn flush_closed(cfg: &TcpConfig, sk: u64, info: &mut SockInfo, old: i32) {
    let fins = u64::from(matches!(
        old,
        TCP_FIN_WAIT2 | TCP_TIME_WAIT | TCP_LAST_ACK | TCP_CLOSING
    ));
    let syn = u64::from(info.endpoint.direction == DIR_OUTBOUND && info.flags & SOCK_ADOPTED == 0);
    let adopted = info.flags & SOCK_ADOPTED != 0;
    let lifetime = if adopted {
        0
    } else {
        now_ns().saturating_sub(info.established_ns)
    };
    let exact = if info.flags & SOCK_BASES == 0 {
        None
    } else {
        let acked: Result<u64, i32> = record::kernel_field(sk, cfg.sock_bytes_acked);
        let received: Result<u64, i32> = record::kernel_field(sk, cfg.sock_bytes_received);
        match (acked, received) {
            (Ok(a), Ok(r)) => Some((
                a.saturating_sub(info.acked_base).saturating_sub(fins + syn),
                r.saturating_sub(info.received_base).saturating_sub(fins),
            )),
            _ => None,
        }
    };
    let probed = info.flags & SOCK_PROBED != 0;
    with_stats(&info.endpoint, |s| {
        s.closes += 1;
        s.lifetime_ns_total += lifetime;
        s.lifetime_max_ns = s.lifetime_max_ns.max(lifetime);
        if let Some((sent, received)) = exact {
            s.bytes_sent += sent;
            s.bytes_received += received;
            s.sent_measured += 1;
            s.received_measured += 1;
        } else if probed {
            s.bytes_sent += info.bytes_sent;
            s.sent_measured += 1;
        }
    });
    if !adopted {
        hist_add(
            &info.endpoint,
            HIST_LIFETIME_NS,
            bucket_of(lifetime) as u32,
            1,
        );
    }
    flush_rtt(info);
}
