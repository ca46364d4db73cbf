//! Connections and listeners that exist before a capture starts, with their
//! owners, from `/proc/<pid>/net/tcp{,6}` (one read per network namespace)
//! and `/proc/<pid>/fd` (socket inode -> process), as `ss -p` finds them.
//!
//! The kernel side cannot see who owns a connection opened before it was
//! attached; this table lets it adopt such connections on their first
//! packet with the right owner (the kernel's socket addresses are hashed in
//! `/proc/net/tcp`, so the 4-tuple is the key).

use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use qprof_common::tcp::{AF_INET, AF_INET6, DIR_INBOUND, DIR_OUTBOUND, FourTuple, Owner};

/// `/proc/net/tcp` state codes.
const ESTABLISHED: u8 = 0x01;
const LISTEN: u8 = 0x0A;

/// One line of `/proc/net/tcp{,6}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcSocket {
    pub tuple: FourTuple,
    pub state: u8,
    pub inode: u64,
}

/// What the agent hands to the kernel before attaching.
#[derive(Debug, Default)]
pub struct Scan {
    /// Listening port -> owner.
    pub listeners: Vec<(u16, Owner)>,
    /// Established connection -> owner (with its direction).
    pub established: Vec<(FourTuple, Owner)>,
}

/// Parses `A:P` where A is 8 (IPv4) or 32 (IPv6) hex digits, each group
/// of 8 being a 32-bit word printed in host byte order.
fn parse_addr(text: &str) -> Option<([u8; 16], u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    if addr.len() != 8 && addr.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, chunk) in addr.as_bytes().chunks(8).enumerate() {
        let word = u32::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Some((out, port))
}

/// Parses the text of `/proc/net/tcp` (`family` `AF_INET`) or `tcp6`
/// (`AF_INET6`); malformed lines are skipped.
#[must_use]
pub fn parse(text: &str, family: u16) -> Vec<ProcSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local_addr, local_port) = parse_addr(f.get(1)?)?;
            let (remote_addr, remote_port) = parse_addr(f.get(2)?)?;
            Some(ProcSocket {
                tuple: FourTuple {
                    family,
                    local_port,
                    remote_port,
                    pad: 0,
                    local_addr,
                    remote_addr,
                },
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

fn comm_of(pid: u32) -> [u8; 16] {
    let mut comm = [0u8; 16];
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        let bytes = text.trim_end_matches('\n').as_bytes();
        let n = bytes.len().min(15);
        comm[..n].copy_from_slice(&bytes[..n]);
    }
    comm
}

/// Socket inodes held by `pid` (from `/proc/<pid>/fd` links `socket:[N]`).
fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?;
            let s = target.to_str()?;
            s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The TCP sockets of every network namespace `pids` live in.
fn sockets_of_namespaces(pids: &[u32]) -> Vec<ProcSocket> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for &pid in pids {
        let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        if !seen.insert(ns) {
            continue;
        }
        for (file, family) in [("tcp", AF_INET), ("tcp6", AF_INET6)] {
            let path = Path::new("/proc")
                .join(pid.to_string())
                .join("net")
                .join(file);
            if let Ok(text) = std::fs::read_to_string(path) {
                out.extend(parse(&text, family));
            }
        }
    }
    out
}

/// Scans `/proc` for the listeners and established connections of `pids`
/// (every process when empty). Processes that vanish mid-scan are skipped.
#[must_use]
pub fn scan(pids: &[u32]) -> Scan {
    let owners_of: Vec<u32> = if pids.is_empty() {
        all_pids()
    } else {
        pids.to_vec()
    };
    let mut owner_by_inode: HashMap<u64, u32> = HashMap::new();
    for &pid in &owners_of {
        for inode in socket_inodes(pid) {
            // A socket shared by several processes (fork) goes to the first.
            owner_by_inode.entry(inode).or_insert(pid);
        }
    }
    let sockets = sockets_of_namespaces(&owners_of);
    let listening: HashSet<u16> = sockets
        .iter()
        .filter(|s| s.state == LISTEN)
        .map(|s| s.tuple.local_port)
        .collect();
    let mut comms: HashMap<u32, [u8; 16]> = HashMap::new();
    let mut owner = |pid: u32, direction: u8| Owner {
        pid,
        direction,
        pad: [0; 3],
        comm: *comms.entry(pid).or_insert_with(|| comm_of(pid)),
    };
    let mut scan = Scan::default();
    for s in &sockets {
        let Some(&pid) = owner_by_inode.get(&s.inode) else {
            continue;
        };
        match s.state {
            LISTEN => scan
                .listeners
                .push((s.tuple.local_port, owner(pid, DIR_INBOUND))),
            ESTABLISHED => {
                let direction = if listening.contains(&s.tuple.local_port) {
                    DIR_INBOUND
                } else {
                    DIR_OUTBOUND
                };
                scan.established.push((s.tuple, owner(pid, direction)));
            }
            _ => {}
        }
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   113        0 21711 1 0000000032ac6954 100 0 0 10 0\n\
   1: 0100007F:D2B4 0100007F:1538 01 00000000:00000000 00:00000000 00000000     0        0 99001 1 000000003a1c2b7e 20 4 30 10 -1\n\
   garbage line\n";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n";

    /// IPv4 lines parse to network-order addresses, host-order ports, the
    /// state and the inode; garbage is skipped.
    #[test]
    fn parses_ipv4() {
        let s = parse(TCP, AF_INET);
        assert_eq!(s.len(), 2);
        assert_eq!(&s[0].tuple.local_addr[..4], &[127, 0, 0, 1]);
        assert_eq!(
            (s[0].tuple.local_port, s[0].state, s[0].inode),
            (5432, LISTEN, 21711)
        );
        assert_eq!(
            (s[1].tuple.local_port, s[1].tuple.remote_port),
            (53940, 5432)
        );
        assert_eq!(s[1].state, ESTABLISHED);
    }

    /// IPv6 addresses are four host-order words: `::1` ends in 1.
    #[test]
    fn parses_ipv6() {
        let s = parse(TCP6, AF_INET6);
        assert_eq!(s.len(), 1);
        let mut loopback = [0u8; 16];
        loopback[15] = 1;
        assert_eq!(s[0].tuple.local_addr, loopback);
        assert_eq!((s[0].tuple.local_port, s[0].tuple.family), (8080, AF_INET6));
    }
}
