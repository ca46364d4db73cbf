//! TCP tracing: five tracepoints (`sock:inet_sock_set_state`, `tcp_probe` as
//! a BTF tracepoint, `tcp:tcp_retransmit_skb`, `tcp:tcp_send_reset`,
//! `tcp:tcp_receive_reset`), aggregated per endpoint row in the kernel and
//! read once per window ([`TcpTracer`] is a [`Component`]).
//!
//! A window is closed without losing an increment: the rows exist in two
//! generations (see `qprof_common::tcp`); the tracer points the programs at
//! the other one, waits for an RCU grace period (`membarrier(
//! MEMBARRIER_CMD_GLOBAL)` is `synchronize_rcu()`, and every BPF program
//! runs inside an RCU read-side section), so no program still writes the
//! old generation, then reads and empties it. Connection tracking
//! (`TCP_SOCKS`, listeners, the seed) is never reset.

mod btf;
mod layout;
pub mod proc_net;
mod read;

use std::time::Duration;

use aya::{
    Ebpf,
    maps::{Array, HashMap},
    programs::{BtfTracePoint, TracePoint},
};
use qprof_common::{
    counters::Counter,
    tcp::{FourTuple, MAP_CONFIG, MAP_LISTENERS, MAP_SEED, MAP_TARGET_PIDS, Owner, TcpConfig},
};

pub use self::layout::{LayoutError, PROBE_PROGRAM, PROBE_TRACEPOINT, TRACEPOINTS};
use super::{
    ProbeError,
    component::{CaptureKind, Component},
    drop_counters, map_err, map_mut,
};
use crate::aggregate::{drops::DropDeltas, tcp::TcpTable};

/// The kernel counters the TCP programs bump.
const TCP_COUNTERS: [Counter; 4] = [
    Counter::TcpSockMapFull,
    Counter::TcpStatsMapFull,
    Counter::TcpHistMapFull,
    Counter::TcpReadError,
];

/// Progress walks the tracked-socket keys, one syscall each: once a second
/// (every 10 polls) is plenty for a number people glance at.
const PROGRESS_EVERY_POLLS: u32 = 10;

/// When `membarrier` cannot give a grace period (a `nohz_full` kernel
/// refuses `MEMBARRIER_CMD_GLOBAL`): programs run for microseconds, so a
/// program still writing the old generation 20 ms after the flip would have
/// to be preempted for that long. Counted (`tcp_window_sync_fallback`).
const SYNC_FALLBACK: Duration = Duration::from_millis(20);

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
    /// The programs' configuration; its `generation` is the one written now.
    config: TcpConfig,
    /// Pre-existing connections or listeners the seed maps could not hold
    /// (reported in the first window).
    seed_dropped: u64,
    /// Windows whose grace period had to be a sleep, not yet reported.
    sync_fallbacks: u64,
    drops: DropDeltas,
    polls: u32,
    tracked: u64,
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
fn attach_probe(ebpf: &mut Ebpf) -> Result<(), TcpError> {
    let btf = aya::Btf::from_sys_fs()?;
    let prog = probe_program(ebpf)?;
    prog.load(PROBE_TRACEPOINT, &btf).map_err(probe_err)?;
    prog.attach().map_err(probe_err)?;
    Ok(())
}

impl TcpTracer {
    /// Points the programs at the other generation and waits until none
    /// writes the old one; returns the old one, now safe to read and empty.
    fn flip(&mut self) -> Result<u16, ProbeError> {
        let old = self.config.generation;
        self.config.generation = 1 - old;
        let mut array: Array<_, TcpConfig> =
            Array::try_from(map_mut(&mut self.ebpf, MAP_CONFIG)?).map_err(map_err(MAP_CONFIG))?;
        array.set(0, self.config, 0).map_err(map_err(MAP_CONFIG))?;
        if !rcu_grace_period() {
            std::thread::sleep(SYNC_FALLBACK);
            self.sync_fallbacks += 1;
        }
        Ok(old)
    }

    /// Closes the window: generation `generation`'s rows, the live
    /// connections (with what they did not move to their rows yet when
    /// `leftovers`), and the loss counters' gains.
    fn read_window(&mut self, generation: u16, leftovers: bool) -> Result<TcpTable, TcpError> {
        let mut table = TcpTable::default();
        read::take_generation(&mut self.ebpf, generation, &mut table)?;
        read::read_live(&self.ebpf, &mut table, leftovers)?;
        table.drops = self.drops.window(&drop_counters(&self.ebpf)?);
        for (name, n) in [
            ("tcp_seed_full", std::mem::take(&mut self.seed_dropped)),
            (
                "tcp_window_sync_fallback",
                std::mem::take(&mut self.sync_fallbacks),
            ),
        ] {
            if n > 0 {
                table.drops.push((name, n));
            }
        }
        Ok(table)
    }
}

/// Waits for an RCU grace period: `membarrier(MEMBARRIER_CMD_GLOBAL)` calls
/// `synchronize_rcu()` (kernel/sched/membarrier.c). False when the kernel
/// refuses (`nohz_full`, or membarrier compiled out).
fn rcu_grace_period() -> bool {
    /// `MEMBARRIER_CMD_GLOBAL` (linux/membarrier.h).
    const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
    // SAFETY: membarrier takes two integer arguments and touches no memory
    // of ours.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0) };
    rc == 0
}

impl Component for TcpTracer {
    type Config = TcpOptions;
    type Snapshot = TcpTable;
    type Error = TcpError;

    const KIND: CaptureKind = CaptureKind::Tcp;

    /// Reads the record layouts, loads the programs, hands them the filter
    /// and the connections that already exist, then attaches.
    fn start(options: &TcpOptions) -> Result<Self, TcpError> {
        let btf = btf::Btf::kernel().map_err(LayoutError::from)?;
        let config = layout::load(
            !options.pids.is_empty(),
            layout::ephemeral_ports(),
            layout::KernelOffsets::from_btf(&btf),
            layout::sock_layout(&btf)?,
        )?;
        let mut ebpf = super::objects::load_for(CaptureKind::Tcp, false)?;
        configure(&mut ebpf, &config, &options.pids)?;
        let seed_dropped = seed(&mut ebpf, &proc_net::scan(&options.pids))?;
        for (name, category, tracepoint) in TRACEPOINTS {
            let prog = program(&mut ebpf, name)?;
            let err = |source| TcpError::Attach {
                program: name,
                tracepoint: format!("{category}:{tracepoint}"),
                source,
            };
            prog.load().map_err(err)?;
            prog.attach(category, tracepoint).map_err(err)?;
        }
        attach_probe(&mut ebpf)?;
        Ok(Self {
            ebpf,
            config,
            seed_dropped,
            sync_fallbacks: 0,
            drops: DropDeltas::new(TCP_COUNTERS.map(Counter::name)),
            polls: 0,
            tracked: 0,
        })
    }

    /// Refreshes the progress count (connections tracked) once a second.
    fn poll(&mut self) {
        if self.polls.is_multiple_of(PROGRESS_EVERY_POLLS) {
            self.tracked = read::tracked(&self.ebpf);
        }
        self.polls = self.polls.wrapping_add(1);
    }

    fn progress(&self) -> u64 {
        self.tracked
    }

    /// The window's rows; `open` counts the connections open now. What a
    /// live connection accumulated since its last segment is in the next
    /// window (see `qprof_common::tcp`).
    fn snapshot(&mut self) -> Result<TcpTable, TcpError> {
        let old = self.flip()?;
        self.read_window(old, false)
    }

    /// The last window, including what live connections still hold. The
    /// programs are detached first: a live connection's next segment would
    /// otherwise move its batched samples to a generation nobody reads
    /// while the connections are being read. Detaching takes a few
    /// milliseconds per program, and TCP's rows are counts, not state
    /// a detach order could corrupt.
    fn stop(mut self) -> Result<TcpTable, TcpError> {
        probe_program(&mut self.ebpf)?.unload().map_err(probe_err)?;
        for (name, category, tracepoint) in TRACEPOINTS {
            program(&mut self.ebpf, name)?
                .unload()
                .map_err(|source| TcpError::Attach {
                    program: name,
                    tracepoint: format!("{category}:{tracepoint}"),
                    source,
                })?;
        }
        let generation = self.config.generation;
        self.read_window(generation, true)
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

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::{TcpListener, TcpStream},
    };

    use super::*;
    use crate::aggregate::tcp::{Direction, TcpRow};

    /// The outbound row of this process to `port`.
    fn outbound(table: &TcpTable, port: u16) -> Option<TcpRow> {
        let remote = format!("127.0.0.1:{port}");
        table
            .rows()
            .into_iter()
            .find(|r| r.direction == Direction::Outbound && r.remote == remote)
    }

    /// Writes `n` bytes and waits for a one-byte reply, so the bytes were
    /// acknowledged and a segment came back (which moves a live
    /// connection's window data).
    fn exchange(client: &mut TcpStream, server: &mut TcpStream, n: usize) {
        client.write_all(&vec![7u8; n]).expect("write");
        let mut buf = vec![0u8; n];
        server.read_exact(&mut buf).expect("read");
        server.write_all(&[1]).expect("reply");
        client.read_exact(&mut [0u8; 1]).expect("read reply");
    }

    /// Windows split the counts without losing or repeating any: connects
    /// and closes land in the window they happened in, and the bytes of a
    /// connection that spans windows add up to what it sent.
    #[test]
    #[ignore = "privileged: loads BPF programs (run as root with --ignored)"]
    fn windows_neither_lose_nor_repeat() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut tracer = TcpTracer::start(&TcpOptions {
            pids: vec![std::process::id()],
        })
        .expect("start (root?)");
        for _ in 0..5 {
            let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            let (mut s, _) = listener.accept().expect("accept");
            exchange(&mut c, &mut s, 100);
        }
        std::thread::sleep(Duration::from_millis(50)); // closes complete
        let first = tracer.snapshot().expect("snapshot 1");
        let row = outbound(&first, port).expect("outbound row in window 1");
        assert_eq!(
            (row.connects, row.closes, row.bytes_sent),
            (5, 5, Some(500))
        );

        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (mut s, _) = listener.accept().expect("accept");
        exchange(&mut c, &mut s, 1_000);
        let second = tracer.snapshot().expect("snapshot 2");
        let row = outbound(&second, port).expect("outbound row in window 2");
        assert_eq!((row.connects, row.closes, row.open), (1, 0, 1));
        exchange(&mut c, &mut s, 2_000);
        drop((c, s));
        std::thread::sleep(Duration::from_millis(50));
        let last = tracer.stop().expect("stop");
        let row = outbound(&last, port).expect("outbound row in the last window");
        assert_eq!((row.connects, row.closes), (0, 1));
        let spanning = row.bytes_sent.unwrap_or(0)
            + outbound(&second, port)
                .and_then(|r| r.bytes_sent)
                .unwrap_or(0);
        assert_eq!(spanning, 3_000, "{row:?}");
    }
}
