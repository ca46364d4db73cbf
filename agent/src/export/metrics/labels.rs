//! Label values made safe and bounded before they enter a series.
//!
//! The encoders of `prometheus-client` escape `\`, `"` and newlines; this
//! module bounds the length (a label value is part of every sample line and
//! of Prometheus's index, so one 4 KB value costs on every scrape) and
//! replaces control characters, which are legal but unreadable in a
//! dashboard legend.

/// Marker appended to a value cut at its length cap.
pub const CUT_MARKER: char = '…';

/// `value` with control characters replaced by spaces, cut to at most
/// `max_bytes` bytes (at a character boundary, the marker included) and
/// never empty (an empty label value is the same as no label at all).
#[must_use]
pub fn label_value(value: &str, max_bytes: usize) -> String {
    let clean = |c: char| if c.is_control() { ' ' } else { c };
    if value.is_empty() {
        return "unknown".to_owned();
    }
    if value.len() <= max_bytes {
        return value.chars().map(clean).collect();
    }
    let budget = max_bytes.saturating_sub(CUT_MARKER.len_utf8());
    let mut out = String::with_capacity(max_bytes);
    for c in value.chars().map(clean) {
        if out.len() + c.len_utf8() > budget {
            break;
        }
        out.push(c);
    }
    out.push(CUT_MARKER);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values are cut at the byte cap on a character boundary with the
    /// marker, control characters become spaces, empty becomes "unknown".
    #[test]
    fn bounded_and_clean() {
        assert_eq!(label_value("psql", 16), "psql");
        assert_eq!(label_value("exactly8", 8), "exactly8");
        let cut = label_value("abcdefghij", 8);
        assert_eq!(cut, "abcde…");
        assert!(cut.len() <= 8);
        let multi = label_value("ééééé", 7); // 2 bytes each
        assert_eq!(multi, "éé…");
        assert!(multi.len() <= 7);
        assert_eq!(label_value("a\nb\"c\\", 64), "a b\"c\\");
        assert_eq!(label_value("", 64), "unknown");
    }
}
