//! libpq: a query starts at a `PQsend*` entry (one uprobe: the only trap per
//! query), joins its connection's queue at the thread's next `sendto`, and
//! ends when the wire protocol says so in what the client receives:
//! ReadyForQuery for simple queries, CommandComplete/ErrorResponse for
//! extended ones. DataRow messages count rows; ErrorResponse marks errors.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{ProbeContext, TracePointContext},
};
use qprof_common::{
    counters::Counter,
    queries::EVENT_UNFOLLOWED,
    queries::{DB_POSTGRES, FNV_OFFSET, fnv1a_step},
    query_pq::{
        FD_QUEUE_SLOTS, FDS_CAPACITY, FdKey, KIND_EXTENDED, KIND_PREPARE, KIND_SIMPLE,
        PendingQuery, PgFd, PqConfig, RecvArgs, STMT_NAMES_CAPACITY, StmtKey,
        THREAD_PENDING_CAPACITY, THREAD_PENDING_SLOTS, ThreadPending,
    },
    query_tls::{FD_FLAG_TLS_UNFOLLOWED, UNFOLLOWED_TLS, UnfollowedEvent},
};

use crate::{
    counters::bump,
    query_events::{capture_text, clear_active, emit_done, set_active, wanted},
};

#[map(name = "PQ_THREAD_PENDING")]
static PQ_THREAD_PENDING: HashMap<u32, ThreadPending> =
    HashMap::with_max_entries(THREAD_PENDING_CAPACITY, 0);

#[map(name = "PQ_FDS")]
pub static PQ_FDS: LruHashMap<FdKey, PgFd> = LruHashMap::with_max_entries(FDS_CAPACITY, 0);

#[map(name = "PQ_RECV_ARGS")]
static PQ_RECV_ARGS: HashMap<u32, RecvArgs> = HashMap::with_max_entries(THREAD_PENDING_CAPACITY, 0);

#[map(name = "PQ_STMT_NAMES")]
static PQ_STMT_NAMES: LruHashMap<StmtKey, u64> =
    LruHashMap::with_max_entries(STMT_NAMES_CAPACITY, 0);

#[map(name = "PQ_CONFIG")]
static PQ_CONFIG: Array<PqConfig> = Array::with_max_entries(1, 0);

/// Zeroed values to insert from (too large for the BPF stack).
#[map(name = "PQ_ZERO_FD")]
static PQ_ZERO_FD: PerCpuArray<PgFd> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "PQ_ZERO_THREAD")]
static PQ_ZERO_THREAD: PerCpuArray<ThreadPending> = PerCpuArray::with_max_entries(1, 0);

const NO_ROWS: u64 = u64::MAX;

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: no arguments, cannot fail.
    unsafe { bpf_ktime_get_ns() }
}

/// `PQsendQuery(conn, query)` (and `PQexec`, which calls it).
#[inline(always)]
pub fn on_send_query(ctx: &ProbeContext) {
    let query: *const u8 = ctx.arg(1).unwrap_or(core::ptr::null());
    start(KIND_SIMPLE, capture_text(DB_POSTGRES, query, 0));
}

/// `PQsendQueryParams(conn, command, ...)` (and `PQexecParams`).
#[inline(always)]
pub fn on_send_query_params(ctx: &ProbeContext) {
    let command: *const u8 = ctx.arg(1).unwrap_or(core::ptr::null());
    start(KIND_EXTENDED, capture_text(DB_POSTGRES, command, 0));
}

/// `PQsendPrepare(conn, name, query, ...)` (and `PQprepare`): remembers
/// name -> text so that executions report the SQL, not the name.
#[inline(always)]
pub fn on_send_prepare(ctx: &ProbeContext) {
    let conn: u64 = ctx.arg(0).unwrap_or(0);
    let name: *const u8 = ctx.arg(1).unwrap_or(core::ptr::null());
    let query: *const u8 = ctx.arg(2).unwrap_or(core::ptr::null());
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !wanted(pid) {
        return;
    }
    let text = capture_text(DB_POSTGRES, query, 0);
    if let Some(id) = text {
        let key = StmtKey {
            conn,
            name_hash: hash_name(name),
            pid,
            pad: 0,
        };
        let _ = PQ_STMT_NAMES.insert(&key, id, 0);
    }
    start(KIND_PREPARE, text);
}

/// `PQsendQueryPrepared(conn, name, ...)` (and `PQexecPrepared`).
#[inline(always)]
pub fn on_send_query_prepared(ctx: &ProbeContext) {
    let conn: u64 = ctx.arg(0).unwrap_or(0);
    let name: *const u8 = ctx.arg(1).unwrap_or(core::ptr::null());
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let key = StmtKey {
        conn,
        name_hash: hash_name(name),
        pid,
        pad: 0,
    };
    // SAFETY: value copied out at once.
    let text = unsafe { PQ_STMT_NAMES.get(&key) }.copied();
    // A statement prepared before the capture started has no known text:
    // id 0, reported as such rather than dropped.
    start(KIND_EXTENDED, Some(text.unwrap_or(0)));
}

/// Hash of a prepared statement name (at most 64 bytes; "" is the unnamed
/// statement, a valid name).
#[inline(always)]
fn hash_name(name: *const u8) -> u64 {
    let mut hash = FNV_OFFSET;
    if name.is_null() {
        return hash;
    }
    for i in 0..8usize {
        // SAFETY: reads user memory through the checked helper.
        let word: u64 = unsafe { bpf_probe_read_user(name.add(i * 8).cast::<u64>()) }.unwrap_or(0);
        hash = fnv1a_step(hash, word);
        // Stop after the word holding the NUL (bytes after it are noise).
        if has_zero_byte(word) {
            let mask = zero_byte_mask(word);
            return fnv1a_step(hash, mask);
        }
    }
    hash
}

#[inline(always)]
fn has_zero_byte(w: u64) -> bool {
    (w.wrapping_sub(0x0101_0101_0101_0101) & !w & 0x8080_8080_8080_8080) != 0
}

/// The word's bytes up to its first NUL (later bytes zeroed), so the hash
/// ignores garbage after the terminator.
#[inline(always)]
fn zero_byte_mask(w: u64) -> u64 {
    let bytes = w.to_le_bytes();
    let mut out = [0u8; 8];
    for j in 0..8 {
        if bytes[j] == 0 {
            break;
        }
        out[j] = bytes[j];
    }
    u64::from_le_bytes(out)
}

/// Records a sent-but-not-flushed query for this thread.
#[inline(always)]
fn start(kind: u32, text: Option<u64>) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let Some(text_id) = text else { return };
    if !wanted(pid) {
        return;
    }
    let Some(pending) = thread_pending(tid) else {
        return;
    };
    // SAFETY: this thread's entry; only this thread writes it.
    let pending = unsafe { &mut *pending };
    let n = pending.count as usize;
    let Some(slot) = pending.items.get_mut(core::hint::black_box(n)) else {
        bump(Counter::QueryQueueFull);
        return;
    };
    *slot = PendingQuery {
        start_ns: now_ns(),
        text_id,
        kind,
        tid,
        rows: 0,
        error: 0,
    };
    pending.count = (n + 1).min(THREAD_PENDING_SLOTS) as u32;
    if kind != KIND_PREPARE {
        set_active(tid, text_id, DB_POSTGRES);
    }
}

#[inline(always)]
fn thread_pending(tid: u32) -> Option<*mut ThreadPending> {
    if let Some(p) = PQ_THREAD_PENDING.get_ptr_mut(tid) {
        return Some(p);
    }
    // SAFETY: a zeroed per-CPU value of the right type, never written.
    let zero = unsafe { &*PQ_ZERO_THREAD.get_ptr(0)? };
    if PQ_THREAD_PENDING.insert(tid, zero, 0).is_err() {
        bump(Counter::QueryMapFull);
    }
    PQ_THREAD_PENDING.get_ptr_mut(tid)
}

/// `syscalls:sys_enter_sendto`: a thread with unflushed queries is sending
/// them on `fd`: move them to that connection's queue.
#[inline(always)]
pub fn on_sendto(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let Some(pending) = PQ_THREAD_PENDING.get_ptr_mut(tid) else {
        return;
    };
    // SAFETY: this thread's entry.
    let pending = unsafe { &mut *pending };
    if pending.count == 0 {
        return;
    }
    let Some(config) = PQ_CONFIG.get(0) else {
        return;
    };
    // SAFETY: reads the record at a format-file offset via the checked helper.
    let fd: u64 = unsafe { ctx.read_at(config.off_sendto_fd as usize) }.unwrap_or(u64::MAX);
    let key = FdKey {
        pid: (pid_tgid >> 32) as u32,
        fd: fd as u32,
    };
    let Some(conn) = fd_state(&key) else {
        pending.count = 0;
        return;
    };
    // SAFETY: the connection's entry; sends and receives of one socket are
    // serialized by libpq in practice, and a race only misplaces a query.
    let conn = unsafe { &mut *conn };
    if conn.flags & FD_FLAG_TLS_UNFOLLOWED != 0 {
        for _ in 0..pending.count.min(THREAD_PENDING_SLOTS as u32) {
            bump(Counter::QueryTlsDropped);
        }
        pending.count = 0;
        return;
    }
    for i in 0..THREAD_PENDING_SLOTS {
        if i >= pending.count as usize {
            break;
        }
        if conn.tail.wrapping_sub(conn.head) as usize >= FD_QUEUE_SLOTS {
            bump(Counter::QueryQueueFull);
            break;
        }
        let Some(item) = pending.items.get(core::hint::black_box(i)) else {
            break;
        };
        let slot = core::hint::black_box(conn.tail as usize % FD_QUEUE_SLOTS);
        if let Some(dst) = conn.queue.get_mut(slot) {
            *dst = *item;
            conn.tail = conn.tail.wrapping_add(1);
        }
    }
    pending.count = 0;
}

#[inline(always)]
fn fd_state(key: &FdKey) -> Option<*mut PgFd> {
    if let Some(p) = PQ_FDS.get_ptr_mut(key) {
        return Some(p);
    }
    // SAFETY: a zeroed per-CPU value of the right type, never written.
    let zero = unsafe { &*PQ_ZERO_FD.get_ptr(0)? };
    if PQ_FDS.insert(key, zero, 0).is_err() {
        bump(Counter::QueryMapFull);
    }
    PQ_FDS.get_ptr_mut(key)
}

/// `syscalls:sys_enter_recvfrom`: remember the buffer of a receive on a
/// followed connection.
#[inline(always)]
pub fn on_recvfrom_enter(ctx: &TracePointContext) {
    let Some(config) = PQ_CONFIG.get(0) else {
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: format-file offsets, checked reads.
    let fd: u64 = unsafe { ctx.read_at(config.off_recvfrom_fd as usize) }.unwrap_or(u64::MAX);
    // Ciphertext read by OpenSSL: its plaintext is parsed at the read's
    // return instead.
    if crate::query_tls::inside_read(pid_tgid as u32, fd as u32) {
        return;
    }
    let key = FdKey {
        pid: (pid_tgid >> 32) as u32,
        fd: fd as u32,
    };
    // SAFETY: presence check only.
    if unsafe { PQ_FDS.get(&key) }.is_none() {
        return;
    }
    // SAFETY: as above.
    let buf: u64 = unsafe { ctx.read_at(config.off_recvfrom_buf as usize) }.unwrap_or(0);
    let _ = PQ_RECV_ARGS.insert(
        pid_tgid as u32,
        RecvArgs {
            buf,
            fd: fd as u32,
            pad: 0,
        },
        0,
    );
}

/// `syscalls:sys_exit_recvfrom`: parse what arrived.
#[inline(always)]
pub fn on_recvfrom_exit(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: copied out at once.
    let Some(args) = (unsafe { PQ_RECV_ARGS.get(tid) }).copied() else {
        return;
    };
    let _ = PQ_RECV_ARGS.remove(tid);
    let Some(config) = PQ_CONFIG.get(0) else {
        return;
    };
    // SAFETY: format-file offset, checked read.
    let ret: i64 = unsafe { ctx.read_at(config.off_exit_ret as usize) }.unwrap_or(-1);
    if ret <= 0 {
        return;
    }
    let key = FdKey {
        pid: (pid_tgid >> 32) as u32,
        fd: args.fd,
    };
    let Some(conn) = PQ_FDS.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: the connection's entry (see on_sendto).
    let conn = unsafe { &mut *conn };
    let buf = args.buf as *const u8;
    if conn.flags & FD_FLAG_TLS_UNFOLLOWED != 0 {
        return;
    }
    if conn.skip == 0 && conn.lost == 0 && crate::query_tls::is_tls_record(buf) {
        give_up_tls(conn, key);
        return;
    }
    crate::query_pq_wire::parse(conn, buf, ret as u64, pid_tgid);
}

/// A connection encrypted by a TLS library qprof does not probe: its
/// queries in flight are dropped (counted), later ones are not queued,
/// and the agent is told once, to name the reason.
#[inline(always)]
fn give_up_tls(conn: &mut PgFd, key: FdKey) {
    conn.flags |= FD_FLAG_TLS_UNFOLLOWED;
    bump(Counter::QueryTlsUnfollowed);
    for _ in 0..FD_QUEUE_SLOTS {
        if conn.head == conn.tail {
            break;
        }
        if let Some(q) = conn
            .queue
            .get(core::hint::black_box(conn.head as usize % FD_QUEUE_SLOTS))
        {
            clear_active(q.tid);
        }
        conn.head = conn.head.wrapping_add(1);
        bump(Counter::QueryTlsDropped);
    }
    crate::query_events::emit_unfollowed(UnfollowedEvent {
        kind: EVENT_UNFOLLOWED,
        reason: UNFOLLOWED_TLS,
        pid: key.pid,
        fd: key.fd,
    });
}

/// Completes the query at the head of the queue.
#[inline(always)]
pub fn complete_head(conn: &mut PgFd, pid_tgid: u64, rows_known: bool) {
    if conn.head == conn.tail {
        return;
    }
    let slot = core::hint::black_box(conn.head as usize % FD_QUEUE_SLOTS);
    conn.head = conn.head.wrapping_add(1);
    let Some(q) = conn.queue.get(slot) else {
        return;
    };
    clear_active(q.tid);
    if q.kind == KIND_PREPARE {
        return;
    }
    let latency = now_ns().saturating_sub(q.start_ns);
    let rows = if rows_known {
        u64::from(q.rows)
    } else {
        NO_ROWS
    };
    emit_done(
        DB_POSTGRES,
        q.text_id,
        (pid_tgid & !0xffff_ffff) | u64::from(q.tid),
        latency,
        rows,
        q.error != 0,
    );
}

/// Kind of the query at the head, 0 when none is in flight.
#[inline(always)]
pub fn head_kind(conn: &PgFd) -> u32 {
    if conn.head == conn.tail {
        return 0;
    }
    conn.queue
        .get(core::hint::black_box(conn.head as usize % FD_QUEUE_SLOTS))
        .map_or(0, |q| q.kind)
}

/// Marks the head query (rows or error).
#[inline(always)]
pub fn head_mut(conn: &mut PgFd) -> Option<&mut PendingQuery> {
    if conn.head == conn.tail {
        return None;
    }
    conn.queue
        .get_mut(core::hint::black_box(conn.head as usize % FD_QUEUE_SLOTS))
}
