//! The TCP tracepoints' record layouts, from their tracefs format files,
//! and the kernel struct offsets `tcp_probe` reads, from BTF, as the
//! `TcpConfig` the BPF programs read their offsets from.

use qprof_common::tcp::{AddrLayout, NO_FIELD, SockLayout, TcpConfig};

use super::btf::{Btf, BtfError};
use crate::probes::tracefs::{FormatError, TracepointFormat};

/// (program name in the BPF object, tracepoint category, tracepoint name)
/// of the classic tracepoints, whose records are laid out by format files.
pub const TRACEPOINTS: [(&str, &str, &str); 4] = [
    ("tcp_set_state", "sock", "inet_sock_set_state"),
    ("tcp_retransmit", "tcp", "tcp_retransmit_skb"),
    ("tcp_send_reset", "tcp", "tcp_send_reset"),
    ("tcp_receive_reset", "tcp", "tcp_receive_reset"),
];

/// The per-segment program, on the BTF tracepoint `tcp_probe` (see
/// `SockLayout` for why not the classic one).
pub const PROBE_PROGRAM: &str = "tcp_probe";
pub const PROBE_TRACEPOINT: &str = "tcp_probe";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(
        "tracepoint {tracepoint}: field {field} is {got} bytes, qprof expects {want} (unsupported kernel layout)"
    )]
    Size {
        tracepoint: String,
        field: &'static str,
        got: u32,
        want: String,
    },
    #[error(
        "tracepoint {tracepoint}: field {field} is at offset {offset}, beyond the record size qprof reads"
    )]
    Offset {
        tracepoint: String,
        field: &'static str,
        offset: u32,
    },
    #[error("reading the kernel's BTF for the tcp_probe program: {0}")]
    Btf(#[from] BtfError),
    #[error(
        "the kernel's BTF has no {0} (tcp_probe reads it from the socket); unsupported kernel layout"
    )]
    Member(&'static str),
}

/// One loaded format plus its display name, for error messages.
struct Format {
    name: String,
    format: TracepointFormat,
}

impl Format {
    fn load(category: &str, name: &str) -> Result<Self, LayoutError> {
        Ok(Self {
            name: format!("{category}:{name}"),
            format: TracepointFormat::load(category, name)?,
        })
    }

    /// Offset of a field that must exist with one of the `sizes`.
    fn field(&self, field: &'static str, sizes: &[u32]) -> Result<u16, LayoutError> {
        let f = self.format.field(field)?;
        if !sizes.contains(&f.size) {
            return Err(LayoutError::Size {
                tracepoint: self.name.clone(),
                field,
                got: f.size,
                want: format!("{sizes:?}"),
            });
        }
        u16::try_from(f.offset)
            .ok()
            .filter(|&o| o != NO_FIELD)
            .ok_or(LayoutError::Offset {
                tracepoint: self.name.clone(),
                field,
                offset: f.offset,
            })
    }

    /// Like `field`, but `NO_FIELD` when the kernel does not have it.
    fn optional(&self, field: &'static str, size: u32) -> Result<u16, LayoutError> {
        match self.field(field, &[size]) {
            Err(LayoutError::Format(FormatError::NoField { .. })) => Ok(NO_FIELD),
            other => other,
        }
    }

    /// Addresses as `saddr[28]`/`daddr[28]` sockaddrs (6.x `tcp_probe`,
    /// `tcp_send_reset`) or as split IPv4/IPv6 arrays plus ports.
    fn addrs(&self) -> Result<AddrLayout, LayoutError> {
        let skaddr = self.field("skaddr", &[8])?;
        let (src, dst) = (
            self.field("saddr", &[4, 28])?,
            self.field("daddr", &[4, 28])?,
        );
        if self.format.field("saddr")?.size == 28 {
            return Ok(AddrLayout {
                skaddr,
                family: NO_FIELD,
                sport: NO_FIELD,
                dport: NO_FIELD,
                saddr: src,
                daddr: dst,
                saddr_v6: NO_FIELD,
                daddr_v6: NO_FIELD,
                sockaddr: 1,
                pad: 0,
            });
        }
        Ok(AddrLayout {
            skaddr,
            family: self.field("family", &[2])?,
            sport: self.field("sport", &[2])?,
            dport: self.field("dport", &[2])?,
            saddr: src,
            daddr: dst,
            saddr_v6: self.field("saddr_v6", &[16])?,
            daddr_v6: self.field("daddr_v6", &[16])?,
            sockaddr: 0,
            pad: 0,
        })
    }
}

/// Kernel struct offsets from BTF, `NO_FIELD` for each one not found.
#[derive(Debug, Clone, Copy)]
pub struct KernelOffsets {
    pub bytes_received: u16,
    pub bytes_acked: u16,
    pub gso_segs: u16,
}

impl KernelOffsets {
    /// From the running kernel's BTF. Every field is optional: without
    /// them bytes received are unknown and a retransmitted GSO packet counts
    /// as one segment.
    #[must_use]
    pub fn from_btf(btf: &Btf) -> Self {
        let small = |v: Option<u32>| v.and_then(|v| u16::try_from(v).ok()).unwrap_or(NO_FIELD);
        let gso = match (
            btf.member_offset("sk_buff", "cb"),
            btf.member_offset("tcp_skb_cb", "tcp_gso_segs"),
        ) {
            (Some(cb), Some(segs)) => Some(cb + segs),
            _ => None,
        };
        Self {
            bytes_received: small(btf.member_offset("tcp_sock", "bytes_received")),
            bytes_acked: small(btf.member_offset("tcp_sock", "bytes_acked")),
            gso_segs: small(gso),
        }
    }
}

/// Where `tcp_probe` finds its fields, from BTF; every one is required but
/// the IPv6 addresses.
/// `sock_common` members sit inside anonymous unions, which `member_offset`
/// looks through; `struct sock` begins with its `sock_common`.
pub fn sock_layout(btf: &Btf) -> Result<SockLayout, LayoutError> {
    let get = |strukt: &str, member: &str, name: &'static str| {
        btf.member_offset(strukt, member)
            .and_then(|v| u16::try_from(v).ok())
            .filter(|&v| v != NO_FIELD)
            .ok_or(LayoutError::Member(name))
    };
    let common = |member: &str, name: &'static str| get("sock_common", member, name);
    let cb = get("sk_buff", "cb", "sk_buff.cb")?;
    let in_cb = |member: &str, name: &'static str| get("tcp_skb_cb", member, name).map(|o| cb + o);
    Ok(SockLayout {
        family: common("skc_family", "sock_common.skc_family")?,
        num: common("skc_num", "sock_common.skc_num")?,
        dport: common("skc_dport", "sock_common.skc_dport")?,
        rcv_saddr: common("skc_rcv_saddr", "sock_common.skc_rcv_saddr")?,
        daddr: common("skc_daddr", "sock_common.skc_daddr")?,
        // Only with CONFIG_IPV6; without it no socket is AF_INET6.
        v6_rcv_saddr: common("skc_v6_rcv_saddr", "").unwrap_or(NO_FIELD),
        v6_daddr: common("skc_v6_daddr", "").unwrap_or(NO_FIELD),
        srtt_us: get("tcp_sock", "srtt_us", "tcp_sock.srtt_us")?,
        snd_nxt: get("tcp_sock", "snd_nxt", "tcp_sock.snd_nxt")?,
        snd_una: get("tcp_sock", "snd_una", "tcp_sock.snd_una")?,
        cb_seq: in_cb("seq", "tcp_skb_cb.seq")?,
        cb_end_seq: in_cb("end_seq", "tcp_skb_cb.end_seq")?,
        cb_flags: in_cb("tcp_flags", "tcp_skb_cb.tcp_flags")?,
        pad: 0,
    })
}

/// Reads the four format files. The error names the tracepoint (and the
/// field) that is missing or laid out unexpectedly.
pub fn load(
    filter_by_pid: bool,
    ephemeral: (u16, u16),
    kernel: KernelOffsets,
    sock: SockLayout,
) -> Result<TcpConfig, LayoutError> {
    let set_state = Format::load("sock", "inet_sock_set_state")?;
    let retransmit = Format::load("tcp", "tcp_retransmit_skb")?;
    let send_reset = Format::load("tcp", "tcp_send_reset")?;
    let receive_reset = Format::load("tcp", "tcp_receive_reset")?;
    Ok(TcpConfig {
        filter_by_pid: u32::from(filter_by_pid),
        ephemeral_low: ephemeral.0,
        ephemeral_high: ephemeral.1,
        set_state: set_state.addrs()?,
        oldstate: set_state.field("oldstate", &[4])?,
        newstate: set_state.field("newstate", &[4])?,
        protocol: set_state.field("protocol", &[2])?,
        pad0: 0,
        sock,
        retransmit: retransmit.addrs()?,
        retransmit_skbaddr: retransmit.field("skbaddr", &[8])?,
        retransmit_err: retransmit.optional("err", 4)?,
        send_reset: send_reset.addrs()?,
        receive_reset: receive_reset.addrs()?,
        sock_bytes_received: kernel.bytes_received,
        sock_bytes_acked: kernel.bytes_acked,
        skb_gso_segs: kernel.gso_segs,
        generation: 0,
    })
}

/// `net.ipv4.ip_local_port_range` (also used for IPv6), or the kernel's
/// default when it cannot be read.
#[must_use]
pub fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut it = text.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracepoint the kernel lacks is named in the error.
    #[test]
    fn missing_tracepoint_is_named() {
        let err = Format::load("tcp", "tcp_no_such_event")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("tracepoint tcp:tcp_no_such_event is not available"),
            "{err}"
        );
    }

    /// On a kernel whose tracefs is mounted, the four formats and the
    /// socket layout load and every offset the BPF side needs is present.
    #[test]
    fn running_kernel_layouts_load() {
        if !std::path::Path::new(crate::probes::preflight::TRACEFS)
            .join("events/tcp/tcp_probe/format")
            .exists()
        {
            return;
        }
        let none = KernelOffsets {
            bytes_received: NO_FIELD,
            bytes_acked: NO_FIELD,
            gso_segs: NO_FIELD,
        };
        let btf = Btf::kernel().unwrap_or_else(|e| panic!("{e}"));
        let sock = sock_layout(&btf).unwrap_or_else(|e| panic!("{e}"));
        let cfg = load(false, (32_768, 60_999), none, sock).unwrap_or_else(|e| panic!("{e}"));
        for layout in [
            cfg.set_state,
            cfg.retransmit,
            cfg.send_reset,
            cfg.receive_reset,
        ] {
            assert_ne!(layout.skaddr, NO_FIELD);
            assert_ne!(layout.saddr, NO_FIELD);
        }
        // The IPv4 pair, then the port pair, open sock_common; the control
        // block's seq and end_seq are adjacent u32s.
        assert!(
            sock.rcv_saddr == sock.daddr + 4 && sock.num == sock.dport + 2,
            "{sock:?}"
        );
        assert_eq!(sock.cb_end_seq, sock.cb_seq + 4, "{sock:?}");
        assert!(
            sock.srtt_us > sock.v6_daddr,
            "tcp_sock extends sock: {sock:?}"
        );
        assert_eq!(cfg.filter_by_pid, 0);
    }
}
