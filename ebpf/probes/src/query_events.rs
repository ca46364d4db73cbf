//! Shared by the libpq and SQLite probes: the pid filter, query text
//! capture (sent once per distinct text), completion events, and the
//! "thread is inside query X" map that CPU and off-CPU samples read.

use aya_ebpf::{
    helpers::generated::bpf_probe_read_user_str,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use qprof_common::{
    counters::Counter,
    queries::{
        ACTIVE_CAPACITY, ActiveQuery, DoneEvent, EVENT_DONE, EVENT_TEXT, EVENTS_RING_BYTES,
        FNV_OFFSET, QueryConfig, TARGET_PIDS_CAPACITY, TEXT_MAX, TEXTS_SEEN_CAPACITY, TextEvent,
        fnv1a_step,
    },
};

use crate::counters::bump;

#[map(name = "QUERY_EVENTS")]
static QUERY_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

#[map(name = "QUERY_TEXTS_SEEN")]
static QUERY_TEXTS_SEEN: LruHashMap<u64, u8> = LruHashMap::with_max_entries(TEXTS_SEEN_CAPACITY, 0);

/// LRU, and written in place: a thread keeps its entry (text id 0 when it
/// is outside any query), which costs a lookup per query instead of an
/// insert and a delete; threads that are gone age out.
#[map(name = "QUERY_ACTIVE")]
pub static QUERY_ACTIVE: LruHashMap<u32, ActiveQuery> =
    LruHashMap::with_max_entries(ACTIVE_CAPACITY, 0);

#[map(name = "QUERY_CONFIG")]
static QUERY_CONFIG: Array<QueryConfig> = Array::with_max_entries(1, 0);

#[map(name = "QUERY_TARGET_PIDS")]
static QUERY_TARGET_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(TARGET_PIDS_CAPACITY, 0);

/// Room to read a text into: 1 KiB does not fit the 512-byte BPF stack.
#[map(name = "QUERY_SCRATCH")]
static QUERY_SCRATCH: PerCpuArray<TextEvent> = PerCpuArray::with_max_entries(1, 0);

/// Whether queries of `pid` are traced (`--pid`).
#[inline(always)]
pub fn wanted(pid: u32) -> bool {
    let filter = QUERY_CONFIG.get(0).is_some_and(|c| c.filter_pids != 0);
    // SAFETY: presence check only.
    !filter || unsafe { QUERY_TARGET_PIDS.get(pid) }.is_some()
}

/// Reads the NUL-terminated text at `ptr` (at most `TEXT_MAX` bytes, fewer
/// when `limit` is smaller), returns its id, and sends the text to
/// userspace the first time this id is seen. `None` if unreadable.
#[inline(always)]
pub fn capture_text(db: u32, ptr: *const u8, limit: usize) -> Option<u64> {
    if ptr.is_null() {
        return None;
    }
    let scratch = QUERY_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot; no preemption between programs.
    let ev = unsafe { &mut *scratch };
    let max = if limit > 0 && limit < TEXT_MAX {
        limit
    } else {
        TEXT_MAX
    };
    // SAFETY: the helper copies at most `max` (<= TEXT_MAX) bytes into the
    // scratch text and checks the user address itself.
    let copied =
        unsafe { bpf_probe_read_user_str(ev.text.as_mut_ptr().cast(), max as u32, ptr.cast()) };
    if copied <= 0 {
        return None;
    }
    // `copied` counts the NUL; a full buffer means the text went on.
    let len = (copied as usize).saturating_sub(1).min(TEXT_MAX);
    let truncated = copied as usize >= max && limit == 0;
    let id = hash_text(&ev.text, len);
    // SAFETY: presence check only.
    if unsafe { QUERY_TEXTS_SEEN.get(id) }.is_none() {
        let _ = QUERY_TEXTS_SEEN.insert(id, 1, 0);
        ev.kind = EVENT_TEXT;
        ev.db = db;
        ev.text_id = id;
        ev.len = len as u32;
        ev.truncated = u32::from(truncated);
        if QUERY_EVENTS.output::<TextEvent>(&*ev, 0).is_err() {
            let _ = QUERY_TEXTS_SEEN.remove(id);
            bump(Counter::QueryEventRingFull);
        }
    }
    Some(id)
}

/// FNV-1a over the first `len` bytes, eight at a time, plus the length.
#[inline(always)]
fn hash_text(text: &[u8; TEXT_MAX], len: usize) -> u64 {
    let mut hash = fnv1a_step(FNV_OFFSET, len as u64);
    let words = len / 8;
    for i in 0..TEXT_MAX / 8 {
        if i >= words {
            break;
        }
        let at = core::hint::black_box(i * 8);
        if let Some(chunk) = text.get(at..at + 8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            hash = fnv1a_step(hash, u64::from_le_bytes(w));
        }
    }
    let rest = len % 8;
    if rest > 0 {
        let mut w = [0u8; 8];
        for (j, byte) in w.iter_mut().enumerate() {
            if j < rest
                && let Some(b) = text.get(core::hint::black_box(words * 8 + j))
            {
                *byte = *b;
            }
        }
        hash = fnv1a_step(hash, u64::from_le_bytes(w));
    }
    hash
}

/// One finished execution.
#[inline(always)]
pub fn emit_done(db: u32, text_id: u64, pid_tgid: u64, latency_ns: u64, rows: u64, error: bool) {
    let ev = DoneEvent {
        kind: EVENT_DONE,
        db,
        text_id,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        latency_ns,
        rows,
        error: u32::from(error),
        pad: 0,
    };
    if QUERY_EVENTS.output::<DoneEvent>(ev, 0).is_err() {
        bump(Counter::QueryEventRingFull);
    }
}

/// A connection that cannot be followed (once per connection).
#[inline(always)]
pub fn emit_unfollowed(ev: qprof_common::query_tls::UnfollowedEvent) {
    if QUERY_EVENTS.output(ev, 0).is_err() {
        bump(Counter::QueryEventRingFull);
    }
}

/// Marks `tid` as inside query `text_id` (read by CPU and off-CPU samples).
#[inline(always)]
pub fn set_active(tid: u32, text_id: u64, db: u32) {
    if let Some(slot) = QUERY_ACTIVE.get_ptr_mut(tid) {
        // SAFETY: this thread's entry; only this thread's probes write it.
        unsafe {
            *slot = ActiveQuery {
                text_id,
                db,
                pad: 0,
            }
        };
    } else {
        let _ = QUERY_ACTIVE.insert(
            tid,
            ActiveQuery {
                text_id,
                db,
                pad: 0,
            },
            0,
        );
    }
}

#[inline(always)]
pub fn clear_active(tid: u32) {
    if let Some(slot) = QUERY_ACTIVE.get_ptr_mut(tid) {
        // SAFETY: as above.
        unsafe { (*slot).text_id = 0 };
    }
}
