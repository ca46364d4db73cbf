//! Reading a window out of the kernel: the per-row counters and histogram
//! cells of one generation (then emptied), and the live connections.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    Ebpf,
    maps::{HashMap, PerCpuHashMap, PerCpuValues},
};
use qprof_common::tcp::{
    AF_INET6, DIR_INBOUND, DIR_OUTBOUND, Endpoint, EndpointStats, HIST_CONNECT_NS,
    HIST_LIFETIME_NS, HIST_RTT_US, HistKey, MAP_HIST, MAP_HIST_1, MAP_SOCKS, MAP_STATS,
    MAP_STATS_1, SOCK_ADOPTED, SOCK_BASES, SOCK_ESTABLISHED, SOCK_PROBED, SOCK_RECEIVED, SockInfo,
};

use crate::{
    aggregate::tcp::{Addr, Counts, Direction, HistKind, Peer, TcpTable},
    probes::{ProbeError, cpu::comm_string, map, map_err, map_mut},
};

fn ip(family: u16, addr: &[u8; 16]) -> IpAddr {
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*addr))
    } else {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    }
}

/// The aggregate's row identity for a kernel row.
fn peer(e: &Endpoint) -> Peer {
    Peer {
        pid: e.pid,
        comm: comm_string(&e.comm),
        direction: match e.direction {
            DIR_OUTBOUND => Direction::Outbound,
            DIR_INBOUND => Direction::Inbound,
            _ => Direction::Unknown,
        },
        local: Addr::new(ip(e.family, &e.local_addr), e.local_port),
        remote: Addr::new(ip(e.family, &e.remote_addr), e.remote_port),
    }
}

/// Every entry of a per-CPU hash map, which is then emptied. Called only
/// on a generation no program writes, so nothing is added between the
/// read and the delete.
fn drain<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<Vec<(K, PerCpuValues<V>)>, ProbeError> {
    let mut m: PerCpuHashMap<_, K, V> =
        PerCpuHashMap::try_from(map_mut(ebpf, name)?).map_err(map_err(name))?;
    let entries = m
        .iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_err(name))?;
    for (key, _) in &entries {
        // ENOENT cannot happen with no writer; any other error would leave
        // the row to be counted again next window, so it is reported.
        m.remove(key).map_err(map_err(name))?;
    }
    Ok(entries)
}

/// Moves generation `generation`'s rows and histogram cells into `table`
/// and empties them in the kernel.
pub fn take_generation(
    ebpf: &mut Ebpf,
    generation: u16,
    table: &mut TcpTable,
) -> Result<(), ProbeError> {
    let (stats, hist) = if generation == 0 {
        (MAP_STATS, MAP_HIST)
    } else {
        (MAP_STATS_1, MAP_HIST_1)
    };
    for (key, per_cpu) in drain::<Endpoint, EndpointStats>(ebpf, stats)? {
        add_stats(table, &key, &per_cpu);
    }
    for (key, per_cpu) in drain::<HistKey, u64>(ebpf, hist)? {
        let kind = match key.kind {
            HIST_CONNECT_NS => HistKind::ConnectNs,
            HIST_RTT_US => HistKind::RttUs,
            HIST_LIFETIME_NS => HistKind::LifetimeNs,
            _ => continue,
        };
        let count = per_cpu.iter().sum();
        table.add_samples(peer(&key.endpoint), kind, key.bucket as usize, count);
    }
    Ok(())
}

fn add_stats(table: &mut TcpTable, key: &Endpoint, per_cpu: &PerCpuValues<EndpointStats>) {
    let (mut sent, mut received, mut sent_measured, mut received_measured) = (0, 0, 0, 0);
    for s in per_cpu.iter() {
        table.add_counts(
            peer(key),
            &Counts {
                connects: s.connects,
                failed_syn_sent: s.failed_syn_sent,
                failed_syn_recv: s.failed_syn_recv,
                closes: s.closes,
                lifetime_ns_total: s.lifetime_ns_total,
                retransmits: s.retransmits,
                resets_sent: s.resets_sent,
                resets_received: s.resets_received,
                connect_max_ns: s.connect_max_ns,
                lifetime_max_ns: s.lifetime_max_ns,
            },
        );
        sent += s.bytes_sent;
        received += s.bytes_received;
        sent_measured += s.sent_measured;
        received_measured += s.received_measured;
    }
    let row = peer(key);
    if sent_measured > 0 {
        table.add_bytes_sent(row.clone(), sent);
    }
    if received_measured > 0 {
        table.add_bytes_received(row, received);
    }
}

/// Connections open now, counted in their rows. With `leftovers` (the
/// last window of a capture), also what they accumulated and did not move
/// to their rows yet: bytes since the last window change and the RTT
/// samples they batch in the kernel.
pub fn read_live(ebpf: &Ebpf, table: &mut TcpTable, leftovers: bool) -> Result<(), ProbeError> {
    let socks: HashMap<_, u64, SockInfo> =
        HashMap::try_from(map(ebpf, MAP_SOCKS)?).map_err(map_err(MAP_SOCKS))?;
    for entry in &socks {
        let (_, info) = entry.map_err(map_err(MAP_SOCKS))?;
        let row = peer(&info.endpoint);
        if info.flags & (SOCK_ESTABLISHED | SOCK_ADOPTED) != 0 {
            table.add_open(row.clone());
        }
        if leftovers {
            add_leftovers(table, &row, &info);
        }
    }
    Ok(())
}

fn add_leftovers(table: &mut TcpTable, row: &Peer, info: &SockInfo) {
    if info.flags & SOCK_PROBED != 0 {
        table.add_bytes_sent(row.clone(), info.bytes_sent);
    }
    if info.flags & SOCK_BASES != 0 && info.flags & SOCK_RECEIVED != 0 {
        let received = info.received_last.saturating_sub(info.received_base);
        table.add_bytes_received(row.clone(), received);
    }
    for (&bucket, &count) in info.rtt_buckets.iter().zip(&info.rtt_counts) {
        if count > 0 {
            table.add_samples(
                row.clone(),
                HistKind::RttUs,
                usize::from(bucket),
                u64::from(count),
            );
        }
    }
}

/// Sockets tracked now (for progress; walks the keys).
#[must_use]
pub fn tracked(ebpf: &Ebpf) -> u64 {
    map(ebpf, MAP_SOCKS)
        .ok()
        .and_then(|m| HashMap::<_, u64, SockInfo>::try_from(m).ok())
        .map_or(0, |m| m.keys().count() as u64)
}
