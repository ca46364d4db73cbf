//! A one-line progress indicator on the terminal, silent otherwise (so that
//! logs and pipes get only the final summary).

use std::{
    io::{IsTerminal as _, Write as _},
    time::Duration,
};

pub struct Progress {
    enabled: bool,
}

impl Progress {
    /// Enabled only when both stdout and stderr are terminals.
    #[must_use]
    pub fn new() -> Self {
        Self {
            enabled: std::io::stdout().is_terminal() && std::io::stderr().is_terminal(),
        }
    }

    pub fn update(&self, left: Duration, count: u64, unit: &str) {
        if self.enabled {
            let mut err = std::io::stderr();
            let _ = write!(
                err,
                "\rrecording: {:>5.1}s left, {count} {unit}   ",
                left.as_secs_f64()
            );
            let _ = err.flush();
        }
    }

    pub fn finish(&self) {
        if self.enabled {
            eprintln!();
        }
    }
}
