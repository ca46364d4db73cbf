//! A forgiving SQL lexer for the Postgres and SQLite dialects: it never
//! fails, it only classifies. Literals and parameters come out as
//! [`Kind::Lit`] (rendered `?`), comments and whitespace as a flag on the
//! next token. Every position it slices at is an ASCII byte or the end of
//! the text, so slicing never splits a UTF-8 sequence; `get` guards anyway.

/// What a token is, which decides how it is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A literal or a parameter: rendered `?`.
    Lit,
    /// A word from [`KEYWORDS`]: rendered in upper case.
    Keyword,
    /// An unquoted identifier (or any other word): kept as written.
    Ident,
    /// A `"double"` or `` `backtick` `` quoted identifier: kept verbatim.
    Quoted,
    /// Punctuation or an operator character (`::` and `:=` are one token).
    Sym,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Token<'a> {
    pub kind: Kind,
    /// The source text (for `Lit` only used while lexing, never rendered).
    pub text: &'a str,
    /// Whitespace or a comment came before it.
    pub space: bool,
    /// Byte offset just past the token, to tell whether a truncated capture
    /// cut it.
    pub end: usize,
}

impl Token<'_> {
    pub fn is_sym(&self, s: &str) -> bool {
        self.kind == Kind::Sym && self.text == s
    }

    pub fn is_keyword(&self, k: &str) -> bool {
        self.kind == Kind::Keyword && self.text.eq_ignore_ascii_case(k)
    }

    /// The same token up to spacing and keyword case (literals are all alike).
    pub fn same(&self, other: &Token<'_>) -> bool {
        self.kind == other.kind
            && match self.kind {
                Kind::Lit => true,
                Kind::Keyword => self.text.eq_ignore_ascii_case(other.text),
                Kind::Ident | Kind::Quoted | Kind::Sym => self.text == other.text,
            }
    }
}

/// Words rendered in upper case: SQL keywords common to Postgres and
/// SQLite. Sorted (a test checks) for binary search. Words that are often
/// column names too (`key`, `first`, `row`, `filter`, `view`...) are left
/// out so that identifiers keep their case.
const KEYWORDS: &[&str] = &[
    "ABORT",
    "ADD",
    "ALL",
    "ALTER",
    "ANALYZE",
    "AND",
    "ANY",
    "ARRAY",
    "AS",
    "ASC",
    "BEGIN",
    "BETWEEN",
    "BY",
    "CASCADE",
    "CASE",
    "CAST",
    "CHECK",
    "COLLATE",
    "COLUMN",
    "COMMIT",
    "CONFLICT",
    "CONSTRAINT",
    "COPY",
    "CREATE",
    "CROSS",
    "CURRENT_DATE",
    "CURRENT_TIME",
    "CURRENT_TIMESTAMP",
    "DEALLOCATE",
    "DEFAULT",
    "DELETE",
    "DESC",
    "DISTINCT",
    "DROP",
    "ELSE",
    "END",
    "ESCAPE",
    "EXCEPT",
    "EXECUTE",
    "EXISTS",
    "EXPLAIN",
    "FETCH",
    "FOR",
    "FOREIGN",
    "FROM",
    "FULL",
    "GLOB",
    "GROUP",
    "HAVING",
    "IF",
    "ILIKE",
    "IN",
    "INDEX",
    "INNER",
    "INSERT",
    "INTERSECT",
    "INTO",
    "IS",
    "ISNULL",
    "JOIN",
    "LATERAL",
    "LEFT",
    "LIKE",
    "LIMIT",
    "NATURAL",
    "NOT",
    "NOTNULL",
    "NULL",
    "NULLS",
    "OFFSET",
    "ON",
    "ONLY",
    "OR",
    "ORDER",
    "OUTER",
    "OVER",
    "PARTITION",
    "PRAGMA",
    "PREPARE",
    "PRIMARY",
    "RECURSIVE",
    "REFERENCES",
    "REGEXP",
    "RELEASE",
    "RETURNING",
    "RIGHT",
    "ROLLBACK",
    "SAVEPOINT",
    "SELECT",
    "SET",
    "SHOW",
    "TABLE",
    "THEN",
    "TRANSACTION",
    "TRUNCATE",
    "UNION",
    "UNIQUE",
    "UPDATE",
    "USING",
    "VACUUM",
    "VALUES",
    "WHEN",
    "WHERE",
    "WINDOW",
    "WITH",
    "WITHOUT",
];

/// Keywords that end an expression: a `-` after them is a binary minus.
const VALUE_KEYWORDS: &[&str] = &[
    "CURRENT_DATE",
    "CURRENT_TIME",
    "CURRENT_TIMESTAMP",
    "END",
    "NULL",
];

fn is_keyword(word: &str) -> bool {
    const LONGEST: usize = 24;
    if word.len() > LONGEST || !word.is_ascii() {
        return false;
    }
    let mut buf = [0u8; LONGEST];
    let upper = &mut buf[..word.len()];
    upper.copy_from_slice(word.as_bytes());
    upper.make_ascii_uppercase();
    KEYWORDS
        .binary_search_by(|k| k.as_bytes().cmp(upper))
        .is_ok()
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_cont(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Whether a value may start here, i.e. a `-` is a sign and `:name` a
/// parameter: at the start, after an operator, `(`, `,` or a keyword that
/// does not end an expression.
fn expr_start(prev: Option<&Token<'_>>) -> bool {
    match prev {
        None => true,
        Some(t) => match t.kind {
            Kind::Lit | Kind::Ident | Kind::Quoted => false,
            Kind::Keyword => !VALUE_KEYWORDS
                .iter()
                .any(|k| t.text.eq_ignore_ascii_case(k)),
            Kind::Sym => !matches!(t.text, ")" | "]"),
        },
    }
}

struct Lexer<'a> {
    src: &'a str,
    b: &'a [u8],
}

impl<'a> Lexer<'a> {
    fn at(&self, i: usize) -> u8 {
        self.b.get(i).copied().unwrap_or(0)
    }

    fn slice(&self, from: usize, to: usize) -> &'a str {
        self.src.get(from..to.min(self.b.len())).unwrap_or("")
    }

    fn skip_while(&self, mut i: usize, f: impl Fn(u8) -> bool) -> usize {
        while i < self.b.len() && f(self.b[i]) {
            i += 1;
        }
        i
    }

    /// Past the end of a `/* */` comment starting at `i`; nested as in
    /// Postgres; an unterminated one runs to the end.
    fn block_comment_end(&self, mut i: usize) -> usize {
        let mut depth = 0usize;
        while i < self.b.len() {
            match (self.b[i], self.at(i + 1)) {
                (b'/', b'*') => {
                    depth += 1;
                    i += 2;
                }
                (b'*', b'/') => {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        return i;
                    }
                }
                _ => i += 1,
            }
        }
        self.b.len()
    }

    /// Past the closing quote of a string opened at `q`; `''` is a quote,
    /// and with `backslash` (E'..') so is `\'`. Unterminated: the end.
    fn string_end(&self, q: usize, backslash: bool) -> usize {
        let mut j = q + 1;
        while j < self.b.len() {
            match self.b[j] {
                b'\\' if backslash => j += 2,
                b'\'' if self.at(j + 1) == b'\'' => j += 2,
                b'\'' => return j + 1,
                _ => j += 1,
            }
        }
        self.b.len()
    }

    /// Past the closing delimiter of an identifier quoted with `d` (doubled
    /// inside), or `None` if there is none.
    fn quoted_end(&self, q: usize, d: u8) -> Option<usize> {
        let mut j = q + 1;
        while j < self.b.len() {
            if self.b[j] == d {
                if self.at(j + 1) == d {
                    j += 2;
                    continue;
                }
                return Some(j + 1);
            }
            j += 1;
        }
        None
    }

    /// Past a number starting at `i` (decimal, `.5`, exponent, `0x`/`0o`/`0b`,
    /// `_` separators), including any letters glued to it: both dialects
    /// reject `123abc`, and swallowing it keeps digits out of the output.
    fn number_end(&self, i: usize) -> usize {
        let radix_digit = |c: u8| c.is_ascii_hexdigit();
        let mut j = i;
        if self.at(j) == b'0'
            && matches!(self.at(j + 1), b'x' | b'X' | b'o' | b'O' | b'b' | b'B')
            && radix_digit(self.at(j + 2))
        {
            j += 2;
        } else {
            j = self.skip_while(j, |c| c.is_ascii_digit() || c == b'_');
            if self.at(j) == b'.' {
                j = self.skip_while(j + 1, |c| c.is_ascii_digit() || c == b'_');
            }
            if matches!(self.at(j), b'e' | b'E') {
                let k = if matches!(self.at(j + 1), b'+' | b'-') {
                    j + 2
                } else {
                    j + 1
                };
                if self.at(k).is_ascii_digit() {
                    j = k;
                }
            }
        }
        self.skip_while(j, is_ident_cont)
    }

    /// A `$`: `$1` parameter, `$$..$$` or `$tag$..$tag$` string, SQLite's
    /// `$name` parameter, or a lone `$`.
    fn dollar(&self, i: usize) -> (Kind, usize) {
        let next = self.at(i + 1);
        if next.is_ascii_digit() {
            return (Kind::Lit, self.skip_while(i + 1, |c| c.is_ascii_digit()));
        }
        if next != b'$' && !is_ident_start(next) {
            return (Kind::Sym, i + 1);
        }
        let tag_end = self.skip_while(i + 1, |c| is_ident_cont(c) && c != b'$');
        if self.at(tag_end) != b'$' {
            return (Kind::Lit, tag_end); // $name
        }
        let delim = self.slice(i, tag_end + 1);
        let body = tag_end + 1;
        let end = self
            .src
            .get(body..)
            .and_then(|rest| rest.find(delim))
            .map_or(self.b.len(), |k| body + k + delim.len());
        (Kind::Lit, end)
    }

    /// A word: keyword, identifier, TRUE/FALSE, or the prefix of a string
    /// (E'..', X'..', B'..', N'..', U&'..').
    fn word(&self, i: usize) -> (Kind, usize) {
        let end = self.skip_while(i, is_ident_cont);
        let word = self.slice(i, end);
        let next = self.at(end);
        if next == b'\'' && word.len() == 1 && b"eExXbBnN".contains(&self.b[i]) {
            let backslash = matches!(self.b[i], b'e' | b'E');
            return (Kind::Lit, self.string_end(end, backslash));
        }
        if word.eq_ignore_ascii_case("u") && next == b'&' && self.at(end + 1) == b'\'' {
            return (Kind::Lit, self.string_end(end + 1, false));
        }
        if word.eq_ignore_ascii_case("true") || word.eq_ignore_ascii_case("false") {
            return (Kind::Lit, end);
        }
        let kind = if is_keyword(word) {
            Kind::Keyword
        } else {
            Kind::Ident
        };
        (kind, end)
    }

    /// The token starting at `i` (not whitespace, not a comment).
    fn token(&self, i: usize, prev: Option<&Token<'_>>) -> (Kind, usize) {
        let c = self.b[i];
        let next = self.at(i + 1);
        let prev_byte = if i == 0 { b' ' } else { self.b[i - 1] };
        let value_here = expr_start(prev);
        match c {
            b'\'' => (Kind::Lit, self.string_end(i, false)),
            b'"' | b'`' => self
                .quoted_end(i, c)
                .map_or((Kind::Sym, i + 1), |e| (Kind::Quoted, e)),
            b'0'..=b'9' => (Kind::Lit, self.number_end(i)),
            b'.' if next.is_ascii_digit()
                && !(is_ident_cont(prev_byte)
                    || matches!(prev_byte, b'"' | b'`' | b')' | b']')) =>
            {
                (Kind::Lit, self.number_end(i))
            }
            b'+' | b'-'
                if value_here
                    && (next.is_ascii_digit()
                        || (next == b'.' && self.at(i + 2).is_ascii_digit())) =>
            {
                (Kind::Lit, self.number_end(i + 1))
            }
            b'?' => (Kind::Lit, self.skip_while(i + 1, |c| c.is_ascii_digit())),
            b'$' => self.dollar(i),
            b':' if matches!(next, b':' | b'=') => (Kind::Sym, i + 2),
            b':' if value_here && is_ident_start(next) => {
                (Kind::Lit, self.skip_while(i + 1, is_ident_cont))
            }
            b'@' if value_here && is_ident_start(next) && !b"<>@&|#~!^".contains(&prev_byte) => {
                (Kind::Lit, self.skip_while(i + 1, is_ident_cont))
            }
            c if is_ident_start(c) => self.word(i),
            _ => (Kind::Sym, i + 1),
        }
    }
}

/// Splits `src` into tokens; comments and whitespace only set `space` on
/// the token after them. Never fails; linear in the length of `src`.
pub(super) fn lex(src: &str) -> Vec<Token<'_>> {
    let lx = Lexer {
        src,
        b: src.as_bytes(),
    };
    let mut toks: Vec<Token<'_>> = Vec::new();
    let mut space = false;
    let mut i = 0;
    while i < lx.b.len() {
        let c = lx.b[i];
        if is_space(c) {
            space = true;
            i += 1;
            continue;
        }
        if c == b'-' && lx.at(i + 1) == b'-' {
            space = true;
            i = lx.skip_while(i, |c| c != b'\n');
            continue;
        }
        if c == b'/' && lx.at(i + 1) == b'*' {
            space = true;
            i = lx.block_comment_end(i);
            continue;
        }
        let (kind, end) = lx.token(i, toks.last());
        // Every branch of `token` consumes at least one byte; `max` makes
        // progress certain even so.
        let end = end.max(i + 1).min(lx.b.len());
        toks.push(Token {
            kind,
            text: lx.slice(i, end),
            space,
            end,
        });
        space = false;
        i = end;
    }
    toks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binary search over the keyword list needs it sorted and unique.
    #[test]
    fn keywords_sorted() {
        assert!(KEYWORDS.windows(2).all(|w| w[0] < w[1]));
        assert!(VALUE_KEYWORDS.iter().all(|k| KEYWORDS.contains(k)));
        assert!(is_keyword("select") && is_keyword("Current_Timestamp"));
        assert!(!is_keyword("users") && !is_keyword("sélect"));
    }

    /// `::` casts and `:=` are operators, not `:name` parameters.
    #[test]
    fn casts_are_not_parameters() {
        let kinds: Vec<Kind> = lex("a::int").iter().map(|t| t.kind).collect();
        assert_eq!(kinds, [Kind::Ident, Kind::Sym, Kind::Ident]);
    }
}
