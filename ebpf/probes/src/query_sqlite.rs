//! SQLite: one execution of a prepared statement runs from its first
//! `sqlite3_step` to `SQLITE_DONE`, an error, or the `sqlite3_reset` /
//! `sqlite3_finalize` that stops it early; `sqlite3_exec` is one execution
//! of its whole text.
//!
//! Traps per execution of an already prepared statement: one per
//! `sqlite3_step` entry (its uretprobe is the cheap `uretprobe` syscall)
//! plus the caller's `sqlite3_reset`/`sqlite3_finalize` entry; a prepare
//! adds one. Text crosses to userspace once per distinct text
//! (`capture_text`); afterwards the statement is known by its pointer.
//!
//! SQLite calls its own API (exec prepares and steps; schema loading runs
//! `sqlite3_exec` inside a prepare; DDL re-reads the schema inside a step):
//! only the outermost traced call of a thread is handled (see
//! `ThreadState`), so nothing is counted twice.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::bpf_get_attach_cookie,
    },
    macros::map,
    maps::{LruHashMap, PerCpuArray},
    programs::{ProbeContext, RetProbeContext},
};
use qprof_common::{
    counters::Counter,
    queries::{DB_SQLITE, TEXT_MAX},
    query_sqlite::{
        CALL_EXEC, CALL_PREPARE, CALL_STEP, MAX_SQL_FIELD_OFFSET, SQLITE_DONE, SQLITE_OK,
        SQLITE_ROW, STAT_SLOTS, STMTS_CAPACITY, SqliteStat, StmtKey, StmtState,
    },
};

mod nesting;

use self::nesting::{enter, leave};
use crate::{
    counters::bump,
    query_events::{QUERY_ACTIVE, capture_text, clear_active, emit_done, set_active, wanted},
};

#[map(name = "SQLITE_STMTS")]
static SQLITE_STMTS: LruHashMap<StmtKey, StmtState> =
    LruHashMap::with_max_entries(STMTS_CAPACITY, 0);

#[map(name = "SQLITE_STATS")]
static SQLITE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

/// A statement text longer than this (from `pzTail`) is not believed: the
/// tail pointer was garbage, and the text is read up to its NUL instead.
const MAX_BELIEVED_LEN: u64 = 1 << 24;

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: no arguments, cannot fail.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub(crate) fn stat(which: SqliteStat) {
    if let Some(slot) = SQLITE_STATS.get_ptr_mut(which as u32) {
        // SAFETY: this CPU's slot; BPF programs do not preempt each other
        // on one CPU.
        unsafe { *slot += 1 };
    }
}

/// Reads a pointer-sized value from user memory (0 if unreadable).
#[inline(always)]
fn read_user_u64(addr: u64) -> Option<u64> {
    if addr == 0 {
        return None;
    }
    // SAFETY: the checked helper; a bad address is an error, not a fault.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// How many bytes `capture_text` may read for a statement of `len` bytes
/// (0: up to the NUL). `capture_text` reads strings, whose limit counts the
/// NUL, hence the +1; a statement longer than the buffer is read up to it
/// and marked truncated.
#[inline(always)]
fn text_limit(sql: u64, n_byte: i64, tail: u64) -> usize {
    let len = if tail > sql && tail - sql < MAX_BELIEVED_LEN {
        tail - sql
    } else if n_byte > 0 {
        n_byte as u64
    } else {
        0
    };
    if len == 0 || len + 1 > TEXT_MAX as u64 {
        0
    } else {
        (len + 1) as usize
    }
}

/// `sqlite3_prepare{,_v2,_v3}` entry: remembers the arguments until the
/// return says whether a statement came out.
#[inline(always)]
pub fn on_prepare(ctx: &ProbeContext, sql: u64, n_byte: i64, pp_stmt: u64, pz_tail: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !wanted((pid_tgid >> 32) as u32) {
        return;
    }
    if let Some(t) = enter(ctx, pid_tgid as u32, CALL_PREPARE) {
        t.sql = sql;
        t.n_byte = n_byte;
        t.pp_stmt = pp_stmt;
        t.pz_tail = pz_tail;
        t.start_ns = now_ns();
    }
}

/// `sqlite3_prepare*` return: statement -> text id, or an error completion
/// for text that did not compile (a syntax error, a missing table).
#[inline(always)]
pub fn on_prepare_return(ctx: &RetProbeContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !wanted((pid_tgid >> 32) as u32) {
        return;
    }
    let Some(t) = leave(ctx, pid_tgid as u32, CALL_PREPARE, false) else {
        return;
    };
    let rc: u64 = ctx.ret();
    let ok = rc as u32 as i32 == SQLITE_OK;
    let stmt = if ok {
        read_user_u64(t.pp_stmt)
    } else {
        Some(0)
    };
    let Some(stmt) = stmt else {
        bump(Counter::SqliteReadError);
        return;
    };
    if (ok && stmt == 0) || t.sql == 0 {
        // Only whitespace or comments: no statement, nothing runs; or a
        // NULL text (SQLITE_MISUSE), which names no statement.
        return;
    }
    let tail = read_user_u64(t.pz_tail).unwrap_or(0);
    let limit = text_limit(t.sql, t.n_byte, tail);
    let Some(text_id) = capture_text(DB_SQLITE, t.sql as *const u8, limit) else {
        bump(Counter::SqliteReadError);
        return;
    };
    if !ok {
        let latency = now_ns().saturating_sub(t.start_ns);
        emit_done(DB_SQLITE, text_id, pid_tgid, latency, 0, true);
        stat(SqliteStat::PrepareErrors);
        return;
    }
    remember(pid_tgid, stmt, text_id);
}

/// Maps a statement to its text; an older entry at the same address (a
/// finalize we did not see) is replaced.
#[inline(always)]
fn remember(pid_tgid: u64, stmt: u64, text_id: u64) {
    let key = StmtKey {
        tgid: (pid_tgid >> 32) as u32,
        pad: 0,
        stmt,
    };
    let state = StmtState {
        text_id,
        ..StmtState::default()
    };
    if SQLITE_STMTS.insert(key, state, 0).is_err() {
        bump(Counter::SqliteStmtMapFull);
    } else {
        stat(SqliteStat::Prepared);
    }
}

/// `sqlite3_step(stmt)` entry: the first step starts an execution.
#[inline(always)]
pub fn on_step(ctx: &ProbeContext, stmt: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !wanted((pid_tgid >> 32) as u32) {
        return;
    }
    let tid = pid_tgid as u32;
    let Some(t) = enter(ctx, tid, CALL_STEP) else {
        return;
    };
    let key = StmtKey {
        tgid: (pid_tgid >> 32) as u32,
        pad: 0,
        stmt,
    };
    if stmt == 0 {
        return; // SQLITE_MISUSE: nothing runs.
    }
    let mut slot = SQLITE_STMTS.get_ptr_mut(key);
    if slot.is_none() && recover(ctx, pid_tgid, stmt) {
        slot = SQLITE_STMTS.get_ptr_mut(key);
    }
    let Some(slot) = slot else {
        bump(Counter::SqliteStmtUnknown);
        return; // t.stmt stays 0: nothing to do at the return.
    };
    t.stmt = stmt;
    // SAFETY: a live map value; steps of one statement are serialized by
    // SQLite's connection mutex, so no other program writes it meanwhile.
    let s = unsafe { &mut *slot };
    if s.running == 0 {
        s.running = 1;
        s.start_ns = now_ns();
        s.rows = 0;
        set_active(tid, s.text_id, DB_SQLITE);
    } else if !active_is(tid, s.text_id) {
        // Another statement ran on this thread between two steps of this
        // one (and cleared the mark when it ended).
        set_active(tid, s.text_id, DB_SQLITE);
    }
}

/// Whether `tid` is marked as running `text_id`: a lookup (~50 ns) saves
/// the map update (~200 ns here) on every row of a running execution.
#[inline(always)]
fn active_is(tid: u32, text_id: u64) -> bool {
    // SAFETY: the value is copied out at once.
    unsafe { QUERY_ACTIVE.get(tid) }.is_some_and(|q| q.text_id == text_id)
}

/// A statement stepped but never seen prepared (prepared before qprof
/// attached, its entry evicted, or prepared from UTF-16): its text is read
/// from the `Vdbe`'s saved SQL, at the offset the agent found in this
/// library's `sqlite3_sql` and passed as the attach cookie.
#[inline(always)]
fn recover(ctx: &ProbeContext, pid_tgid: u64, stmt: u64) -> bool {
    // SAFETY: reads this attachment's cookie; no other effect.
    let offset = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    if offset == 0 || offset >= MAX_SQL_FIELD_OFFSET {
        return false;
    }
    let Some(sql) = read_user_u64(stmt.wrapping_add(offset)) else {
        bump(Counter::SqliteReadError);
        return false;
    };
    let Some(text_id) = capture_text(DB_SQLITE, sql as *const u8, 0) else {
        bump(Counter::SqliteReadError);
        return false;
    };
    remember(pid_tgid, stmt, text_id);
    stat(SqliteStat::Recovered);
    true
}

/// `sqlite3_step` return: a row keeps the execution going; `SQLITE_DONE`
/// ends it; anything else ends it as an error.
#[inline(always)]
pub fn on_step_return(ctx: &RetProbeContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !wanted((pid_tgid >> 32) as u32) {
        return;
    }
    let rc = ctx.ret::<u64>() as u32 as i32;
    let Some(t) = leave(ctx, pid_tgid as u32, CALL_STEP, rc == SQLITE_ROW) else {
        return;
    };
    if t.stmt == 0 {
        return;
    }
    let key = StmtKey {
        tgid: (pid_tgid >> 32) as u32,
        pad: 0,
        stmt: t.stmt,
    };
    let Some(slot) = SQLITE_STMTS.get_ptr_mut(key) else {
        bump(Counter::SqliteStmtUnknown); // Evicted while running.
        return;
    };
    // SAFETY: as in `on_step`.
    let s = unsafe { &mut *slot };
    if s.running == 0 {
        return;
    }
    if rc == SQLITE_ROW {
        s.rows += 1;
        return;
    }
    let error = rc != SQLITE_DONE && rc != SQLITE_OK;
    finish(s, pid_tgid, error);
}

/// Ends the running execution of `s`.
#[inline(always)]
fn finish(s: &mut StmtState, pid_tgid: u64, error: bool) {
    let latency = now_ns().saturating_sub(s.start_ns);
    emit_done(DB_SQLITE, s.text_id, pid_tgid, latency, s.rows, error);
    s.running = 0;
    stat(SqliteStat::Executions);
    clear_active(pid_tgid as u32);
}

/// `sqlite3_reset(stmt)` / `sqlite3_finalize(stmt)` entry: an execution
/// still running was stopped early (the caller had the rows it wanted); it
/// ends here, not as an error. Finalize also forgets the statement.
#[inline(always)]
pub fn on_reset(stmt: u64, finalize: bool) {
    if stmt == 0 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !wanted(tgid) {
        return;
    }
    let key = StmtKey { tgid, pad: 0, stmt };
    let Some(slot) = SQLITE_STMTS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: as in `on_step`.
    let s = unsafe { &mut *slot };
    if s.running != 0 {
        finish(s, pid_tgid, false);
    }
    if finalize && SQLITE_STMTS.remove(key).is_ok() {
        stat(SqliteStat::Finalized);
    }
}

/// `sqlite3_exec(db, sql, callback, arg, errmsg)` entry: one execution of
/// the whole text; the prepares and steps it makes are nested, skipped.
#[inline(always)]
pub fn on_exec(ctx: &ProbeContext, sql: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !wanted((pid_tgid >> 32) as u32) {
        return;
    }
    let tid = pid_tgid as u32;
    let Some(t) = enter(ctx, tid, CALL_EXEC) else {
        return;
    };
    match capture_text(DB_SQLITE, sql as *const u8, 0) {
        Some(text_id) => {
            t.text_id = text_id;
            t.has_text = 1;
            set_active(tid, text_id, DB_SQLITE);
        }
        // A NULL text runs nothing (and returns SQLITE_OK): not a loss.
        None if sql != 0 => bump(Counter::SqliteReadError),
        None => {}
    }
    t.start_ns = now_ns();
}

/// `sqlite3_exec` return: its completion, an error unless `SQLITE_OK`.
#[inline(always)]
pub fn on_exec_return(ctx: &RetProbeContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !wanted((pid_tgid >> 32) as u32) {
        return;
    }
    let Some(t) = leave(ctx, pid_tgid as u32, CALL_EXEC, false) else {
        return;
    };
    if t.has_text == 0 {
        return;
    }
    let rc = ctx.ret::<u64>() as u32 as i32;
    let latency = now_ns().saturating_sub(t.start_ns);
    emit_done(
        DB_SQLITE,
        t.text_id,
        pid_tgid,
        latency,
        t.rows,
        rc != SQLITE_OK,
    );
    stat(SqliteStat::Execs);
    clear_active(pid_tgid as u32);
}
