use super::*;

fn norm(s: &str) -> String {
    normalize(s.as_bytes()).text
}

/// Input and expected text, rule by rule.
const CASES: &[(&str, &str)] = &[
    // pgbench's statements, simple protocol and prepared.
    (
        "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
        "SELECT abalance FROM pgbench_accounts WHERE aid = ?",
    ),
    (
        "UPDATE pgbench_accounts SET abalance = abalance + -4711 WHERE aid = 99;",
        "UPDATE pgbench_accounts SET abalance = abalance + ? WHERE aid = ?",
    ),
    (
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        "SELECT abalance FROM pgbench_accounts WHERE aid = ?",
    ),
    (
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP);",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (?, ?, ?, ?, CURRENT_TIMESTAMP)",
    ),
    ("BEGIN;", "BEGIN"),
    ("END;", "END"),
    // Numbers.
    (
        "select 3.14, .5, 1e10, 2.5E-3, 1_000",
        "SELECT ?, ?, ?, ?, ?",
    ),
    ("SELECT 0x1F, 0XdeadBEEF, 0o17, 0b101", "SELECT ?, ?, ?, ?"),
    (
        "SELECT a - 1, a-1, -1, (-2), x * -3.5",
        "SELECT a - ?, a-?, ?, (?), x * ?",
    ),
    ("SELECT 123abc", "SELECT ?"),
    ("SELECT t.5, t1.c2", "SELECT t.?, t1.c2"),
    // Strings.
    (
        "SELECT 'it''s', E'a\\'b', 'x' || 'y'",
        "SELECT ?, ?, ? || ?",
    ),
    (
        "SELECT $$a 'quoted' $ 1$$, $fn$ body $$ 2 $fn$",
        "SELECT ?, ?",
    ),
    (
        "SELECT X'ABCD', x'00', B'0101', N'n', U&'d\\0061t'",
        "SELECT ?, ?, ?, ?, ?",
    ),
    ("SELECT TRUE, false, NULL, null", "SELECT ?, ?, NULL, NULL"),
    // Parameters.
    (
        "SELECT * FROM t WHERE a = ? AND b = ?12 AND c = $3",
        "SELECT * FROM t WHERE a = ? AND b = ? AND c = ?",
    ),
    (
        "SELECT * FROM t WHERE a = :name AND b = @who AND c = $v",
        "SELECT * FROM t WHERE a = ? AND b = ? AND c = ?",
    ),
    (
        "SELECT a::int, b::text[] FROM t",
        "SELECT a::int, b::text[] FROM t",
    ),
    (
        "SELECT x[1:2], y <@ z, j ? 'k' FROM t",
        "SELECT x[?:?], y <@ z, j ? ? FROM t",
    ),
    // Lists.
    (
        "SELECT * FROM t WHERE id IN (1, 2, 3)",
        "SELECT * FROM t WHERE id IN (?)",
    ),
    (
        "SELECT * FROM t WHERE id NOT IN ( $1,$2 )",
        "SELECT * FROM t WHERE id NOT IN (?)",
    ),
    (
        "SELECT * FROM t WHERE id IN (SELECT a FROM u)",
        "SELECT * FROM t WHERE id IN (SELECT a FROM u)",
    ),
    (
        "SELECT * FROM t WHERE id IN (1, a)",
        "SELECT * FROM t WHERE id IN (?, a)",
    ),
    (
        "SELECT * FROM t WHERE id = ANY(ARRAY[1,2,3])",
        "SELECT * FROM t WHERE id = ANY(ARRAY[?])",
    ),
    (
        "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3,'c')",
        "INSERT INTO t VALUES (?, ?)",
    ),
    (
        "INSERT INTO t VALUES (1, 'a'), (2, NULL)",
        "INSERT INTO t VALUES (?, ?), (?, NULL)",
    ),
    (
        "insert into t(a) values(?1),(?2)",
        "INSERT INTO t(a) VALUES(?)",
    ),
    // Whitespace, case, comments, semicolons.
    (
        "  select\n\t*   from   Users  where  Name =  'x'  ;  ",
        "SELECT * FROM Users WHERE Name = ?",
    ),
    ("SELECT a -- trailing 42\nFROM t", "SELECT a FROM t"),
    (
        "SELECT /* a /* nested 1 */ still 2 */ a FROM t",
        "SELECT a FROM t",
    ),
    ("SELECT a/*c*/FROM t", "SELECT a FROM t"),
    ("SELECT f( a , b ) FROM t", "SELECT f(a, b) FROM t"),
    ("SELECT 1;;", "SELECT ?"),
    ("BEGIN; SELECT 1; COMMIT;", "BEGIN; SELECT ?; COMMIT"),
    // Identifiers.
    (
        r#"SELECT "Weird Col", "a""b" FROM "T1""#,
        r#"SELECT "Weird Col", "a""b" FROM "T1""#,
    ),
    (
        "SELECT `col 1` FROM [my col]",
        "SELECT `col 1` FROM [my col]",
    ),
    (
        "SELECT Count(*) FROM MyTable",
        "SELECT Count(*) FROM MyTable",
    ),
    ("SELECT a$1, _b FROM t", "SELECT a$1, _b FROM t"),
    // SQLite flavours.
    ("PRAGMA journal_mode = wal", "PRAGMA journal_mode = wal"),
    ("pragma cache_size=-2000", "PRAGMA cache_size=?"),
    (
        "INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)",
        "INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)",
    ),
    (
        "create table if not exists t (id integer primary key, v text default 'x')",
        "CREATE TABLE IF NOT EXISTS t (id integer PRIMARY key, v text DEFAULT ?)",
    ),
    // Odd input.
    ("", ""),
    ("   ;  ", ""),
    ("SELECT 'unterminated", "SELECT ?"),
    ("SELECT \"unterminated 5", "SELECT \"unterminated ?"),
    ("SELECT /* unterminated 5", "SELECT"),
    ("SELECT $tag$ unterminated 5", "SELECT ?"),
    ("SELECT $ 5", "SELECT $ ?"),
];

/// Each normalization rule, in both dialects, on one table of cases.
#[test]
fn normalization_table() {
    let mut failures = Vec::new();
    for (input, want) in CASES {
        let got = norm(input);
        if got != *want {
            failures.push(format!("{input:?}\n   got  {got:?}\n   want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Spellings of one logical statement share one id.
#[test]
fn same_statement_same_id() {
    let groups: &[&[&str]] = &[
        &[
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
            "select abalance from pgbench_accounts where aid = 1",
            "SELECT  abalance\nFROM pgbench_accounts -- hot path\nWHERE aid = $1",
            "SELECT abalance FROM pgbench_accounts /* x */ WHERE aid = :aid",
            "SELECT abalance FROM pgbench_accounts WHERE aid = -7",
        ],
        &[
            "SELECT * FROM t WHERE id IN (1,2,3)",
            "SELECT * FROM t WHERE id IN (4)",
            "select * from t where id in ($1, $2, $3, $4)",
            "SELECT * FROM t WHERE id IN ( 'a' , 'b' )",
        ],
        &[
            "INSERT INTO t (a, b) VALUES (1, 'x')",
            "INSERT INTO t (a, b) VALUES (2, 'y'), (3, 'z')",
            "insert into t (a, b) values (?, ?)",
        ],
        &[
            "SELECT 'a'",
            "SELECT $$a$$",
            "SELECT E'\\n'",
            "SELECT x'00'",
            "SELECT true",
            "SELECT 0x10",
        ],
    ];
    for group in groups {
        let ids: Vec<u64> = group.iter().map(|s| normalize(s.as_bytes()).id).collect();
        assert!(ids.iter().all(|&id| id == ids[0]), "{group:?}: {ids:x?}");
    }
}

/// Different statements get different ids.
#[test]
fn different_statements_different_ids() {
    let statements = [
        "SELECT a FROM t WHERE id = 1",
        "SELECT b FROM t WHERE id = 1",
        "SELECT a FROM u WHERE id = 1",
        "SELECT a FROM t WHERE id > 1",
        "SELECT a FROM t WHERE id = 1 AND x = 2",
        "SELECT a FROM t WHERE id IN (SELECT 1)",
        "SELECT a FROM t WHERE id IS NULL",
        "UPDATE t SET a = 1",
        "DELETE FROM t",
        "INSERT INTO t VALUES (1)",
        "INSERT INTO t VALUES (1, 2)",
        r#"SELECT "A" FROM t"#,
        r#"SELECT "a" FROM t"#,
        "SELECT f(1, 2)",
        "SELECT f(1)",
    ];
    let mut ids: Vec<u64> = statements
        .iter()
        .map(|s| normalize(s.as_bytes()).id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), statements.len());
}

/// The id is FNV-1a 64 of the text (pinned values: ids must never change
/// between releases, users keep them in scripts).
#[test]
fn id_is_stable() {
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    let n = normalize(b"SELECT 1");
    assert_eq!(n.text, "SELECT ?");
    assert_eq!(n.id, fnv1a64(b"SELECT ?"));
    assert_eq!(id_hex(n.id).len(), 16);
    assert_eq!(id_hex(0xab), "00000000000000ab");
    assert_eq!(parse_id_hex(&id_hex(n.id)), Some(n.id));
    assert_eq!(parse_id_hex("xyz"), None);
    assert_eq!(parse_id_hex("+1"), None);
}

/// A cut capture drops the cut token, is marked, and gives the same id for
/// the same cut; cuts inside an IN list or VALUES rows agree.
#[test]
fn truncation() {
    let t = normalize_captured(
        b"SELECT abalance FROM pgbench_accounts WHERE aid = 482",
        true,
    );
    assert!(t.truncated);
    assert_eq!(
        t.text,
        "SELECT abalance FROM pgbench_accounts WHERE aid = …"
    );
    let again = normalize_captured(
        b"SELECT abalance FROM pgbench_accounts WHERE aid = 48213",
        true,
    );
    assert_eq!(t.id, again.id);
    assert_ne!(
        t.id,
        normalize(b"SELECT abalance FROM pgbench_accounts WHERE aid = 482").id
    );

    // Cut mid-identifier: the partial word goes.
    assert_eq!(normalize_captured(b"SELECT abal", true).text, "SELECT …");
    // Cut inside a string: the literal (and its text) goes.
    assert_eq!(normalize_captured(b"SELECT 'secret", true).text, "SELECT …");
    // Cut mid UTF-8 sequence.
    assert_eq!(
        normalize_captured(
            "SELECT 'é' FROM tä"
                .as_bytes()
                .split_last()
                .map_or(&[][..], |(_, r)| r),
            true
        )
        .text,
        "SELECT ? FROM …"
    );
    // Lists and rows, cut anywhere, collapse alike.
    let ins = "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'), (3, 'z'), (4, 'w')";
    let list = "SELECT * FROM t WHERE id IN (101, 102, 103, 104, 105)";
    let cases = [
        (
            ins,
            ins.find("), (").unwrap_or(0) + 2,
            "INSERT INTO t (a, b) VALUES (?, ?) …",
        ),
        (
            list,
            list.find('(').unwrap_or(0) + 5,
            "SELECT * FROM t WHERE id IN (? …",
        ),
    ];
    for (stmt, start, want) in cases {
        for cut in start..stmt.len() - 1 {
            let n = normalize_captured(&stmt.as_bytes()[..cut], true);
            assert_eq!(n.text, want, "cut at {cut}: {:?}", &stmt[..cut]);
        }
    }
    // Nothing left but the marker.
    assert_eq!(normalize_captured(b"SELEC", true).text, "…");
}

/// Bytes as they come from a process: NUL ends the text, invalid UTF-8 is
/// replaced, and growth from replacement is bounded.
#[test]
fn raw_bytes() {
    let n = normalize_captured(b"SELECT 1\0garbage 'raw' 42", true);
    assert_eq!(n.text, "SELECT ?");
    assert!(!n.truncated);
    let n = normalize(b"SELECT caf\xe9 FROM t WHERE x = '\xff\xfe'");
    assert_eq!(n.text, "SELECT caf\u{fffd} FROM t WHERE x = ?");
    let garbage: Vec<u8> = (0..200)
        .map(|i| if i % 2 == 0 { b'a' } else { 0xff })
        .collect();
    let n = normalize(&garbage);
    assert!(
        n.text.len() <= garbage.len() + TRUNCATION_MARKER.len(),
        "{}",
        n.text.len()
    );
    assert!(n.truncated);
}
