//! Which SQLite calls of a thread to handle: only the outermost one (see
//! `ThreadState`). SQLite calls its own API from inside `sqlite3_exec`,
//! schema loading and DDL; those inner calls belong to the outer call.

use aya_ebpf::{
    macros::map,
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use qprof_common::{
    counters::Counter,
    query_sqlite::{CALL_EXEC, CALL_NONE, SqliteStat, THREADS_CAPACITY, ThreadState},
};

use super::stat;
use crate::counters::bump;

#[map(name = "SQLITE_THREADS")]
static SQLITE_THREADS: LruHashMap<u32, ThreadState> =
    LruHashMap::with_max_entries(THREADS_CAPACITY, 0);

#[inline(always)]
fn entry_sp(ctx: &ProbeContext) -> u64 {
    // SAFETY: `regs` is the program's context (the trapped task's pt_regs).
    unsafe { (*ctx.regs).rsp }
}

#[inline(always)]
fn return_sp(ctx: &RetProbeContext) -> u64 {
    // SAFETY: as above, at the return trampoline.
    unsafe { (*ctx.regs).rsp }
}

/// This thread's state, created on first use.
#[inline(always)]
fn thread_slot(tid: u32) -> Option<*mut ThreadState> {
    if let Some(slot) = SQLITE_THREADS.get_ptr_mut(tid) {
        return Some(slot);
    }
    if SQLITE_THREADS
        .insert(tid, ThreadState::default(), 0)
        .is_err()
    {
        bump(Counter::SqliteThreadMapFull);
        return None;
    }
    SQLITE_THREADS.get_ptr_mut(tid)
}

/// Entry of a traced call with a return probe. Returns the thread's state,
/// reset for this call, when it is the outermost one; `None` when it is
/// nested in another (or there is no room to follow it).
#[inline(always)]
pub fn enter(ctx: &ProbeContext, tid: u32, kind: u32) -> Option<&'static mut ThreadState> {
    let sp = entry_sp(ctx);
    let slot = thread_slot(tid)?;
    // SAFETY: this thread's entry; only this thread writes it and a thread
    // runs one program at a time.
    let t = unsafe { &mut *slot };
    // A deeper stack than the outer call's entry means "called from inside
    // it"; a shallower or equal one means the outer call is over (its
    // return was missed) and this call is the new outer one.
    if t.depth > 0 && sp < t.outer_sp {
        t.depth = t.depth.saturating_add(1);
        stat(SqliteStat::Nested);
        return None;
    }
    *t = ThreadState {
        outer_sp: sp,
        kind,
        depth: 1,
        ..ThreadState::default()
    };
    Some(t)
}

/// Return of a traced call: the outer call's state (copied, the thread is
/// then idle) if this is its return, `None` for nested calls. `row` marks
/// a nested `SQLITE_ROW` step, counted as a row of an enclosing exec when
/// that exec called the step itself.
#[inline(always)]
pub fn leave(ctx: &RetProbeContext, tid: u32, kind: u32, row: bool) -> Option<ThreadState> {
    let slot = SQLITE_THREADS.get_ptr_mut(tid)?;
    // SAFETY: as in `enter`.
    let t = unsafe { &mut *slot };
    if t.depth == 0 {
        return None;
    }
    // After `ret` the stack pointer is the entry's plus the return address.
    if return_sp(ctx) == t.outer_sp.wrapping_add(8) && t.kind == kind {
        let copy = *t;
        t.depth = 0;
        t.outer_sp = 0;
        t.kind = CALL_NONE;
        return Some(copy);
    }
    if row && t.kind == CALL_EXEC && t.depth == 2 {
        t.rows += 1;
    }
    if t.depth > 1 {
        t.depth -= 1;
    }
    None
}
