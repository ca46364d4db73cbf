//! Query tracing ABI shared by the libpq and SQLite probes: query text is
//! sent once per distinct text (by a hash computed in the kernel), and one
//! small completion event per execution.

pub const MAP_EVENTS: &str = "QUERY_EVENTS";
pub const MAP_TEXTS_SEEN: &str = "QUERY_TEXTS_SEEN";
pub const MAP_ACTIVE: &str = "QUERY_ACTIVE";
pub const MAP_CONFIG: &str = "QUERY_CONFIG";
pub const MAP_TARGET_PIDS: &str = "QUERY_TARGET_PIDS";
pub const MAP_SCRATCH: &str = "QUERY_SCRATCH";

/// Bytes of query text captured. Longer statements are truncated (and
/// marked); their fingerprint stays stable because the cut is always here.
pub const TEXT_MAX: usize = 1024;
/// Ring buffer for text and completion events: 8 MiB holds ~100 ms of
/// pgbench at full speed with every text new (simple protocol), and minutes
/// of completions alone. Overflow is counted.
pub const EVENTS_RING_BYTES: u32 = 8 * 1024 * 1024;
/// Texts already sent (LRU: a text evicted is simply sent again).
pub const TEXTS_SEEN_CAPACITY: u32 = 65_536;
/// Threads inside a traced query at once.
pub const ACTIVE_CAPACITY: u32 = 65_536;
pub const TARGET_PIDS_CAPACITY: u32 = 1_024;

pub const DB_POSTGRES: u32 = 1;
pub const DB_SQLITE: u32 = 2;

pub const EVENT_TEXT: u32 = 1;
pub const EVENT_DONE: u32 = 2;
/// A connection that cannot be followed (`query_tls::UnfollowedEvent`).
pub const EVENT_UNFOLLOWED: u32 = 3;

/// First sight of a query text.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TextEvent {
    pub kind: u32,
    pub db: u32,
    pub text_id: u64,
    /// Bytes of `text` that are valid.
    pub len: u32,
    /// Non-zero when the text was longer than `TEXT_MAX`.
    pub truncated: u32,
    pub text: [u8; TEXT_MAX],
}
const _: () = assert!(core::mem::size_of::<TextEvent>() == 24 + TEXT_MAX);

/// One finished execution.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DoneEvent {
    pub kind: u32,
    pub db: u32,
    pub text_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub latency_ns: u64,
    /// Rows returned (`u64::MAX` when unknown).
    pub rows: u64,
    /// Non-zero when the execution failed.
    pub error: u32,
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<DoneEvent>() == 48);

/// The query a thread is executing (for per-query CPU and off-CPU samples).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActiveQuery {
    pub text_id: u64,
    pub db: u32,
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<ActiveQuery>() == 16);

/// The one entry of `QUERY_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct QueryConfig {
    /// Non-zero: only pids in `QUERY_TARGET_PIDS`.
    pub filter_pids: u32,
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<QueryConfig>() == 8);

/// FNV-1a over 8-byte words: cheap enough for BPF (128 rounds for a full
/// text), and stable (it names texts across the kernel boundary).
#[must_use]
pub const fn fnv1a_step(hash: u64, word: u64) -> u64 {
    (hash ^ word).wrapping_mul(0x0100_0000_01b3)
}
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): repr(C) structs of integers and byte arrays with
    // explicit padding and asserted sizes: every bit pattern is valid.
    unsafe impl aya::Pod for super::TextEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DoneEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ActiveQuery {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::QueryConfig {}
}
