//! Reading TCP tracepoint records at the offsets the agent found in the
//! tracepoints' format files (Rust BPF has no CO-RE, and the layouts moved
//! between kernel versions: `tcp_retransmit_skb` gained `err` in 6.10), and
//! kernel structs at offsets it found in BTF.

use aya_ebpf::{helpers::bpf_probe_read_kernel, programs::TracePointContext};
use qprof_common::tcp::{AF_INET6, AddrLayout, FourTuple, NO_FIELD, SockLayout};

/// `-EINVAL`, returned for a field the tracepoint does not have.
const EINVAL: i32 = -22;

/// `sockaddr_in` / `sockaddr_in6` as `TP_STORE_ADDR_PORTS` leaves them in a
/// `__u8 [28]` field: family, big-endian port, then the IPv4 address (where
/// `sockaddr_in6` has its flow info) or, at byte 8, the IPv6 address.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawSockaddr {
    family: u16,
    port_be: [u8; 2],
    v4: [u8; 4],
    v6: [u8; 16],
    scope_id: u32,
}
const _: () = assert!(core::mem::size_of::<RawSockaddr>() == 28);

/// Reads a `T` at `offset` in the record.
#[inline(always)]
pub fn read<T>(ctx: &TracePointContext, offset: u16) -> Result<T, i32> {
    if offset == NO_FIELD {
        return Err(EINVAL);
    }
    // SAFETY: `read_at` is `bpf_probe_read_kernel` of `size_of::<T>()` bytes
    // at the record plus `offset`; it copies into a local and reports a bad
    // address as an error instead of faulting. Every `T` used here is plain
    // integers or byte arrays, valid for any bit pattern.
    unsafe { ctx.read_at::<T>(usize::from(offset)) }
}

/// A `T` at `base + offset` in kernel memory (a field of a kernel struct
/// whose offset came from BTF).
#[inline(always)]
pub fn kernel_field<T>(base: u64, offset: u16) -> Result<T, i32> {
    if offset == NO_FIELD || base == 0 {
        return Err(EINVAL);
    }
    let src = (base + u64::from(offset)) as *const T;
    // SAFETY: bpf_probe_read_kernel copies into a local and reports an
    // unmapped address as an error instead of faulting; `T` is a plain
    // integer, valid for any bit pattern.
    unsafe { bpf_probe_read_kernel(src) }
}

/// The record's `struct sock *`, 0 when the event has no socket (a reset
/// sent in reply to a packet for no socket).
#[inline(always)]
pub fn skaddr(ctx: &TracePointContext, layout: &AddrLayout) -> Result<u64, i32> {
    read::<u64>(ctx, layout.skaddr)
}

#[inline(always)]
fn copy_v4(dst: &mut [u8; 16], src: [u8; 4]) {
    let [a, b, c, d] = src;
    dst[0] = a;
    dst[1] = b;
    dst[2] = c;
    dst[3] = d;
}

/// The record's connection as (local = source, remote = destination).
/// `tcp_send_reset` already swaps the packet's addresses when it has no
/// socket, so its source is the local side too.
#[inline(always)]
pub fn tuple(ctx: &TracePointContext, layout: &AddrLayout) -> Result<FourTuple, i32> {
    let mut t = FourTuple {
        family: 0,
        local_port: 0,
        remote_port: 0,
        pad: 0,
        local_addr: [0; 16],
        remote_addr: [0; 16],
    };
    if layout.sockaddr != 0 {
        let src: RawSockaddr = read(ctx, layout.saddr)?;
        let dst: RawSockaddr = read(ctx, layout.daddr)?;
        t.family = src.family;
        t.local_port = u16::from_be_bytes(src.port_be);
        t.remote_port = u16::from_be_bytes(dst.port_be);
        if t.family == AF_INET6 {
            t.local_addr = src.v6;
            t.remote_addr = dst.v6;
        } else {
            copy_v4(&mut t.local_addr, src.v4);
            copy_v4(&mut t.remote_addr, dst.v4);
        }
        return Ok(t);
    }
    t.family = read(ctx, layout.family)?;
    t.local_port = read(ctx, layout.sport)?;
    t.remote_port = read(ctx, layout.dport)?;
    if t.family == AF_INET6 {
        t.local_addr = read(ctx, layout.saddr_v6)?;
        t.remote_addr = read(ctx, layout.daddr_v6)?;
    } else {
        copy_v4(&mut t.local_addr, read(ctx, layout.saddr)?);
        copy_v4(&mut t.remote_addr, read(ctx, layout.daddr)?);
    }
    Ok(t)
}

/// A socket's connection as (local, remote), read from its `sock_common`
/// the way the TCP tracepoints' `TP_STORE_ADDR_PORTS` fills their records
/// (IPv6 addresses for an `AF_INET6` socket, IPv4-mapped ones included),
/// so that tuples from either source match.
#[inline(always)]
pub fn sock_tuple(sk: u64, layout: &SockLayout) -> Result<FourTuple, i32> {
    let mut t = FourTuple {
        family: kernel_field(sk, layout.family)?,
        local_port: kernel_field(sk, layout.num)?,
        remote_port: u16::from_be(kernel_field(sk, layout.dport)?),
        pad: 0,
        local_addr: [0; 16],
        remote_addr: [0; 16],
    };
    if t.family == AF_INET6 {
        t.local_addr = kernel_field(sk, layout.v6_rcv_saddr)?;
        t.remote_addr = kernel_field(sk, layout.v6_daddr)?;
    } else {
        copy_v4(&mut t.local_addr, kernel_field(sk, layout.rcv_saddr)?);
        copy_v4(&mut t.remote_addr, kernel_field(sk, layout.daddr)?);
    }
    Ok(t)
}
