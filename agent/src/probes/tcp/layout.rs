//! The TCP tracepoints' record layouts, from their tracefs format files, as
//! the `TcpConfig` the BPF programs read their offsets from.

use qprof_common::tcp::{AddrLayout, NO_FIELD, PROBE_SPAN_MAX, TcpConfig};

use crate::probes::tracefs::{FormatError, TracepointFormat};

/// (program name in the BPF object, tracepoint category, tracepoint name).
pub const TRACEPOINTS: [(&str, &str, &str); 5] = [
    ("tcp_set_state", "sock", "inet_sock_set_state"),
    ("tcp_probe", "tcp", "tcp_probe"),
    ("tcp_retransmit", "tcp", "tcp_retransmit_skb"),
    ("tcp_send_reset", "tcp", "tcp_send_reset"),
    ("tcp_receive_reset", "tcp", "tcp_receive_reset"),
];

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
    /// Reads the running kernel's BTF. Every field is optional: without
    /// them bytes received are unknown and a retransmitted GSO packet counts
    /// as one segment.
    #[must_use]
    pub fn kernel() -> Self {
        let Ok(btf) = super::btf::Btf::kernel() else {
            return Self {
                bytes_received: NO_FIELD,
                bytes_acked: NO_FIELD,
                gso_segs: NO_FIELD,
            };
        };
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

/// Reads the five format files. The error names the tracepoint (and the
/// field) that is missing or laid out unexpectedly.
pub fn load(
    filter_by_pid: bool,
    ephemeral: (u16, u16),
    kernel: KernelOffsets,
) -> Result<TcpConfig, LayoutError> {
    let set_state = Format::load("sock", "inet_sock_set_state")?;
    let probe = Format::load("tcp", "tcp_probe")?;
    let retransmit = Format::load("tcp", "tcp_retransmit_skb")?;
    let send_reset = Format::load("tcp", "tcp_send_reset")?;
    let receive_reset = Format::load("tcp", "tcp_receive_reset")?;
    let probe_addrs = probe.addrs()?;
    let (srtt, snd_nxt, snd_una, data_len) = (
        probe.field("srtt", &[4])?,
        probe.field("snd_nxt", &[4])?,
        probe.field("snd_una", &[4])?,
        probe.field("data_len", &[2])?,
    );
    // The BPF side copies this much of each tcp_probe record in one go.
    let span = [
        (probe_addrs.skaddr, 8),
        (srtt, 4),
        (snd_nxt, 4),
        (snd_una, 4),
        (data_len, 2),
    ]
    .iter()
    .map(|&(offset, size)| usize::from(offset) + size)
    .max()
    .unwrap_or(0);
    if span > PROBE_SPAN_MAX {
        return Err(LayoutError::Offset {
            tracepoint: probe.name.clone(),
            field: "skaddr/srtt/snd_nxt/snd_una/data_len",
            offset: span as u32,
        });
    }
    Ok(TcpConfig {
        filter_by_pid: u32::from(filter_by_pid),
        ephemeral_low: ephemeral.0,
        ephemeral_high: ephemeral.1,
        set_state: set_state.addrs()?,
        oldstate: set_state.field("oldstate", &[4])?,
        newstate: set_state.field("newstate", &[4])?,
        protocol: set_state.field("protocol", &[2])?,
        pad0: 0,
        probe: probe_addrs,
        srtt,
        probe_span: span as u16,
        snd_nxt,
        snd_una,
        retransmit: retransmit.addrs()?,
        retransmit_skbaddr: retransmit.field("skbaddr", &[8])?,
        retransmit_err: retransmit.optional("err", 4)?,
        send_reset: send_reset.addrs()?,
        receive_reset: receive_reset.addrs()?,
        sock_bytes_received: kernel.bytes_received,
        sock_bytes_acked: kernel.bytes_acked,
        skb_gso_segs: kernel.gso_segs,
        probe_data_len: data_len,
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

    /// On a kernel whose tracefs is mounted, the five formats load and
    /// every offset the BPF side needs is present and inside the record.
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
        let cfg = load(false, (32_768, 60_999), none).unwrap_or_else(|e| panic!("{e}"));
        for layout in [
            cfg.set_state,
            cfg.probe,
            cfg.retransmit,
            cfg.send_reset,
            cfg.receive_reset,
        ] {
            assert_ne!(layout.skaddr, NO_FIELD);
            assert_ne!(layout.saddr, NO_FIELD);
        }
        assert_eq!(cfg.probe.sockaddr, 1, "6.x tcp_probe stores sockaddrs");
        assert!(usize::from(cfg.probe_span) <= PROBE_SPAN_MAX && cfg.probe_span > cfg.srtt);
        assert_eq!(cfg.filter_by_pid, 0);
    }
}
