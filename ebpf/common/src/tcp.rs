//! TCP: the ABI of the connection tracker (`sock:inet_sock_set_state`) and
//! of the per-endpoint aggregates fed by `tcp_probe` (a BTF tracepoint),
//! `tcp:tcp_retransmit_skb`, `tcp:tcp_send_reset` and `tcp:tcp_receive_reset`.
//!
//! Everything is aggregated in the kernel per *endpoint row*: (owning
//! process, direction, local address, remote address) with the ephemeral
//! port folded to 0, so that N connections from one client to one server
//! are one row, not N. Userspace reads summaries, once per window.
//!
//! Windows: the per-row counters and histogram cells exist twice
//! (`TCP_STATS`/`TCP_STATS_1`, `TCP_HIST`/`TCP_HIST_1`), and
//! `TcpConfig::generation` says which pair the programs write. To close a
//! window the agent flips the generation, waits for an RCU grace period
//! (every program that could have read the old value has returned), then
//! reads and empties the old pair with no program writing it: no increment
//! is lost or counted twice. Per-connection state (`TCP_SOCKS`) persists;
//! what a live connection accumulated (bytes, batched RTT samples) is moved
//! to its row of the current generation at its first segment after a flip
//! (so it appears in the next window), or at close.

/// Map names (the BPF side declares maps with these names; the agent looks
/// them up by the same constants).
pub const MAP_CONFIG: &str = "TCP_CONFIG";
pub const MAP_TARGET_PIDS: &str = "TCP_TARGET_PIDS";
pub const MAP_SOCKS: &str = "TCP_SOCKS";
pub const MAP_IGNORED: &str = "TCP_IGNORED";
pub const MAP_SEED: &str = "TCP_SEED";
pub const MAP_LISTENERS: &str = "TCP_LISTENERS";
pub const MAP_STATS: &str = "TCP_STATS";
pub const MAP_HIST: &str = "TCP_HIST";
/// The second generation of `TCP_STATS` and `TCP_HIST` (see the module doc).
pub const MAP_STATS_1: &str = "TCP_STATS_1";
pub const MAP_HIST_1: &str = "TCP_HIST_1";

/// Sockets tracked at once (live connections owned by traced processes).
/// A busy database host holds a few thousand; 65,536 is twice the default
/// ephemeral port range of one source address (28,232 ports). Each entry is
/// ~215 bytes with the kernel's overhead: ~14 MiB, preallocated so that the
/// per-packet lookup never allocates. Entries leave on `TCP_CLOSE`; a full
/// map is counted (`tcp_sock_map_full`).
pub const SOCKS_CAPACITY: u32 = 65_536;
/// Sockets of untraced processes already looked at (only with `--pid`), so
/// that their packets cost one lookup. LRU: forgetting one only costs a
/// second look, so it never needs to refuse an entry.
pub const IGNORED_CAPACITY: u32 = 16_384;
/// Connections that existed before the capture, found in `/proc/*/net/tcp*`
/// by the agent, keyed by 4-tuple so the kernel can adopt them (with their
/// owner) on their first packet. Sized like `SOCKS_CAPACITY / 4`: hosts with
/// more pre-existing connections lose the owner of the rest (counted by the
/// agent as `tcp_seed_full`), not their data.
pub const SEED_CAPACITY: u32 = 16_384;
/// Listening ports and their owner, so accepted connections (established in
/// softirq, where the current task is arbitrary) are attributed to the
/// process that listens. LRU: hosts rarely listen on more than a few hundred
/// ports, and losing an old one only loses attribution.
pub const LISTENERS_CAPACITY: u32 = 4_096;
/// Endpoint rows, per generation. Per-CPU and allocated on use
/// (`BPF_F_NO_PREALLOC`), since the value is 112 bytes per CPU: 16,384 rows
/// are 1.75 MiB per CPU when full; the inactive generation is emptied at
/// each window, so only one is ever full. A full map is counted
/// (`tcp_stats_map_full`).
pub const STATS_CAPACITY: u32 = 16_384;
/// Histogram cells: (row, kind, bucket), per generation. Sparse because a connection's
/// smoothed RTT stays in a handful of buckets; 8 cells per row on average.
/// A full map is counted (`tcp_hist_map_full`).
pub const HIST_CAPACITY: u32 = 131_072;
/// Pids given with `--pid`.
pub const TARGET_PIDS_CAPACITY: u32 = 1_024;

/// Address families (`linux/socket.h`).
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
/// `IPPROTO_TCP`: `inet_sock_set_state` also fires for SCTP and MPTCP.
pub const IPPROTO_TCP: u16 = 6;

/// TCP states (`include/net/tcp_states.h`).
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_SENT: i32 = 2;
pub const TCP_SYN_RECV: i32 = 3;
pub const TCP_FIN_WAIT2: i32 = 5;
pub const TCP_TIME_WAIT: i32 = 6;
pub const TCP_CLOSE: i32 = 7;
pub const TCP_LAST_ACK: i32 = 9;
pub const TCP_LISTEN: i32 = 10;
pub const TCP_CLOSING: i32 = 11;

/// Who opened the connection.
pub const DIR_UNKNOWN: u8 = 0;
/// We connected (local port is ephemeral, folded to 0).
pub const DIR_OUTBOUND: u8 = 1;
/// We accepted (remote port is ephemeral, folded to 0).
pub const DIR_INBOUND: u8 = 2;

/// Histogram kinds (`HistKey::kind`) and their units.
pub const HIST_CONNECT_NS: u32 = 0;
pub const HIST_RTT_US: u32 = 1;
pub const HIST_LIFETIME_NS: u32 = 2;

/// `SockInfo::flags` bits.
pub const SOCK_ESTABLISHED: u16 = 1;
/// At least one `tcp_probe` was seen: `last_snd_nxt` and the byte counts
/// are meaningful.
pub const SOCK_PROBED: u16 = 2;
/// Found already open (seeded or adopted): its lifetime is unknown.
pub const SOCK_ADOPTED: u16 = 4;
/// `acked_base`/`received_base` are valid (the `tcp_sock` offsets are known).
pub const SOCK_BASES: u16 = 8;
/// `received_last` was read at least once.
pub const SOCK_RECEIVED: u16 = 16;

/// Offset meaning "this tracepoint has no such field".
pub const NO_FIELD: u16 = u16::MAX;

/// One endpoint row. Addresses are IPv4 in the first 4 bytes (rest zero)
/// for `AF_INET`, 16 bytes for `AF_INET6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Owning process (tgid); 0 when unknown (opened before the capture
    /// and not found in `/proc`).
    pub pid: u32,
    pub family: u16,
    /// `DIR_*`.
    pub direction: u8,
    /// Explicit padding; always zero.
    pub pad0: u8,
    pub local_port: u16,
    pub remote_port: u16,
    /// Explicit padding; always zero.
    pub pad1: u32,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// Owner's thread name at connect/listen time, NUL-padded.
    pub comm: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<Endpoint>() == 64);

/// Key of `TCP_HIST`; the value is a `u64` count per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HistKey {
    pub endpoint: Endpoint,
    /// `HIST_*`.
    pub kind: u32,
    /// `qprof_common::hist::bucket_of` of the value.
    pub bucket: u32,
}
const _: () = assert!(core::mem::size_of::<HistKey>() == 72);

/// Value of `TCP_STATS` (per CPU; userspace sums, and takes the max of the
/// `*_max_*` fields).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Connections established (SYN_SENT->ESTABLISHED outbound,
    /// SYN_RECV->ESTABLISHED inbound).
    pub connects: u64,
    /// Died in `SYN_SENT` (refused, timed out, abandoned).
    pub failed_syn_sent: u64,
    /// Died in `SYN_RECV` (handshake not completed).
    pub failed_syn_recv: u64,
    /// Established connections that reached CLOSE during the capture.
    pub closes: u64,
    /// Sum of their lifetimes (established -> close).
    pub lifetime_ns_total: u64,
    /// Segments retransmitted (`tcp_retransmit_skb` with err == 0, weighted
    /// by the packet's GSO segment count), as `RetransSegs` counts them.
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    /// Bytes of closed connections, and of live ones moved here at a
    /// window change (the rest of live ones is added from `TCP_SOCKS`).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// How many of those additions measured `bytes_sent` /
    /// `bytes_received` (zero: unknown, not zero bytes).
    pub sent_measured: u64,
    pub received_measured: u64,
    pub connect_max_ns: u64,
    pub lifetime_max_ns: u64,
}
const _: () = assert!(core::mem::size_of::<EndpointStats>() == 112);

/// Value of `TCP_SOCKS` (key: the kernel's `struct sock *`). Updated
/// without atomics: every event of one socket runs under its socket lock.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockInfo {
    pub endpoint: Endpoint,
    /// `SYN_SENT` time (outbound), ns since boot; 0 otherwise.
    pub start_ns: u64,
    /// ESTABLISHED time; 0 before, or when adopted.
    pub established_ns: u64,
    /// Sequence space sent, summed from `snd_nxt` deltas at each probe
    /// (exact up to the last segment received in ESTABLISHED); the
    /// fallback when `tcp_sock.bytes_acked` cannot be located.
    pub bytes_sent: u64,
    /// `tcp_sock.bytes_acked` / `bytes_received` when tracking began (0 for
    /// connections opened during the capture).
    pub acked_base: u64,
    pub received_base: u64,
    /// `tcp_sock.bytes_received` at the last probe, plus that segment's
    /// payload (the probe fires before the segment is processed).
    pub received_last: u64,
    pub last_snd_nxt: u32,
    /// `SOCK_*`.
    pub flags: u16,
    /// `TcpConfig::generation` when this socket last moved what it
    /// accumulated to its row; the bytes moved are taken off `bytes_sent`
    /// and added to `acked_base`/`received_base`, so those always count
    /// from the last move (the entry stays 144 bytes: `tcp_set_state`
    /// builds one on the 512-byte BPF stack).
    pub generation: u16,
    /// RTT samples are batched per socket in `RTT_SLOTS` (bucket, count)
    /// slots: a smoothed RTT wanders among a few neighbouring buckets, so
    /// the histogram map is touched only when a new bucket finds the slots
    /// full (and at close), not on every packet. A count of 0 is a free slot.
    pub rtt_buckets: [u16; RTT_SLOTS],
    pub rtt_counts: [u32; RTT_SLOTS],
}
const _: () = assert!(core::mem::size_of::<SockInfo>() == 144);

/// Per-socket RTT batching slots (see `SockInfo::rtt_buckets`).
pub const RTT_SLOTS: usize = 4;

/// Key of `TCP_SEED`: a connection as `/proc/net/tcp*` shows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FourTuple {
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    /// Explicit padding; always zero.
    pub pad: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<FourTuple>() == 40);

/// Value of `TCP_SEED` and `TCP_LISTENERS` (key: local port as u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// `DIR_*` (seed only; listeners are inbound by definition).
    pub direction: u8,
    /// Explicit padding; always zero.
    pub pad: [u8; 3],
    pub comm: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<Owner>() == 24);

/// Where the address fields of one tracepoint's record are (offsets from
/// the tracepoint's format file; `NO_FIELD` when absent).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrLayout {
    pub skaddr: u16,
    /// `__u16 family`; `NO_FIELD`: take it from the sockaddr.
    pub family: u16,
    /// Host-order `__u16` ports; `NO_FIELD`: take them from the sockaddr.
    pub sport: u16,
    pub dport: u16,
    /// `__u8 saddr[4]` or, when `sockaddr` is 1, `__u8 saddr[28]` holding a
    /// `sockaddr_in`/`sockaddr_in6`.
    pub saddr: u16,
    pub daddr: u16,
    /// `__u8 saddr_v6[16]` (`NO_FIELD` with sockaddrs).
    pub saddr_v6: u16,
    pub daddr_v6: u16,
    pub sockaddr: u16,
    /// Explicit padding; always zero.
    pub pad: u16,
}
const _: () = assert!(core::mem::size_of::<AddrLayout>() == 20);

/// Where `tcp_probe`'s BTF tracepoint program finds what it reads, as byte
/// offsets from the kernel's BTF: in `struct sock` (its `sock_common`), in
/// `struct tcp_sock` (both from the `sk` argument), and in the `tcp_skb_cb`
/// inside `sk_buff.cb` (from the `skb` argument). The classic `tcp:tcp_probe`
/// tracepoint builds a ~140-byte record for every segment received, which
/// costs more than everything qprof does with it; the BTF tracepoint hands
/// over the two pointers and nothing else.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockLayout {
    /// `skc_family`, `skc_num` (local port, host order), `skc_dport`
    /// (remote port, big-endian).
    pub family: u16,
    pub num: u16,
    pub dport: u16,
    /// `skc_rcv_saddr`, `skc_daddr` (IPv4), `skc_v6_rcv_saddr`,
    /// `skc_v6_daddr`.
    pub rcv_saddr: u16,
    pub daddr: u16,
    pub v6_rcv_saddr: u16,
    pub v6_daddr: u16,
    /// `tcp_sock.srtt_us` (smoothed RTT in µs, shifted left by 3),
    /// `snd_nxt`, `snd_una`.
    pub srtt_us: u16,
    pub snd_nxt: u16,
    pub snd_una: u16,
    /// `sk_buff.cb` plus `tcp_skb_cb.seq`, `.end_seq`, `.tcp_flags`.
    pub cb_seq: u16,
    pub cb_end_seq: u16,
    pub cb_flags: u16,
    /// Explicit padding; always zero.
    pub pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockLayout>() == 28);

/// The one value of `TCP_CONFIG`: filter and record layouts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpConfig {
    /// Non-zero: only sockets of pids in `TCP_TARGET_PIDS`.
    pub filter_by_pid: u32,
    /// `net.ipv4.ip_local_port_range`: ports folded to 0 on rows of unknown
    /// direction (a guess at which side is the client).
    pub ephemeral_low: u16,
    pub ephemeral_high: u16,
    pub set_state: AddrLayout,
    pub oldstate: u16,
    pub newstate: u16,
    pub protocol: u16,
    /// Explicit padding; always zero.
    pub pad0: u16,
    pub sock: SockLayout,
    pub retransmit: AddrLayout,
    /// `skbaddr` and `err` of `tcp_retransmit_skb` (`err` is `NO_FIELD` on
    /// kernels before 6.10, which traced successful retransmits only).
    pub retransmit_skbaddr: u16,
    pub retransmit_err: u16,
    pub send_reset: AddrLayout,
    pub receive_reset: AddrLayout,
    /// Kernel struct offsets found in BTF, `NO_FIELD` when not found:
    /// `tcp_sock.bytes_received`, `tcp_sock.bytes_acked` (RFC 4898
    /// counters), and `sk_buff.cb` + `tcp_skb_cb.tcp_gso_segs` (how many
    /// segments a retransmitted packet carries).
    pub sock_bytes_received: u16,
    pub sock_bytes_acked: u16,
    pub skb_gso_segs: u16,
    /// Which generation of `TCP_STATS`/`TCP_HIST` the programs write (0 or
    /// 1); flipped by the agent to close a window.
    pub generation: u16,
}
const _: () = assert!(core::mem::size_of::<TcpConfig>() == 136);

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all below): repr(C), only integer fields and byte arrays,
    // padding explicit, size asserted: every bit pattern is valid.
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Endpoint {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::HistKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::EndpointStats {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::SockInfo {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::FourTuple {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Owner {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::TcpConfig {}
}
