//! Per-window deltas of the kernel's loss counters, which only ever grow
//! (they are shared by every capability of a loaded object, so a window
//! cannot reset them: it reports what they gained since the last one).

use std::collections::HashMap;

/// The counters one capability reports, and their totals at the last window.
#[derive(Debug, Default)]
pub struct DropDeltas {
    names: Vec<&'static str>,
    last: HashMap<&'static str, u64>,
}

impl DropDeltas {
    /// Follows the counters named `names` (the rest are another
    /// capability's business).
    #[must_use]
    pub fn new(names: impl IntoIterator<Item = &'static str>) -> Self {
        Self {
            names: names.into_iter().collect(),
            last: HashMap::new(),
        }
    }

    /// From the current totals (`(name, total)`, absent meaning 0), the
    /// non-zero gains since the previous call, in `names` order.
    pub fn window(&mut self, totals: &[(&'static str, u64)]) -> Vec<(&'static str, u64)> {
        let mut out = Vec::new();
        for &name in &self.names {
            let now = totals.iter().find(|(n, _)| *n == name).map_or(0, |t| t.1);
            let before = self.last.insert(name, now).unwrap_or(0);
            if now > before {
                out.push((name, now - before));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only gains of followed counters are reported, once each.
    #[test]
    fn reports_gains_once() {
        let mut d = DropDeltas::new(["a", "b"]);
        assert_eq!(d.window(&[("a", 3), ("c", 9)]), vec![("a", 3)]);
        assert_eq!(d.window(&[("a", 3), ("b", 1)]), vec![("b", 1)]);
        assert_eq!(d.window(&[("a", 10), ("b", 1)]), vec![("a", 7)]);
        assert!(d.window(&[("a", 10), ("b", 1)]).is_empty());
    }
}
