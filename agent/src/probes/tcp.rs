//! TCP tracing: five tracepoints (`sock:inet_sock_set_state`, `tcp_probe` as
//! a BTF tracepoint, `tcp:tcp_retransmit_skb`, `tcp:tcp_send_reset`,
//! `tcp:tcp_receive_reset`), aggregated per endpoint row in the kernel and
//! read once at the end.

mod btf;
mod layout;
pub mod proc_net;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap},
    programs::{
        BtfTracePoint, TracePoint, tp_btf::BtfTracePointLinkId, trace_point::TracePointLinkId,
    },
};
use qprof_common::{
    counters::{Counter, MAP_DROP_COUNTERS},
    tcp::{
        AF_INET6, DIR_INBOUND, DIR_OUTBOUND, Endpoint, EndpointStats, FourTuple, HIST_CONNECT_NS,
        HIST_LIFETIME_NS, HIST_RTT_US, HistKey, MAP_CONFIG, MAP_HIST, MAP_LISTENERS, MAP_SEED,
        MAP_SOCKS, MAP_STATS, MAP_TARGET_PIDS, Owner, SOCK_ADOPTED, SOCK_BASES, SOCK_ESTABLISHED,
        SOCK_PROBED, SOCK_RECEIVED, SockInfo, TcpConfig,
    },
};

pub use self::layout::{LayoutError, PROBE_PROGRAM, PROBE_TRACEPOINT, TRACEPOINTS};
use super::{ProbeError, cpu::comm_string, load_object, map, map_err, map_mut};
use crate::aggregate::tcp::{Addr, Counts, Direction, HistKind, Peer, TcpTable};

/// What can go wrong starting or reading the TCP tracer.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("reading the kernel's BTF (/sys/kernel/btf/vmlinux) to attach to tcp_probe: {0}")]
    KernelBtf(#[from] aya::BtfError),
    /// Keeps aya's `ProgramError` (with the verifier log on load errors).
    #[error("BPF program {program} on tracepoint {tracepoint}: {source}")]
    Attach {
        program: &'static str,
        tracepoint: String,
        source: aya::programs::ProgramError,
    },
}

/// What to trace.
#[derive(Debug, Clone, Default)]
pub struct TcpOptions {
    /// Only connections owned by these processes (empty: every process).
    pub pids: Vec<u32>,
}

/// A running TCP trace; dropping it detaches every program (aya owns the
/// links), so an error path leaves no probe behind.
pub struct TcpTracer {
    ebpf: Ebpf,
    links: Vec<(&'static str, TracePointLinkId)>,
    probe_link: Option<BtfTracePointLinkId>,
    /// Pre-existing connections or listeners the seed maps could not hold.
    seed_dropped: u64,
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut TracePoint, TcpError> {
    let tracepoint = TRACEPOINTS
        .iter()
        .find(|t| t.0 == name)
        .map(|t| format!("{}:{}", t.1, t.2))
        .unwrap_or_default();
    ebpf.program_mut(name)
        .ok_or(ProbeError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|source| TcpError::Attach {
            program: name,
            tracepoint,
            source,
        })
}

fn probe_err(source: aya::programs::ProgramError) -> TcpError {
    TcpError::Attach {
        program: PROBE_PROGRAM,
        tracepoint: format!("{PROBE_TRACEPOINT} (BTF)"),
        source,
    }
}

fn probe_program(ebpf: &mut Ebpf) -> Result<&mut BtfTracePoint, TcpError> {
    ebpf.program_mut(PROBE_PROGRAM)
        .ok_or(ProbeError::Missing {
            kind: "program",
            name: PROBE_PROGRAM,
        })?
        .try_into()
        .map_err(probe_err)
}

/// Loads and attaches the per-segment program on the `tcp_probe` BTF
/// tracepoint.
fn attach_probe(ebpf: &mut Ebpf) -> Result<BtfTracePointLinkId, TcpError> {
    let btf = aya::Btf::from_sys_fs()?;
    let prog = probe_program(ebpf)?;
    prog.load(PROBE_TRACEPOINT, &btf).map_err(probe_err)?;
    prog.attach().map_err(probe_err)
}

impl TcpTracer {
    /// Reads the record layouts, loads the programs, hands them the filter
    /// and the connections that already exist, then attaches.
    pub fn start(options: &TcpOptions) -> Result<Self, TcpError> {
        let btf = btf::Btf::kernel().map_err(LayoutError::from)?;
        let config = layout::load(
            !options.pids.is_empty(),
            layout::ephemeral_ports(),
            layout::KernelOffsets::from_btf(&btf),
            layout::sock_layout(&btf)?,
        )?;
        let mut ebpf = load_object()?;
        configure(&mut ebpf, &config, &options.pids)?;
        let seed_dropped = seed(&mut ebpf, &proc_net::scan(&options.pids))?;
        let mut links = Vec::new();
        for (name, category, tracepoint) in TRACEPOINTS {
            let prog = program(&mut ebpf, name)?;
            let err = |source| TcpError::Attach {
                program: name,
                tracepoint: format!("{category}:{tracepoint}"),
                source,
            };
            prog.load().map_err(err)?;
            links.push((name, prog.attach(category, tracepoint).map_err(err)?));
        }
        let probe_link = Some(attach_probe(&mut ebpf)?);
        Ok(Self {
            ebpf,
            links,
            probe_link,
            seed_dropped,
        })
    }

    /// Connections tracked right now (for progress; walks the keys).
    #[must_use]
    pub fn tracked_connections(&self) -> u64 {
        map(&self.ebpf, MAP_SOCKS)
            .ok()
            .and_then(|m| HashMap::<_, u64, SockInfo>::try_from(m).ok())
            .map_or(0, |m| m.keys().count() as u64)
    }

    /// Detaches and reads every row out of the kernel.
    pub fn finish(mut self) -> Result<TcpTable, TcpError> {
        if let Some(link) = self.probe_link.take() {
            probe_program(&mut self.ebpf)?
                .detach(link)
                .map_err(probe_err)?;
        }
        for (name, link) in std::mem::take(&mut self.links) {
            let prog = program(&mut self.ebpf, name)?;
            prog.detach(link).map_err(|source| TcpError::Attach {
                program: name,
                tracepoint: String::new(),
                source,
            })?;
        }
        let mut table = TcpTable::default();
        read_stats(&self.ebpf, &mut table)?;
        read_hist(&self.ebpf, &mut table)?;
        read_live(&self.ebpf, &mut table)?;
        table.drops = drop_counters(&self.ebpf)?;
        if self.seed_dropped > 0 {
            table.drops.push(("tcp_seed_full", self.seed_dropped));
        }
        Ok(table)
    }
}

fn configure(ebpf: &mut Ebpf, config: &TcpConfig, pids: &[u32]) -> Result<(), ProbeError> {
    if !pids.is_empty() {
        let mut targets: HashMap<_, u32, u8> =
            HashMap::try_from(map_mut(ebpf, MAP_TARGET_PIDS)?).map_err(map_err(MAP_TARGET_PIDS))?;
        for pid in pids {
            targets
                .insert(pid, 1, 0)
                .map_err(map_err(MAP_TARGET_PIDS))?;
        }
    }
    let mut array: Array<_, TcpConfig> =
        Array::try_from(map_mut(ebpf, MAP_CONFIG)?).map_err(map_err(MAP_CONFIG))?;
    array.set(0, config, 0).map_err(map_err(MAP_CONFIG))
}

/// Writes the pre-existing listeners and connections; returns how many
/// did not fit (their traffic is still counted, under owner 0 host-wide).
fn seed(ebpf: &mut Ebpf, scan: &proc_net::Scan) -> Result<u64, ProbeError> {
    let mut dropped = 0;
    let mut listeners: HashMap<_, u32, Owner> =
        HashMap::try_from(map_mut(ebpf, MAP_LISTENERS)?).map_err(map_err(MAP_LISTENERS))?;
    for (port, owner) in &scan.listeners {
        if listeners.insert(u32::from(*port), owner, 0).is_err() {
            dropped += 1;
        }
    }
    let mut seeds: HashMap<_, FourTuple, Owner> =
        HashMap::try_from(map_mut(ebpf, MAP_SEED)?).map_err(map_err(MAP_SEED))?;
    for (tuple, owner) in &scan.established {
        if seeds.insert(tuple, owner, 0).is_err() {
            dropped += 1;
        }
    }
    Ok(dropped)
}

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

fn read_stats(ebpf: &Ebpf, table: &mut TcpTable) -> Result<(), ProbeError> {
    let stats: PerCpuHashMap<_, Endpoint, EndpointStats> =
        PerCpuHashMap::try_from(map(ebpf, MAP_STATS)?).map_err(map_err(MAP_STATS))?;
    for entry in &stats {
        let (key, per_cpu) = entry.map_err(map_err(MAP_STATS))?;
        let (mut sent, mut received, mut sent_closes, mut received_closes) = (0, 0, 0, 0);
        for s in per_cpu.iter() {
            table.add_counts(
                peer(&key),
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
            sent_closes += s.sent_closes;
            received_closes += s.received_closes;
        }
        let row = peer(&key);
        if sent_closes > 0 {
            table.add_bytes_sent(row.clone(), sent);
        }
        if received_closes > 0 {
            table.add_bytes_received(row, received);
        }
    }
    Ok(())
}

fn read_hist(ebpf: &Ebpf, table: &mut TcpTable) -> Result<(), ProbeError> {
    let hist: PerCpuHashMap<_, HistKey, u64> =
        PerCpuHashMap::try_from(map(ebpf, MAP_HIST)?).map_err(map_err(MAP_HIST))?;
    for entry in &hist {
        let (key, per_cpu) = entry.map_err(map_err(MAP_HIST))?;
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

/// Connections still open: bytes sent and the RTT samples they batch
/// in the kernel (flushed there only when their bucket changes or they close).
fn read_live(ebpf: &Ebpf, table: &mut TcpTable) -> Result<(), ProbeError> {
    let socks: HashMap<_, u64, SockInfo> =
        HashMap::try_from(map(ebpf, MAP_SOCKS)?).map_err(map_err(MAP_SOCKS))?;
    for entry in &socks {
        let (_, info) = entry.map_err(map_err(MAP_SOCKS))?;
        let row = peer(&info.endpoint);
        if info.flags & (SOCK_ESTABLISHED | SOCK_ADOPTED) != 0 {
            table.add_open(row.clone());
        }
        if info.flags & SOCK_PROBED != 0 {
            table.add_bytes_sent(row.clone(), info.bytes_sent);
        }
        if info.flags & SOCK_BASES != 0 && info.flags & SOCK_RECEIVED != 0 {
            let received = info.received_last.wrapping_sub(info.received_base);
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
    Ok(())
}

/// Non-zero loss counters (one object per capture, so only TCP's can be
/// non-zero here).
fn drop_counters(ebpf: &Ebpf) -> Result<Vec<(&'static str, u64)>, ProbeError> {
    let counters: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(map(ebpf, MAP_DROP_COUNTERS)?).map_err(map_err(MAP_DROP_COUNTERS))?;
    let mut out = Vec::new();
    for counter in Counter::ALL {
        let values = counters
            .get(&(counter as u32), 0)
            .map_err(map_err(MAP_DROP_COUNTERS))?;
        let sum: u64 = values.iter().sum();
        if sum > 0 {
            out.push((counter.name(), sum));
        }
    }
    Ok(out)
}
