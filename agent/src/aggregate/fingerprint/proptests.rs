//! Property tests: the fingerprinter sees whatever bytes a traced process
//! hands to libpq or libsqlite3, so it must hold up on any input.

use proptest::prelude::*;

use super::*;

/// Pieces that steer the lexer into its corners: quotes, comments and
/// dollar-quotes opened and not closed, escapes, NUL, invalid UTF-8, cut
/// multi-byte sequences, lists and rows.
const NASTY: &[&[u8]] = &[
    b"'",
    b"''",
    b"\"",
    b"`",
    b"$$",
    b"$a$",
    b"$1",
    b"$",
    b"/*",
    b"*/",
    b"--",
    b"\n",
    b"(",
    b")",
    b"[",
    b"]",
    b",",
    b";",
    b"E'",
    b"x'",
    b"U&'",
    b"\\",
    b"\0",
    b"\xff",
    b"\xe2\x82",
    b"\xc3",
    b"\xe2\x80\xa6",
    b"IN",
    b"in",
    b"VALUES",
    b"ARRAY",
    b"-",
    b"+",
    b":",
    b"::",
    b"@",
    b"?",
    b"?1",
    b".",
    b"0x",
    b"1e",
    b"1.5",
    b"42",
    b"-7",
    b"SELECT",
    b"NULL",
    b"true",
    b"a",
    b"e",
    b" ",
    b"\t",
    b"<@",
    b"=",
    b"*",
    b"END",
];

fn nasty_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => proptest::sample::select(NASTY).prop_map(<[u8]>::to_vec),
        1 => proptest::collection::vec(any::<u8>(), 0..8),
    ];
    proptest::collection::vec(piece, 0..80).prop_map(|v| v.concat())
}

fn nasty_str() -> impl Strategy<Value = String> {
    nasty_bytes().prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Deeply nested or repeated constructs, thousands deep.
const OPENERS: &[&[u8]] = &[b"(", b"/*", b"IN (", b"VALUES (", b"ARRAY["];

fn deep() -> impl Strategy<Value = Vec<u8>> {
    (1usize..3000, proptest::sample::select(OPENERS))
        .prop_map(|(n, open)| [open.repeat(n), b"1, ".to_vec(), b")".repeat(n)].concat())
}

/// SQL from identifiers without digits and literals full of them: the
/// output must keep no digit, whatever the literal's form.
fn digitless_sql() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        proptest::sample::select(
            &[
                "SELECT", "from", "WHERE", "and", "IN", "VALUES", "NULL", "=", ",", "(", ")", "+",
                "*", "-", "||"
            ][..]
        )
        .prop_map(str::to_owned),
        "[a-z_]{1,8}",
        "-?[0-9]{1,6}(\\.[0-9]{1,3})?([eE]-?[0-9]{1,2})?",
        "0x[0-9A-F]{1,6}",
        "'([a-z0-9 ]|''){0,8}'",
        "[0-9]{0,6}".prop_map(|d| format!(r"E'\\{d}\''")),
        "\\$\\$[0-9 ]{0,6}\\$\\$",
        "\\$[0-9]{1,3}",
        "\\?[0-9]{0,3}",
        "X'[0-9A-F]{0,8}'",
        "-- [0-9 ]{0,6}\n",
        "/\\* [0-9 ]{0,6} \\*/",
    ];
    proptest::collection::vec(word, 0..40).prop_map(|w| w.join(" "))
}

fn check_bounds(input: &[u8], truncated: bool) -> Result<Normalized, TestCaseError> {
    let n = normalize_captured(input, truncated);
    prop_assert!(
        n.text.len() <= input.len() + TRUNCATION_MARKER.len(),
        "{} > {}",
        n.text.len(),
        input.len()
    );
    prop_assert_eq!(n.id, fnv1a64(n.text.as_bytes()));
    prop_assert!(!n.text.contains('\0'));
    prop_assert!(!n.text.starts_with(' ') && !n.text.ends_with(' '));
    if truncated && !input.contains(&0) {
        prop_assert!(n.truncated && n.text.ends_with('…'));
    }
    Ok(n)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Arbitrary bytes never panic, and the text stays within its bound.
    #[test]
    fn any_bytes(input in proptest::collection::vec(any::<u8>(), 0..600), truncated: bool) {
        check_bounds(&input, truncated)?;
    }

    /// Lexer corner cases, glued together at random, never panic.
    #[test]
    fn nasty_pieces(input in nasty_bytes(), truncated: bool) {
        check_bounds(&input, truncated)?;
    }

    /// Thousands of nested parentheses, comments or lists cost no stack.
    #[test]
    fn deep_nesting(input in deep(), truncated: bool) {
        check_bounds(&input, truncated)?;
    }

    /// Normalizing normalized text changes nothing (valid UTF-8 input).
    #[test]
    fn idempotent(input in prop_oneof![nasty_str(), "[ -~\n\t]{0,200}", digitless_sql()]) {
        let once = normalize(input.as_bytes());
        prop_assert!(!once.truncated);
        let twice = normalize(once.text.as_bytes());
        prop_assert_eq!(&twice.text, &once.text, "input {:?}", input);
        prop_assert_eq!(twice.id, once.id);
    }

    /// A cut capture's text is stable and idempotent too, marker included.
    #[test]
    fn truncated_stable(input in "[ -~\n]{0,200}") {
        let once = normalize_captured(input.as_bytes(), true);
        prop_assert_eq!(&normalize_captured(input.as_bytes(), true), &once);
        prop_assert_eq!(&normalize(once.text.as_bytes()).text, &once.text);
    }

    /// No digit of a numeric, string, blob or parameter literal survives.
    #[test]
    fn literals_never_leak(input in digitless_sql(), truncated: bool) {
        let n = check_bounds(input.as_bytes(), truncated)?;
        prop_assert!(!n.text.bytes().any(|b| b.is_ascii_digit()), "{:?} -> {:?}", input, n.text);
    }
}
