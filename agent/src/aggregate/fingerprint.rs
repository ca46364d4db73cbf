//! Statement fingerprints: query text as captured from a process (any bytes:
//! invalid UTF-8, NULs, cut mid-token) normalized so that one logical
//! statement gives one text and one stable id, with every literal gone.
//!
//! Normalization is the only way query text enters the aggregates: the raw
//! text, with its literals, is never stored (ARCHITECTURE.md, security).
//!
//! The rules, for Postgres and SQLite:
//! - literals become `?`: numbers (with a unary sign, `0x1F`, `1e-3`),
//!   strings (`'..'`, `E'..'`, `$$..$$`, `$tag$..$tag$`), blobs (`X'..'`),
//!   `TRUE`/`FALSE`; so do parameters (`$1`, `?`, `?7`, `:name`, `@name`,
//!   `$name`); `NULL` stays;
//! - `IN (?, ?)` and `ARRAY[?, ?]` collapse to one `?`, repeated rows of a
//!   multi-row `VALUES` to the first;
//! - comments go, whitespace runs become one space (none after `(`/`[` or
//!   before `)`/`]`/`,`), the text is trimmed and trailing `;` dropped;
//! - keywords (a fixed list) are upper-cased, identifiers kept as written,
//!   quoted identifiers verbatim;
//! - the text ends at the first NUL (both libraries stop there).
//!
//! Spacing is otherwise kept, so `a=1` and `a = 1` are two fingerprints:
//! canonical spacing would make the text longer than the input.

mod collapse;
mod lex;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use lex::{Kind, Token};

/// Appended to the text of a statement the capture cut short.
pub const TRUNCATION_MARKER: &str = " …";

/// A normalized statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// The statement with literals replaced by `?`; ends with
    /// [`TRUNCATION_MARKER`] when `truncated`.
    pub text: String,
    /// FNV-1a 64 of `text`: stable across runs, hosts and Rust versions.
    pub id: u64,
    /// The capture was cut, so `text` stops at the last complete token.
    pub truncated: bool,
}

/// Normalizes a complete statement.
#[must_use]
pub fn normalize(sql: &[u8]) -> Normalized {
    normalize_captured(sql, false)
}

/// Normalizes captured bytes; `truncated` says the capture buffer was full,
/// so the last token may be cut: it is dropped, and the text marked. The
/// same statement cut at the same length always gives the same text and id.
///
/// Never panics; linear in `sql.len()`; the text is at most
/// `sql.len() + TRUNCATION_MARKER.len()` bytes (invalid UTF-8, which would
/// grow as replacement characters, is cut and marked beyond that).
#[must_use]
pub fn normalize_captured(sql: &[u8], truncated: bool) -> Normalized {
    let (sql, truncated) = match sql.iter().position(|&b| b == 0) {
        Some(nul) => (&sql[..nul], false),
        None => (sql, truncated),
    };
    let src = String::from_utf8_lossy(sql);
    let mut toks = lex::lex(&src);
    if truncated && toks.last().is_some_and(|t| t.end >= src.len()) {
        toks.pop();
    }
    while toks.last().is_some_and(|t| t.is_sym(";")) {
        toks.pop();
    }
    let toks = collapse::collapse_lists(&toks, truncated);
    let toks = collapse::dedupe_rows(&toks, truncated);
    let (mut text, cut) = render(&toks, sql.len());
    let truncated = truncated || cut;
    if truncated {
        // No space after an opening bracket: the renderer would drop it
        // when the text is normalized again.
        let bare = text.is_empty() || text.ends_with(['(', '[']);
        text.push_str(if bare {
            TRUNCATION_MARKER.trim_start()
        } else {
            TRUNCATION_MARKER
        });
    }
    Normalized {
        id: fnv1a64(text.as_bytes()),
        text,
        truncated,
    }
}

/// Joins the tokens, stopping before the one that would take the text past
/// `limit` bytes (then the second value is true).
fn render(toks: &[Token<'_>], limit: usize) -> (String, bool) {
    let mut out = String::with_capacity(limit.min(64 * 1024));
    let mut prev: Option<&Token<'_>> = None;
    for t in toks {
        let space = t.space
            && prev.is_some_and(|p| !(p.is_sym("(") || p.is_sym("[")))
            && !(t.is_sym(")") || t.is_sym("]") || t.is_sym(","));
        let body = if t.kind == Kind::Lit { "?" } else { t.text };
        if out.len() + usize::from(space) + body.len() > limit {
            return (out, true);
        }
        if space {
            out.push(' ');
        }
        if t.kind == Kind::Keyword {
            out.extend(body.chars().map(|c| c.to_ascii_uppercase()));
        } else {
            out.push_str(body);
        }
        prev = Some(t);
    }
    (out, false)
}

/// FNV-1a, 64 bits: fixed constants, so ids are the same everywhere.
#[must_use]
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// The `fingerprint_id` users see and pass to `--query`: 16 lowercase hex
/// digits.
#[must_use]
pub fn id_hex(id: u64) -> String {
    format!("{id:016x}")
}

/// Parses an [`id_hex`] string back (1 to 16 hex digits, either case).
#[must_use]
pub fn parse_id_hex(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}
