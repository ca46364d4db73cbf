//! Drop and error counters, one slot per reason in a per-CPU array.
//!
//! Ids are stable: they index `DROP_COUNTERS` in the kernel and name the
//! Prometheus counter in the agent. Append, never renumber.

/// Name of the per-CPU array that holds the counters.
pub const MAP_DROP_COUNTERS: &str = "DROP_COUNTERS";

/// A reason a sample or event was lost or degraded.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// `bpf_get_stackid` found another stack in the bucket (`-EEXIST`).
    StackCollision = 0,
    /// `bpf_get_stackid` failed for another reason (map full, …).
    StackError = 1,
    /// The per-stack count map was full: the sample was not counted.
    CountMapFull = 2,
    /// The new-process ring buffer was full: the agent may miss a process's
    /// mappings (its frames then fall back to module+offset or addresses).
    NewPidRingFull = 3,
    /// The known-process map was full.
    KnownPidMapFull = 4,
    /// `SYS_STATS` was full: a new (pid, syscall) pair was not counted.
    SyscallMapFull = 5,
    /// `SYS_ERRNOS` was full: an error was counted but not its errno.
    SyscallErrnoMapFull = 6,
    /// `SYS_INFLIGHT` refused an entry: that call's latency was lost.
    SyscallInflightFull = 7,
    /// `OFFCPU_START` refused a switched-out thread: that block is lost.
    OffcpuStartMapFull = 8,
    /// `OFFCPU_COUNTS` was full: a block's time was not counted.
    OffcpuCountMapFull = 9,
    /// `TCP_SOCKS` was full: a connection was not tracked (its connect,
    /// RTT and bytes are missing).
    TcpSockMapFull = 16,
    /// `TCP_STATS` was full: a new endpoint row was not counted.
    TcpStatsMapFull = 17,
    /// `TCP_HIST` was full: RTT/connect/lifetime samples were lost.
    TcpHistMapFull = 18,
    /// A TCP tracepoint record could not be read (`bpf_probe_read` failed).
    TcpReadError = 19,
}

/// Number of counter slots; the array is sized by this.
pub const COUNTER_SLOTS: u32 = 32;

impl Counter {
    /// Every counter, for export loops.
    pub const ALL: [Counter; 14] = [
        Counter::StackCollision,
        Counter::StackError,
        Counter::CountMapFull,
        Counter::NewPidRingFull,
        Counter::KnownPidMapFull,
        Counter::SyscallMapFull,
        Counter::SyscallErrnoMapFull,
        Counter::SyscallInflightFull,
        Counter::OffcpuStartMapFull,
        Counter::OffcpuCountMapFull,
        Counter::TcpSockMapFull,
        Counter::TcpStatsMapFull,
        Counter::TcpHistMapFull,
        Counter::TcpReadError,
    ];

    /// Stable snake-case name, used in reports and metric labels.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Counter::StackCollision => "stack_collision",
            Counter::StackError => "stack_error",
            Counter::CountMapFull => "count_map_full",
            Counter::NewPidRingFull => "new_pid_ring_full",
            Counter::KnownPidMapFull => "known_pid_map_full",
            Counter::SyscallMapFull => "syscall_map_full",
            Counter::SyscallErrnoMapFull => "syscall_errno_map_full",
            Counter::SyscallInflightFull => "syscall_inflight_full",
            Counter::OffcpuStartMapFull => "offcpu_start_map_full",
            Counter::OffcpuCountMapFull => "offcpu_count_map_full",
            Counter::TcpSockMapFull => "tcp_sock_map_full",
            Counter::TcpStatsMapFull => "tcp_stats_map_full",
            Counter::TcpHistMapFull => "tcp_hist_map_full",
            Counter::TcpReadError => "tcp_read_error",
        }
    }
}

const _: () = assert!(Counter::ALL.len() as u32 <= COUNTER_SLOTS);
