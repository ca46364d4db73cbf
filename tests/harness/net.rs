//! Network helpers for the TCP tests: throw-away network namespaces (removed
//! on drop, with every process still in them killed first), the kernel's
//! own TCP counters, `ss -ti` RTTs, and free ports.

use std::process::{Command, Stdio};

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"))
}

/// A network namespace with its loopback up, deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `qprof-<tag>-<pid>` (removing a leftover of the same name).
    #[must_use]
    pub fn create(tag: &str) -> Self {
        let name = format!("qprof-{tag}-{}", std::process::id());
        let _ = ip(&["netns", "del", &name]);
        let out = ip(&["netns", "add", &name]);
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Self { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace; panics with its stderr if it
    /// fails; returns its stdout.
    #[expect(clippy::must_use_candidate, reason = "often run for its effect only")]
    pub fn run(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {} {args:?}: {e}", self.name));
        assert!(
            out.status.success(),
            "ip netns exec {} {args:?} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip netns exec NAME` + `program args`, for `Fixture::start("ip", ..)`.
    #[must_use]
    pub fn exec_args<'a>(&'a self, program: &'a str, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        all
    }

    /// A `Tcp:` counter of the namespace's `/proc/net/snmp` (e.g. `RetransSegs`).
    #[must_use]
    pub fn tcp_counter(&self, field: &str) -> u64 {
        tcp_counter(&self.run(&["cat", "/proc/net/snmp"]), field)
            .unwrap_or_else(|| panic!("no Tcp: {field} in the namespace's /proc/net/snmp"))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Processes left in the namespace would keep it alive.
        let pids = ip(&["netns", "pids", &self.name]);
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: kill(2) on a pid listed in our own test namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Finds `field` in the `Tcp:` header/value line pair of a snmp text.
#[must_use]
pub fn tcp_counter(snmp: &str, field: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let header = tcp.next()?;
    let values = tcp.next()?;
    let index = header.split_whitespace().position(|h| h == field)?;
    values.split_whitespace().nth(index)?.parse().ok()
}

/// Smoothed RTTs (µs) of the established connections to `port` on this
/// host's namespace, from `ss -ti` (`rtt:SRTT/RTTVAR`, in ms).
#[must_use]
pub fn ss_rtts_us(port: u16) -> Vec<f64> {
    let filter = format!("dport = :{port}");
    let out = Command::new("ss")
        .args(["-tin", "state", "established", &filter])
        .output()
        .unwrap_or_else(|e| panic!("running ss: {e}"));
    parse_ss_rtts(&String::from_utf8_lossy(&out.stdout))
}

/// The `rtt:X/Y` values of `ss -ti` output, as µs.
#[must_use]
pub fn parse_ss_rtts(text: &str) -> Vec<f64> {
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix("rtt:"))
        .filter_map(|v| v.split('/').next()?.parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect()
}

/// A TCP port nothing listens on right now (bound, then released).
#[must_use]
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("binding a probe port: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"))
        .port()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ss -ti` lines give their srtt in µs; snmp counters are found by name.
    #[test]
    fn parses_tool_output() {
        let ss = "ESTAB 0 0 127.0.0.1:5 127.0.0.1:6\n\t cubic wscale:7,7 rto:201 rtt:0.035/0.017 ato:40 mss:32768\n";
        assert_eq!(parse_ss_rtts(ss), vec![35.0]);
        let snmp = "Ip: Forwarding\nIp: 1\nTcp: RtoAlgorithm OutSegs RetransSegs\nTcp: 1 100 12\n";
        assert_eq!(tcp_counter(snmp, "RetransSegs"), Some(12));
        assert_eq!(tcp_counter(snmp, "Nope"), None);
    }
}
