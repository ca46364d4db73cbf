//! Token-level rewrites that make one logical statement one fingerprint:
//! `IN (?, ?, ?)` and `ARRAY[?, ?]` become `IN (?)` / `ARRAY[?]`, and
//! the rows of a multi-row `VALUES` that repeat the first row are dropped.
//! Both only ever remove tokens, so the text never grows.

use super::lex::{Kind, Token};

/// A `?` made up by a collapse: no space before it.
const LIT: Token<'static> = Token {
    kind: Kind::Lit,
    text: "?",
    space: false,
    end: 0,
};

enum List {
    /// A closed list of literals; the index of the closing token.
    Closed(usize),
    /// Literals and commas up to the end of the tokens.
    Open,
    Not,
}

/// Whether `toks[open + 1..]` is `?, ?, ... ?` followed by `close`.
fn lit_list(toks: &[Token<'_>], open: usize, close: &str) -> List {
    let mut want_lit = true;
    for (i, t) in toks.iter().enumerate().skip(open + 1) {
        if want_lit {
            if t.kind != Kind::Lit {
                return List::Not;
            }
        } else if t.is_sym(close) {
            return List::Closed(i);
        } else if !t.is_sym(",") {
            return List::Not;
        }
        want_lit = !want_lit;
    }
    List::Open
}

/// `IN (?, ?)` → `IN (?)`, `ARRAY[?, ?]` → `ARRAY[?]`. A list cut by a
/// truncated capture collapses to `IN (?` so that the cut point inside it
/// does not change the fingerprint.
pub(super) fn collapse_lists<'a>(toks: &[Token<'a>], truncated: bool) -> Vec<Token<'a>> {
    let mut out = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i];
        out.push(t);
        i += 1;
        let close = if t.is_keyword("IN") && toks.get(i).is_some_and(|n| n.is_sym("(")) {
            ")"
        } else if t.is_keyword("ARRAY") && toks.get(i).is_some_and(|n| n.is_sym("[")) {
            "]"
        } else {
            continue;
        };
        match lit_list(toks, i, close) {
            List::Closed(c) => {
                out.push(toks[i]);
                out.push(LIT);
                out.push(Token {
                    space: false,
                    ..toks[c]
                });
                i = c + 1;
            }
            List::Open if truncated && i + 1 < toks.len() => {
                out.push(toks[i]);
                out.push(LIT);
                i = toks.len();
            }
            List::Open | List::Not => {}
        }
    }
    out
}

/// Index just past the parenthesized group opening at `start`, or `None`
/// if `toks[start]` is not `(` or the group is not closed.
fn group_end(toks: &[Token<'_>], start: usize) -> Option<usize> {
    if !toks.get(start)?.is_sym("(") {
        return None;
    }
    let mut depth = 0usize;
    for (i, t) in toks.iter().enumerate().skip(start) {
        if t.is_sym("(") {
            depth += 1;
        } else if t.is_sym(")") {
            depth -= 1;
            if depth == 0 {
                return Some(i + 1);
            }
        }
    }
    None
}

fn same_tokens(a: &[Token<'_>], b: &[Token<'_>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same(y))
}

/// `VALUES (?, ?), (?, ?)` → `VALUES (?, ?)`: rows equal to the first one
/// (up to spacing) are dropped. In a truncated capture a trailing comma or
/// a cut row that is a prefix of the first row goes too, so that a bulk
/// insert fingerprints alike wherever the capture cut it.
pub(super) fn dedupe_rows<'a>(toks: &[Token<'a>], truncated: bool) -> Vec<Token<'a>> {
    let mut out = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i];
        out.push(t);
        i += 1;
        if !t.is_keyword("VALUES") {
            continue;
        }
        let Some(first_end) = group_end(toks, i) else {
            continue;
        };
        let first = &toks[i..first_end];
        out.extend_from_slice(first);
        i = first_end;
        while toks.get(i).is_some_and(|t| t.is_sym(",")) {
            let row = i + 1;
            if row == toks.len() {
                if truncated {
                    i = row;
                }
                break;
            }
            let Some(end) = group_end(toks, row) else {
                let rest = &toks[row..];
                if truncated && rest.len() <= first.len() && same_tokens(rest, &first[..rest.len()])
                {
                    i = toks.len();
                }
                break;
            };
            if !same_tokens(first, &toks[row..end]) {
                out.extend_from_slice(&toks[i..end]);
            }
            i = end;
        }
    }
    out
}
