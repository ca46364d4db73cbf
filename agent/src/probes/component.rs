//! The one shape every capability has, so that `qprof record …` (one
//! capture for a fixed time) and `qprof agent` (several, for ever, in
//! windows) drive the same code.
//!
//! - `start` loads and attaches;
//! - `poll` does the cheap housekeeping that must happen while processes
//!   live (snapshot new processes' mappings, drain ring buffers), every
//!   [`POLL_EVERY`];
//! - `snapshot` returns what accumulated since the previous snapshot and
//!   resets it in the kernel, leaving every probe attached;
//! - `stop` takes a last snapshot at the instant the capture ends (the
//!   programs are made inert first, so nothing keeps changing the maps
//!   while links are removed one by one) and then detaches.
//!
//! Dropping a component detaches it too (aya owns the links), so an error
//! path or a panic leaves no probe behind.

use std::{fmt, str::FromStr, time::Duration};

/// How often a driver calls [`Component::poll`]: fast enough to snapshot a
/// process that lives a fraction of a second, slow enough to cost nothing
/// measurable.
pub const POLL_EVERY: Duration = Duration::from_millis(100);

/// A capability a driver can start, read repeatedly and stop.
pub trait Component: Sized + Send {
    /// What `start` needs.
    type Config;
    /// What one window (or a whole capture) produced.
    type Snapshot: Send;
    /// Why starting or reading failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Which capability this is.
    const KIND: CaptureKind;

    /// Loads the programs, configures their filters and attaches.
    fn start(config: &Self::Config) -> Result<Self, Self::Error>;

    /// Cheap housekeeping; call every [`POLL_EVERY`].
    fn poll(&mut self);

    /// A running count for progress displays (samples, queries, pairs…).
    fn progress(&self) -> u64;

    /// What accumulated since the last snapshot, reset in the kernel;
    /// probes stay attached.
    fn snapshot(&mut self) -> Result<Self::Snapshot, Self::Error>;

    /// The last snapshot, read at the instant the capture ends, then detach.
    fn stop(self) -> Result<Self::Snapshot, Self::Error>;
}

/// The capabilities, by the name the CLI, the config and the HTTP API use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CaptureKind {
    Cpu,
    Offcpu,
    Memory,
    Queries,
    Syscalls,
    Tcp,
}

impl CaptureKind {
    pub const ALL: [Self; 6] = [
        Self::Cpu,
        Self::Offcpu,
        Self::Memory,
        Self::Queries,
        Self::Syscalls,
        Self::Tcp,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Offcpu => "offcpu",
            Self::Memory => "memory",
            Self::Queries => "queries",
            Self::Syscalls => "syscalls",
            Self::Tcp => "tcp",
        }
    }
}

impl fmt::Display for CaptureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown capability name.
#[derive(Debug, thiserror::Error)]
#[error("unknown kind {0:?}: expected one of cpu, offcpu, memory, queries, syscalls, tcp")]
pub struct UnknownKind(pub String);

impl FromStr for CaptureKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind parses back from its own name; anything else is refused by name.
    #[test]
    fn kinds_round_trip_and_unknown_is_named() {
        for kind in CaptureKind::ALL {
            assert_eq!(kind.as_str().parse::<CaptureKind>().unwrap(), kind);
        }
        let err = "gpu".parse::<CaptureKind>().unwrap_err().to_string();
        assert!(err.contains("\"gpu\"") && err.contains("offcpu"), "{err}");
    }
}
