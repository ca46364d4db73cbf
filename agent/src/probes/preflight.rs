//! Checks run before any probe is loaded, so that a missing privilege or
//! kernel feature gives one clear message instead of an EPERM deep inside aya.

use std::{ffi::CString, path::Path};

/// Capability bits (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Where tracefs is expected; tracepoint attachment reads it.
pub const TRACEFS: &str = "/sys/kernel/tracing";

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "qprof needs root or the capabilities CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN; missing: {0} (run as root, e.g. with sudo)"
    )]
    MissingCapabilities(String),
    #[error("reading /proc/self/status: {0}")]
    Status(std::io::Error),
    #[error(
        "kernel BTF not found at /sys/kernel/btf/vmlinux: qprof needs Linux >= 5.15 built with CONFIG_DEBUG_INFO_BTF"
    )]
    NoBtf,
    #[error("tracefs is not mounted at {TRACEFS} and mounting it failed: {0}")]
    Tracefs(std::io::Error),
}

/// Names of the required capabilities missing from an effective set.
#[must_use]
pub fn missing_capabilities(effective: u64) -> Vec<&'static str> {
    [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .into_iter()
    .filter(|(bit, _)| effective & (1u64 << bit) == 0)
    .map(|(_, name)| name)
    .collect()
}

/// Parses the `CapEff:` line of a `/proc/<pid>/status` text.
#[must_use]
pub fn effective_capabilities(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Fails with the list of missing capabilities, if any.
pub fn check_capabilities() -> Result<(), PreflightError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(PreflightError::Status)?;
    let effective = effective_capabilities(&status).unwrap_or(0);
    let missing = missing_capabilities(effective);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::MissingCapabilities(missing.join(", ")))
    }
}

/// BTF is what lets later capabilities read kernel structs portably.
pub fn check_btf() -> Result<(), PreflightError> {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Ok(())
    } else {
        Err(PreflightError::NoBtf)
    }
}

/// Mounts tracefs when it is missing (it is not mounted at boot on some
/// hosts). Returns whether it mounted it, so the caller can say so.
pub fn ensure_tracefs() -> Result<bool, PreflightError> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(false);
    }
    let c = |s: &str| CString::new(s).map_err(|e| PreflightError::Tracefs(e.into()));
    let (source, target, fstype) = (c("nodev")?, c(TRACEFS)?, c("tracefs")?);
    // SAFETY: all three pointers are NUL-terminated strings that outlive the
    // call; a null data pointer is allowed for tracefs.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(true)
    } else {
        Err(PreflightError::Tracefs(std::io::Error::last_os_error()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root's full set has every required capability.
    #[test]
    fn full_set_has_everything() {
        assert!(missing_capabilities(0x1ff_ffff_ffff).is_empty());
    }

    /// An empty set names all three, in a stable order.
    #[test]
    fn empty_set_names_all() {
        assert_eq!(
            missing_capabilities(0),
            ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN"]
        );
    }

    /// `CapEff` parsing reads the hex mask and rejects garbage.
    #[test]
    fn parses_cap_eff() {
        let status = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_capabilities(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_capabilities("CapEff:\tzz\n"), None);
        assert_eq!(effective_capabilities(""), None);
    }
}
