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
    /// TLS records arrived on a `PostgreSQL` connection outside any probed
    /// TLS read (a TLS library qprof cannot probe, or one linked
    /// statically): that connection is not followed (one per connection).
    QueryTlsUnfollowed = 10,
    /// A query sent on a connection that is not followed (see
    /// `QueryTlsUnfollowed`): not timed.
    QueryTlsDropped = 11,
    /// An OpenSSL read returned plaintext whose socket was never seen (no
    /// syscall inside it and none before for that `SSL*`): not parsed.
    QueryTlsFdUnknown = 12,
    /// `PQ_TLS_READS` refused a thread entering an OpenSSL read.
    QueryTlsMapFull = 13,
    /// `TCP_SOCKS` was full: a connection was not tracked (its connect,
    /// RTT and bytes are missing).
    TcpSockMapFull = 16,
    /// `TCP_STATS` was full: a new endpoint row was not counted.
    TcpStatsMapFull = 17,
    /// `TCP_HIST` was full: RTT/connect/lifetime samples were lost.
    TcpHistMapFull = 18,
    /// A TCP tracepoint record could not be read (`bpf_probe_read` failed).
    TcpReadError = 19,
    /// `MEM_ALLOCS` was full: a sampled allocation was not counted.
    MemAllocMapFull = 20,
    /// `MEM_LIVE` refused a sampled block: its free will not be seen, so
    /// it stays counted as in use.
    MemLiveMapFull = 21,
    /// `MEM_PENDING` refused a thread entering the allocator: that call
    /// was not seen.
    MemPendingMapFull = 22,
    /// `posix_memalign`'s out-parameter could not be read.
    MemReadError = 23,
    /// The query event ring buffer was full: a query text or completion
    /// was lost.
    QueryEventRingFull = 24,
    /// A per-connection or per-thread query map was full: a query was not
    /// timed.
    QueryMapFull = 25,
    /// More queries in flight on one connection than its queue holds.
    QueryQueueFull = 26,
    /// The PostgreSQL wire parser lost its place in a connection's stream
    /// (resynchronized at the next ReadyForQuery).
    QueryParserResync = 27,
    /// `SQLITE_STMTS` refused a prepared statement: its executions are
    /// not timed (unless its text can be recovered at its first step).
    SqliteStmtMapFull = 28,
    /// A statement was stepped whose text is unknown (prepared before
    /// qprof attached in a library whose layout is unknown, or evicted):
    /// that step was not timed.
    SqliteStmtUnknown = 29,
    /// SQLite query text or an out-parameter could not be read.
    SqliteReadError = 30,
    /// `SQLITE_THREADS` refused a thread: its call was not followed.
    SqliteThreadMapFull = 31,
}

/// Number of counter slots; the array is sized by this.
pub const COUNTER_SLOTS: u32 = 32;

impl Counter {
    /// Every counter, for export loops.
    pub const ALL: [Counter; 30] = [
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
        Counter::QueryTlsUnfollowed,
        Counter::QueryTlsDropped,
        Counter::QueryTlsFdUnknown,
        Counter::QueryTlsMapFull,
        Counter::TcpSockMapFull,
        Counter::TcpStatsMapFull,
        Counter::TcpHistMapFull,
        Counter::TcpReadError,
        Counter::MemAllocMapFull,
        Counter::MemLiveMapFull,
        Counter::MemPendingMapFull,
        Counter::MemReadError,
        Counter::QueryEventRingFull,
        Counter::QueryMapFull,
        Counter::QueryQueueFull,
        Counter::QueryParserResync,
        Counter::SqliteStmtMapFull,
        Counter::SqliteStmtUnknown,
        Counter::SqliteReadError,
        Counter::SqliteThreadMapFull,
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
            Counter::QueryTlsUnfollowed => "query_tls_unfollowed",
            Counter::QueryTlsDropped => "query_tls_dropped",
            Counter::QueryTlsFdUnknown => "query_tls_fd_unknown",
            Counter::QueryTlsMapFull => "query_tls_map_full",
            Counter::TcpSockMapFull => "tcp_sock_map_full",
            Counter::TcpStatsMapFull => "tcp_stats_map_full",
            Counter::TcpHistMapFull => "tcp_hist_map_full",
            Counter::TcpReadError => "tcp_read_error",
            Counter::MemAllocMapFull => "mem_alloc_map_full",
            Counter::MemLiveMapFull => "mem_live_map_full",
            Counter::MemPendingMapFull => "mem_pending_map_full",
            Counter::MemReadError => "mem_read_error",
            Counter::QueryEventRingFull => "query_event_ring_full",
            Counter::QueryMapFull => "query_map_full",
            Counter::QueryQueueFull => "query_queue_full",
            Counter::QueryParserResync => "query_parser_resync",
            Counter::SqliteStmtMapFull => "sqlite_stmt_map_full",
            Counter::SqliteStmtUnknown => "sqlite_stmt_unknown",
            Counter::SqliteReadError => "sqlite_read_error",
            Counter::SqliteThreadMapFull => "sqlite_thread_map_full",
        }
    }
}

const _: () = assert!(Counter::ALL.len() as u32 <= COUNTER_SLOTS);
