//! libpq tracing: one uprobe per query (on the `PQsend*` entry points, which
//! `PQexec*`/`PQprepare` call too); completion, rows and errors come from
//! the `PostgreSQL` wire protocol as the client receives it, read at the
//! `recvfrom` syscall tracepoint, which costs no trap.

pub const MAP_THREAD_PENDING: &str = "PQ_THREAD_PENDING";
pub const MAP_FDS: &str = "PQ_FDS";
pub const MAP_RECV_ARGS: &str = "PQ_RECV_ARGS";
pub const MAP_STMT_NAMES: &str = "PQ_STMT_NAMES";
pub const MAP_CONFIG: &str = "PQ_CONFIG";

/// Queries sent but not yet flushed, per thread (pipeline mode batches).
pub const THREAD_PENDING_SLOTS: usize = 8;
/// Queries in flight per connection (pipeline depth we follow).
pub const FD_QUEUE_SLOTS: usize = 16;
/// Threads with unflushed queries.
pub const THREAD_PENDING_CAPACITY: u32 = 16_384;
/// Client connections followed (LRU: closed connections age out).
pub const FDS_CAPACITY: u32 = 16_384;
/// Prepared statement names remembered: (pid, conn, name) -> text id.
pub const STMT_NAMES_CAPACITY: u32 = 65_536;
/// Messages parsed per `recvfrom`; past it the parser resynchronizes at
/// the next ReadyForQuery (rows of that query are then unknown).
pub const MAX_MESSAGES_PER_RECV: usize = 64;

/// How the end of a query shows on the wire.
pub const KIND_SIMPLE: u32 = 1; // Query: ends at ReadyForQuery
pub const KIND_EXTENDED: u32 = 2; // Parse/Bind/Execute: ends at CommandComplete/ErrorResponse
pub const KIND_PREPARE: u32 = 3; // Parse+Sync: ends at ReadyForQuery; not an execution

/// A query that has been sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingQuery {
    pub start_ns: u64,
    pub text_id: u64,
    pub kind: u32,
    pub tid: u32,
    pub rows: u32,
    pub error: u32,
}
const _: () = assert!(core::mem::size_of::<PendingQuery>() == 32);

/// Per thread: queries sent through libpq but not yet seen leaving on a
/// socket.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ThreadPending {
    pub count: u32,
    pub pad: u32,
    pub items: [PendingQuery; THREAD_PENDING_SLOTS],
}
const _: () = assert!(core::mem::size_of::<ThreadPending>() == 8 + 32 * THREAD_PENDING_SLOTS);

/// Key of `PQ_FDS`: one client socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FdKey {
    pub pid: u32,
    pub fd: u32,
}
const _: () = assert!(core::mem::size_of::<FdKey>() == 8);

/// Per connection: the in-flight queue and the wire parser's position.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PgFd {
    pub queue: [PendingQuery; FD_QUEUE_SLOTS],
    /// Monotonic; slot = counter % `FD_QUEUE_SLOTS`.
    pub head: u32,
    pub tail: u32,
    /// Body bytes of the current message still to skip.
    pub skip: u32,
    /// Header bytes (type + length) received so far, when a header was
    /// split across two receives.
    pub hdr_len: u32,
    pub hdr: [u8; 8],
    /// Non-zero after the parser lost its place.
    pub lost: u32,
    /// `query_tls::FD_FLAG_*`.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<PgFd>() == 32 * FD_QUEUE_SLOTS + 32);

/// Arguments of a `recvfrom` in progress.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RecvArgs {
    pub buf: u64,
    pub fd: u32,
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<RecvArgs>() == 16);

/// Key of `PQ_STMT_NAMES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StmtKey {
    pub conn: u64,
    pub name_hash: u64,
    pub pid: u32,
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<StmtKey>() == 24);

/// Tracepoint record offsets (from tracefs format files).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PqConfig {
    pub off_sendto_fd: u32,
    pub off_recvfrom_fd: u32,
    pub off_recvfrom_buf: u32,
    pub off_exit_ret: u32,
}
const _: () = assert!(core::mem::size_of::<PqConfig>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): repr(C) integer structs, explicit padding, sizes asserted.
    unsafe impl aya::Pod for super::PqConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FdKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PgFd {}
}
