//! SQLite-specific ABI: the per-statement and per-thread state the SQLite
//! uprobes keep, their statistics, and the program names the agent attaches.
//!
//! Query text and completions travel through the shared `queries` ring
//! buffer (`TextEvent`/`DoneEvent` with `DB_SQLITE`); only the bookkeeping
//! that ties `sqlite3_step` calls to one execution of one statement lives
//! here.

pub const MAP_STMTS: &str = "SQLITE_STMTS";
pub const MAP_THREADS: &str = "SQLITE_THREADS";
pub const MAP_STATS: &str = "SQLITE_STATS";

/// Statements remembered (prepared and not finalized), across processes.
/// LRU: a process that exits without finalizing leaves entries behind, and
/// those must make room. 65,536 covers hundreds of processes with
/// Python's default statement cache (128 per connection); an evicted
/// statement is recovered from its `Vdbe` at its next step when the
/// library's layout is known, and counted as unknown otherwise.
pub const STMTS_CAPACITY: u32 = 65_536;
/// Threads with SQLite state (inside a call, or between prepare's entry
/// and return). LRU: threads exit without telling us.
pub const THREADS_CAPACITY: u32 = 16_384;

/// The `sqlite_step` uprobe's attach cookie: the offset of `zSql` (the
/// statement's saved text) in this library's `Vdbe`, found by the agent in
/// the code of `sqlite3_sql`; 0 when unknown. Offsets past this bound are
/// ignored (a `Vdbe` is a few hundred bytes).
pub const MAX_SQL_FIELD_OFFSET: u64 = 4096;

/// `sqlite3_step` results (primary codes; extended codes only widen errors).
pub const SQLITE_OK: i32 = 0;
pub const SQLITE_ROW: i32 = 100;
pub const SQLITE_DONE: i32 = 101;

/// Key of `SQLITE_STMTS`: a `sqlite3_stmt*` is only unique within its
/// process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StmtKey {
    pub tgid: u32,
    pub pad: u32,
    pub stmt: u64,
}
const _: () = assert!(core::mem::size_of::<StmtKey>() == 16);

/// One prepared statement and its execution in progress, if any.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StmtState {
    /// Id of the statement's text (already sent as a `TextEvent`).
    pub text_id: u64,
    /// First `sqlite3_step` of the running execution.
    pub start_ns: u64,
    /// `SQLITE_ROW` results of the running execution.
    pub rows: u64,
    /// Non-zero between the first step of an execution and its end.
    pub running: u32,
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<StmtState>() == 32);

/// Kinds of traced call a thread can be inside (`ThreadState::kind`).
pub const CALL_NONE: u32 = 0;
pub const CALL_PREPARE: u32 = 1;
pub const CALL_STEP: u32 = 2;
pub const CALL_EXEC: u32 = 3;

/// What one thread is doing inside libsqlite3.
///
/// Only the outermost traced call is handled: SQLite calls its own API
/// (`sqlite3_exec` prepares and steps; schema loading runs `sqlite3_exec`
/// inside `sqlite3_prepare`; `CREATE TABLE` re-reads the schema inside
/// `sqlite3_step`), and those inner calls belong to the outer one. A call
/// is nested when its stack pointer is below the outer call's; a return
/// is the outer one's when its stack pointer is the outer entry's plus the
/// popped return address (x86-64), so a missed return cannot wedge a
/// thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadState {
    /// Stack pointer at the outer call's entry, 0 when none is in progress.
    pub outer_sp: u64,
    /// `CALL_*` of the outer call.
    pub kind: u32,
    /// Traced calls in progress, outer one included.
    pub depth: u32,
    /// Prepare: `zSql`, `ppStmt`, `pzTail`, `nByte`.
    pub sql: u64,
    pub pp_stmt: u64,
    pub pz_tail: u64,
    pub n_byte: i64,
    /// Step: the statement stepped (0: unknown, nothing to do at return).
    pub stmt: u64,
    /// Prepare and exec: entry time; exec: its text and rows seen.
    pub start_ns: u64,
    pub text_id: u64,
    pub rows: u64,
    /// Exec: non-zero when `text_id` is valid.
    pub has_text: u32,
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<ThreadState>() == 88);

/// Slots of the per-CPU `SQLITE_STATS` array: what the probes did, for
/// reports (losses go to `DROP_COUNTERS`). Probe hits are not counted
/// here, on the hot path: the kernel's own run counts
/// (`kernel.bpf_stats_enabled`) give them to benchmarks. Append only.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqliteStat {
    /// Completions sent for executions of prepared statements.
    Executions = 0,
    /// Completions sent for `sqlite3_exec` calls.
    Execs = 1,
    /// Statements remembered (at prepare, or recovered at a step).
    Prepared = 2,
    /// `sqlite3_prepare*` calls that failed (sent as an error completion).
    PrepareErrors = 3,
    /// Statements forgotten at `sqlite3_finalize`.
    Finalized = 4,
    /// Calls made from inside another traced call (skipped).
    Nested = 5,
    /// Statements whose text was read from the `Vdbe` at their first step
    /// (prepared before qprof attached, or evicted).
    Recovered = 6,
}

pub const STAT_SLOTS: u32 = 16;
const _: () = assert!((SqliteStat::Recovered as u32) < STAT_SLOTS);

/// Program names, shared with the agent's attach code. At most 15
/// characters, so that `bpftool prog` (which shows the kernel's truncated
/// names) tells them apart when traps are counted.
pub const PROG_PREPARE: &str = "sqlite_prepare";
pub const PROG_PREPARE_V3: &str = "sqlite_prep_v3";
pub const PROG_PREPARE_RET: &str = "sqlite_prep_ret";
pub const PROG_STEP: &str = "sqlite_step";
pub const PROG_STEP_RET: &str = "sqlite_step_ret";
pub const PROG_RESET: &str = "sqlite_reset";
pub const PROG_FINALIZE: &str = "sqlite_finalize";
pub const PROG_EXEC: &str = "sqlite_exec";
pub const PROG_EXEC_RET: &str = "sqlite_exec_ret";

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): repr(C) structs of integers with explicit padding and
    // asserted sizes: every bit pattern is valid.
    unsafe impl aya::Pod for super::StmtKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::StmtState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ThreadState {}
}
