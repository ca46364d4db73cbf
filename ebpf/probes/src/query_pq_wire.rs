//! The PostgreSQL v3 wire protocol as the client receives it: messages of
//! a type byte, a big-endian length (counting itself) and a body. Only the
//! headers are read; bodies are skipped, also across receives.

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_probe_read_user, generated::bpf_loop};
use qprof_common::{
    counters::Counter,
    query_pq::{KIND_EXTENDED, MAX_MESSAGES_PER_RECV, PgFd},
};

use crate::{
    counters::bump,
    query_pq::{complete_head, head_kind, head_mut},
};

/// Messages larger than this are treated as a lost position (1 GiB is the
/// server's own limit).
const MAX_MESSAGE: u32 = 1 << 30;

/// Loop state handed to the `bpf_loop` callback.
#[repr(C)]
struct Walk {
    conn: *mut PgFd,
    buf: *const u8,
    n: u64,
    off: u64,
    pid_tgid: u64,
    /// Set when the walk must resynchronize (bad length, split header).
    lost: u64,
}

/// Walks the messages of one receive. The walk runs under `bpf_loop` so the
/// verifier checks one step, not every unrolled iteration (a bounded loop
/// with this much branching exceeded its budget).
#[inline(always)]
pub fn parse(conn: &mut PgFd, buf: *const u8, n: u64, pid_tgid: u64) {
    if conn.lost != 0 {
        resync_at_end(conn, buf, n, pid_tgid);
        return;
    }
    let mut off: u64 = 0;
    if conn.skip > 0 {
        let take = u64::from(conn.skip).min(n);
        conn.skip -= take as u32;
        off = take;
    }
    let mut walk = Walk {
        conn: core::ptr::from_mut(conn),
        buf,
        n,
        off,
        pid_tgid,
        lost: 0,
    };
    // SAFETY: `step` is a BPF subprogram with the callback signature the
    // helper expects; `walk` lives on this stack for the whole call.
    unsafe {
        bpf_loop(
            MAX_MESSAGES_PER_RECV as u32,
            step as *mut c_void,
            core::ptr::from_mut(&mut walk).cast(),
            0,
        );
    }
    if walk.lost != 0 || (walk.off < n && conn.skip == 0) {
        lose(conn);
        resync_at_end(conn, buf, n, pid_tgid);
    }
}

/// One message: returns 1 to stop the loop, 0 to go on.
#[inline(never)]
extern "C" fn step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` that `parse` passed to bpf_loop.
    let walk = unsafe { &mut *ctx.cast::<Walk>() };
    // SAFETY: the connection's map value, valid for the program's run.
    let conn = unsafe { &mut *walk.conn };
    if walk.off >= walk.n {
        return 1;
    }
    if walk.n - walk.off < 5 {
        // A header split across receives: rare (libpq reads 16 KiB at a
        // time); resynchronize instead of carrying partial bytes.
        walk.lost = 1;
        return 1;
    }
    // SAFETY: user memory through the checked helper.
    let Ok(raw) =
        (unsafe { bpf_probe_read_user(walk.buf.add(walk.off as usize).cast::<[u8; 5]>()) })
    else {
        walk.lost = 1;
        return 1;
    };
    walk.off += 5;
    let len = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]);
    if !(4..=MAX_MESSAGE).contains(&len) {
        walk.lost = 1;
        return 1;
    }
    handle(conn, raw[0], walk.pid_tgid);
    let body = u64::from(len - 4);
    if walk.off + body <= walk.n {
        walk.off += body;
        0
    } else {
        conn.skip = (body - (walk.n - walk.off)) as u32;
        walk.off = walk.n;
        1
    }
}

#[inline(always)]
fn handle(conn: &mut PgFd, kind: u8, pid_tgid: u64) {
    match kind {
        b'D' => {
            if let Some(q) = head_mut(conn) {
                q.rows = q.rows.saturating_add(1);
            }
        }
        b'E' => {
            if let Some(q) = head_mut(conn) {
                q.error = 1;
            }
            if head_kind(conn) == KIND_EXTENDED {
                complete_head(conn, pid_tgid, true);
            }
        }
        b'C' | b'I' | b's' => {
            if head_kind(conn) == KIND_EXTENDED {
                complete_head(conn, pid_tgid, true);
            }
        }
        b'Z' => {
            // Extended queries still queued at a Sync were skipped by the
            // server after an error in the same pipeline: failed.
            if head_kind(conn) == KIND_EXTENDED {
                if let Some(q) = head_mut(conn) {
                    q.error = 1;
                }
                complete_head(conn, pid_tgid, true);
            }
            if head_kind(conn) != 0 {
                complete_head(conn, pid_tgid, true);
            }
        }
        _ => {}
    }
}

#[inline(always)]
fn lose(conn: &mut PgFd) {
    bump(Counter::QueryParserResync);
    conn.lost = 1;
    conn.skip = 0;
    conn.hdr_len = 0;
}

/// While lost: a receive that ends with a complete ReadyForQuery message
/// ('Z', length 5, status) ends everything in flight and the parser is
/// back at a message boundary.
#[inline(always)]
fn resync_at_end(conn: &mut PgFd, buf: *const u8, n: u64, pid_tgid: u64) {
    if n < 6 {
        return;
    }
    // SAFETY: user memory through the checked helper.
    let Ok(tail) = (unsafe { bpf_probe_read_user(buf.add((n - 6) as usize).cast::<[u8; 6]>()) })
    else {
        return;
    };
    if tail[0] == b'Z' && tail[1..5] == [0, 0, 0, 5] {
        for _ in 0..16 {
            if head_kind(conn) == 0 {
                break;
            }
            complete_head(conn, pid_tgid, false);
        }
        conn.lost = 0;
        conn.skip = 0;
        conn.hdr_len = 0;
    }
}
