//! `/metrics`: the agent's health counters (the full registry is
//! `export::metrics`, fed by the windows).

use std::{fmt::Write as _, sync::atomic::Ordering};

use super::Shared;

/// Content type and body of a scrape.
pub fn encode(shared: &Shared, _accept: Option<&str>) -> (&'static str, String) {
    let h = &shared.health;
    let mut out = String::new();
    for (name, help, v) in [
        (
            "qprof_windows_written",
            "Continuous windows written.",
            &h.windows_written,
        ),
        (
            "qprof_window_write_errors",
            "Continuous windows that could not be written.",
            &h.window_write_errors,
        ),
        (
            "qprof_captures_taken",
            "On-demand captures finished.",
            &h.captures_taken,
        ),
        (
            "qprof_task_restarts",
            "Capability tasks restarted after a panic or failure.",
            &h.task_restarts,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name}_total {}",
            v.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(out, "# EOF");
    (
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        out,
    )
}
