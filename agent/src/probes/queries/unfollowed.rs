//! Connections qprof cannot follow, by reason in words. The kernel only
//! sees TLS records where plaintext was expected; which TLS library the
//! process used (one qprof does not probe, or none at all: linked
//! statically) is told from its mappings here.

use std::path::Path;

/// Distinct reasons kept per window; further ones are folded into the
/// last (a host has a handful of TLS stacks, not dozens).
const MAX_REASONS: usize = 16;
/// Processes named per reason (the count covers them all).
const MAX_PROCESSES: usize = 8;

/// TLS libraries qprof does not probe, by file-name prefix. NSS's
/// `libssl3.so` is not OpenSSL's `libssl.so.3`.
const OTHER_TLS: [(&str, &str); 6] = [
    ("libgnutls.so", "GnuTLS"),
    ("libssl3.so", "NSS"),
    ("libnss3.so", "NSS"),
    ("libwolfssl.so", "wolfSSL"),
    ("libmbedtls.so", "Mbed TLS"),
    ("libbotan", "Botan"),
];

/// Connections not followed for one reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unfollowed {
    pub reason: String,
    pub connections: u64,
    /// `name[pid]` of some of the processes (at most `MAX_PROCESSES`).
    pub processes: Vec<String>,
}

/// Why a TLS connection of a process with mappings `maps` (None: the
/// process is gone) could not be followed. `probed` says whether a mapped
/// libssl path is attached.
#[must_use]
pub fn tls_reason(maps: Option<&str>, probed: impl Fn(&str) -> bool) -> String {
    let Some(maps) = maps else {
        return "TLS; the process exited before its TLS library could be identified".to_owned();
    };
    let files: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/'))
        .collect();
    let name = |p: &&str| {
        Path::new(p)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned()
    };
    for file in &files {
        let base = name(file);
        if let Some((_, lib)) = OTHER_TLS.iter().find(|(pre, _)| base.starts_with(pre)) {
            return format!("TLS through {lib} ({base}), a library qprof cannot probe");
        }
    }
    if let Some(ssl) = files.iter().find(|p| super::libssl::is_libssl(p)) {
        return if probed(ssl) {
            format!("TLS through {ssl}, read outside the probed OpenSSL functions")
        } else {
            format!("TLS through {ssl}, which qprof could not attach to")
        };
    }
    "TLS linked statically into the program (no TLS library mapped), which qprof cannot probe"
        .to_owned()
}

/// Adds one connection of `process` not followed for `reason`.
pub fn count(rows: &mut Vec<Unfollowed>, reason: String, process: String) {
    let at = match rows.iter().position(|r| r.reason == reason) {
        Some(i) => i,
        None if rows.len() < MAX_REASONS => {
            rows.push(Unfollowed {
                reason,
                ..Unfollowed::default()
            });
            rows.len() - 1
        }
        None => rows.len() - 1,
    };
    if let Some(row) = rows.get_mut(at) {
        row.connections += 1;
        if row.processes.len() < MAX_PROCESSES && !row.processes.contains(&process) {
            row.processes.push(process);
        }
    }
}

/// `comm[pid]` of a process (`?[pid]` once it is gone).
#[must_use]
pub fn process_name(pid: u32) -> String {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let comm = comm.trim();
    format!("{}[{pid}]", if comm.is_empty() { "?" } else { comm })
}

/// One summary line per reason.
#[must_use]
pub fn describe(rows: &[Unfollowed]) -> Vec<String> {
    rows.iter()
        .map(|r| {
            format!(
                "{} PostgreSQL connection(s) could not be followed: {} (processes: {})",
                r.connections,
                r.reason,
                r.processes.join(", ")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "7f00-7f01 r-xp 00000000 08:01 42 /usr/bin/prog\n";

    /// Each TLS situation gets its own words.
    #[test]
    fn names_the_reason() {
        let gnutls = format!("{MAPS}7f02-7f03 r-xp 0 08:01 7 /usr/lib/libgnutls.so.30.34\n");
        assert!(tls_reason(Some(&gnutls), |_| true).contains("GnuTLS"));
        let nss = format!("{MAPS}7f02-7f03 r-xp 0 08:01 7 /usr/lib/libssl3.so\n");
        assert!(tls_reason(Some(&nss), |_| true).contains("NSS"));
        let openssl = format!("{MAPS}7f02-7f03 r-xp 0 08:01 7 /usr/lib/libssl.so.3\n");
        assert!(tls_reason(Some(&openssl), |_| false).contains("could not attach"));
        assert!(tls_reason(Some(&openssl), |_| true).contains("outside the probed"));
        assert!(tls_reason(Some(MAPS), |_| true).contains("statically"));
        assert!(tls_reason(None, |_| true).contains("exited"));
    }

    /// Connections are counted per reason; processes named once, bounded.
    #[test]
    fn counts_per_reason() {
        let mut rows = Vec::new();
        for i in 0..20 {
            count(&mut rows, "a".into(), format!("p[{}]", i % 10));
        }
        count(&mut rows, "b".into(), "q[1]".into());
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].connections, 20);
        assert_eq!(rows[0].processes.len(), MAX_PROCESSES);
        assert_eq!(
            describe(&rows)[1],
            "1 PostgreSQL connection(s) could not be followed: b (processes: q[1])"
        );
        for i in 0..40 {
            count(&mut rows, format!("r{i}"), "x[1]".into());
        }
        assert_eq!(rows.len(), MAX_REASONS);
    }
}
