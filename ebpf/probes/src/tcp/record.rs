//! Reading TCP tracepoint records at the offsets the agent found in the
//! tracepoints' format files (Rust BPF has no CO-RE, and the layouts moved
//! between kernel versions: `tcp_retransmit_skb` gained `err` in 6.10).

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_probe_read_kernel, generated},
    macros::map,
    maps::PerCpuArray,
    programs::TracePointContext,
};
use qprof_common::tcp::{AF_INET6, AddrLayout, FourTuple, NO_FIELD, PROBE_SPAN_MAX, TcpConfig};

/// This CPU's copy of the current `tcp_probe` record. Tracepoint programs
/// do not nest on one CPU (the kernel's `bpf_prog_active` guard), so one
/// slot per CPU is never in use twice.
#[map(name = "TCP_SCRATCH")]
static TCP_SCRATCH: PerCpuArray<[u8; PROBE_SPAN_MAX]> = PerCpuArray::with_max_entries(1, 0);

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

/// Copies the first `cfg.probe_span` bytes of a `tcp_probe` record into
/// this CPU's scratch slot: one helper call instead of one per field.
#[inline(always)]
pub fn copy_probe(ctx: &TracePointContext, cfg: &TcpConfig) -> Result<*const u8, i32> {
    let len = u32::from(cfg.probe_span);
    if len == 0 || len > PROBE_SPAN_MAX as u32 {
        return Err(EINVAL);
    }
    let buf = TCP_SCRATCH.get_ptr_mut(0).ok_or(EINVAL)?;
    // SAFETY: copies `len` bytes (bounded by the slot's size just above)
    // from the record into this CPU's slot; the helper reports a bad source
    // address as an error instead of faulting.
    let rc =
        unsafe { generated::bpf_probe_read_kernel(buf.cast(), len, ctx.as_ptr().cast_const()) };
    if rc < 0 {
        return Err(rc as i32);
    }
    Ok(buf.cast_const().cast())
}

/// A `T` at `offset` in a record copied by `copy_probe`.
#[inline(always)]
pub fn field<T: Copy>(rec: *const u8, offset: u16) -> Result<T, i32> {
    let offset = usize::from(offset);
    if offset + core::mem::size_of::<T>() > PROBE_SPAN_MAX {
        return Err(EINVAL);
    }
    // SAFETY: `rec` is a `PROBE_SPAN_MAX`-byte scratch slot and the field
    // lies inside it (checked above); unaligned read because offsets come
    // from the format file; every `T` used is a plain integer.
    Ok(unsafe { rec.add(offset).cast::<T>().read_unaligned() })
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
