//! TLS plaintext for the `PostgreSQL` wire reader: uprobes on OpenSSL's read
//! path hand the decrypted bytes to the same parser the `recvfrom`
//! tracepoint feeds on plaintext connections. The socket is learned from
//! the `recvfrom` that OpenSSL makes inside the read (libpq's BIO calls
//! `recv`), and remembered per `SSL*` for reads served from OpenSSL's own
//! buffer without a syscall.

pub const MAP_TLS_READS: &str = "PQ_TLS_READS";
pub const MAP_TLS_FDS: &str = "PQ_TLS_FDS";

/// Threads inside an OpenSSL read at once: one entry per thread, removed at
/// the return; as many as the per-thread libpq map.
pub const TLS_READS_CAPACITY: u32 = 16_384;
/// `SSL*` -> socket, one per TLS connection (LRU: closed connections age
/// out); as many as the followed connections (`FDS_CAPACITY`).
pub const TLS_FDS_CAPACITY: u32 = 16_384;

/// `fd` of a [`TlsRead`] before the read made a syscall.
pub const FD_UNKNOWN: u32 = u32::MAX;

/// An OpenSSL read in progress (saved at entry, used at return).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsRead {
    pub ssl: u64,
    pub buf: u64,
    /// `size_t *readbytes` of `SSL_read_ex` and the internal read; 0 for
    /// `SSL_read`, whose return value is the byte count.
    pub readbytes: u64,
    /// Socket seen in a `recvfrom` inside this read, or `FD_UNKNOWN`.
    pub fd: u32,
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<TlsRead>() == 32);

/// Key of `PQ_TLS_FDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TlsKey {
    pub ssl: u64,
    pub pid: u32,
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<TlsKey>() == 16);

/// Why a `PostgreSQL` connection could not be followed (the kernel's view;
/// the agent refines it from the process's mappings).
pub const UNFOLLOWED_TLS: u32 = 1;

/// `PgFd::flags`: TLS records arrived on the socket outside any probed
/// TLS read: the connection cannot be followed.
pub const FD_FLAG_TLS_UNFOLLOWED: u32 = 1;

/// Ring record: a connection that cannot be followed, once per connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnfollowedEvent {
    pub kind: u32,
    pub reason: u32,
    pub pid: u32,
    pub fd: u32,
}
const _: () = assert!(core::mem::size_of::<UnfollowedEvent>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): repr(C) integer structs, explicit padding, sizes asserted.
    unsafe impl aya::Pod for super::UnfollowedEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TlsKey {}
}
