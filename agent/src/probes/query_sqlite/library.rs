//! Recognizing the SQLite API in an ELF file: `libsqlite3.so*`, or any
//! executable or library that carries `sqlite3_step` in its symbol table
//! (the amalgamation compiled in statically), with the file offset of each
//! traced function, and where this build keeps a statement's SQL text.

use std::{os::unix::fs::FileExt as _, path::Path};

use blazesym::{
    SymType,
    inspect::{
        Inspector,
        source::{Elf, Source},
    },
};
use qprof_common::query_sqlite::{
    MAX_SQL_FIELD_OFFSET, PROG_EXEC, PROG_EXEC_RET, PROG_FINALIZE, PROG_PREPARE, PROG_PREPARE_RET,
    PROG_PREPARE_V3, PROG_RESET, PROG_STEP, PROG_STEP_RET,
};

/// The traced API functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteFn {
    Prepare,
    PrepareV2,
    PrepareV3,
    Step,
    Reset,
    Finalize,
    Exec,
}

impl SqliteFn {
    pub const ALL: [SqliteFn; 7] = [
        SqliteFn::Prepare,
        SqliteFn::PrepareV2,
        SqliteFn::PrepareV3,
        SqliteFn::Step,
        SqliteFn::Reset,
        SqliteFn::Finalize,
        SqliteFn::Exec,
    ];

    #[must_use]
    pub const fn symbol(self) -> &'static str {
        match self {
            SqliteFn::Prepare => "sqlite3_prepare",
            SqliteFn::PrepareV2 => "sqlite3_prepare_v2",
            SqliteFn::PrepareV3 => "sqlite3_prepare_v3",
            SqliteFn::Step => "sqlite3_step",
            SqliteFn::Reset => "sqlite3_reset",
            SqliteFn::Finalize => "sqlite3_finalize",
            SqliteFn::Exec => "sqlite3_exec",
        }
    }

    /// The BPF programs attached to it: the entry, then the return if any.
    #[must_use]
    pub const fn programs(self) -> &'static [&'static str] {
        match self {
            SqliteFn::Prepare | SqliteFn::PrepareV2 => &[PROG_PREPARE, PROG_PREPARE_RET],
            SqliteFn::PrepareV3 => &[PROG_PREPARE_V3, PROG_PREPARE_RET],
            SqliteFn::Step => &[PROG_STEP, PROG_STEP_RET],
            SqliteFn::Reset => &[PROG_RESET],
            SqliteFn::Finalize => &[PROG_FINALIZE],
            SqliteFn::Exec => &[PROG_EXEC, PROG_EXEC_RET],
        }
    }
}

/// Read only for the `Vdbe` layout; not traced.
const SQL_ACCESSOR: &str = "sqlite3_sql";

/// The SQLite API found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteLibrary {
    /// File offset of each function present (`sqlite3_step` always is).
    pub functions: Vec<(SqliteFn, u64)>,
    /// Offset of `zSql` in this build's `Vdbe`, when `sqlite3_sql`'s code
    /// has a recognizable shape: lets the step probe recover the text of
    /// statements prepared before qprof attached.
    pub sql_field_offset: Option<u64>,
}

/// What a file turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspection {
    /// No `sqlite3_step`: not SQLite (the common case), or not ELF.
    NotSqlite,
    Sqlite(SqliteLibrary),
    /// Named like libsqlite3 but without the symbol: stripped, so it
    /// cannot be traced.
    NoSymbols,
}

/// Whether a mapped path is a libsqlite3 shared object (`libsqlite3.so`,
/// `libsqlite3.so.0.8.6`).
#[must_use]
pub fn is_libsqlite(path: &str) -> bool {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("libsqlite3.so"))
}

/// Looks for the API in the symbol tables (`.symtab` and `.dynsym`) of
/// `target`. `named_sqlite`: the file is called libsqlite3, so missing
/// symbols mean a stripped library rather than another program.
#[must_use]
pub fn inspect(target: &Path, named_sqlite: bool) -> Inspection {
    let mut names: Vec<&str> = SqliteFn::ALL.iter().map(|f| f.symbol()).collect();
    names.push(SQL_ACCESSOR);
    let mut elf = Elf::new(target);
    elf.debug_syms = false;
    // A fresh inspector each time: its cache would otherwise keep every
    // file ever inspected mapped, and most files are inspected once.
    let inspector = Inspector::new();
    let Ok(found) = inspector.lookup(&Source::Elf(elf), &names) else {
        return if named_sqlite {
            Inspection::NoSymbols
        } else {
            Inspection::NotSqlite
        };
    };
    let offsets: Vec<Option<u64>> = found
        .iter()
        .map(|syms| {
            syms.iter()
                .filter(|s| s.sym_type == SymType::Function)
                .find_map(|s| s.file_offset)
        })
        .collect();
    let functions: Vec<(SqliteFn, u64)> = SqliteFn::ALL
        .iter()
        .zip(&offsets)
        .filter_map(|(f, off)| off.map(|o| (*f, o)))
        .collect();
    if !functions.iter().any(|(f, _)| *f == SqliteFn::Step) {
        return if named_sqlite {
            Inspection::NoSymbols
        } else {
            Inspection::NotSqlite
        };
    }
    let sql_field_offset = offsets
        .get(SqliteFn::ALL.len())
        .copied()
        .flatten()
        .and_then(|at| read_code(target, at))
        .and_then(|code| decode_sql_field_offset(&code));
    Inspection::Sqlite(SqliteLibrary {
        functions,
        sql_field_offset,
    })
}

/// The first bytes of a function, from its file offset.
fn read_code(target: &Path, offset: u64) -> Option<Vec<u8>> {
    let file = std::fs::File::open(target).ok()?;
    let mut code = vec![0u8; 32];
    let n = file.read_at(&mut code, offset).ok()?;
    code.truncate(n);
    Some(code)
}

/// Finds `zSql`'s offset in the code of `sqlite3_sql(pStmt)`, which is
/// `return p ? p->zSql : 0;`. Compilers emit it as a load of
/// `[rdi + disp]` (or of `[rax + disp]` after moving the argument) into
/// `rax` directly followed by `ret`; anything else is not trusted (`None`:
/// the text of statements prepared before attaching is then unknown).
/// x86-64 only, like the probes.
#[must_use]
pub fn decode_sql_field_offset(code: &[u8]) -> Option<u64> {
    // Offsets of a REX.W `mov rax, [reg + disp]` with reg = rdi or rax.
    for at in 0..code.len().saturating_sub(4) {
        let rest = code.get(at..)?;
        let (disp, len) = match rest {
            // disp8 is signed: a negative one is not a field.
            [0x48, 0x8b, 0x47 | 0x40, d, ..] if *d < 0x80 => (u64::from(*d), 4),
            [0x48, 0x8b, 0x87 | 0x80, a, b, c, d, ..] => {
                (u64::from(u32::from_le_bytes([*a, *b, *c, *d])), 7)
            }
            _ => continue,
        };
        let plausible = disp > 0 && disp < MAX_SQL_FIELD_OFFSET && disp % 8 == 0;
        if plausible && rest.get(len) == Some(&0xc3) {
            return Some(disp);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian's libsqlite3 3.40 (`mov rax,[rdi+0xf8]; ret` after the NULL
    /// check), a disp8 form, and shapes that must not be trusted.
    #[test]
    fn decodes_sqlite3_sql() {
        let debian = [
            0x48, 0x85, 0xff, 0x74, 0x0b, 0x48, 0x8b, 0x87, 0xf8, 0, 0, 0, 0xc3, 0x0f, 0x1f, 0,
        ];
        assert_eq!(decode_sql_field_offset(&debian), Some(0xf8));
        let endbr_disp8 = [
            0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x85, 0xff, 0x74, 0x05, 0x48, 0x8b, 0x47, 0x78, 0xc3,
        ];
        assert_eq!(decode_sql_field_offset(&endbr_disp8), Some(0x78));
        // A load not followed by ret (the function does more).
        assert_eq!(
            decode_sql_field_offset(&[0x48, 0x8b, 0x87, 0xf8, 0, 0, 0, 0x48, 0xc3]),
            None
        );
        // Misaligned or absurd offsets.
        assert_eq!(
            decode_sql_field_offset(&[0x48, 0x8b, 0x47, 0x13, 0xc3]),
            None
        );
        assert_eq!(
            decode_sql_field_offset(&[0x48, 0x8b, 0x87, 0, 0, 1, 0, 0xc3]),
            None
        );
        assert_eq!(decode_sql_field_offset(&[]), None);
    }

    /// Sonames with and without versions count; look-alikes do not.
    #[test]
    fn recognizes_libsqlite3() {
        assert!(is_libsqlite(
            "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0.8.6"
        ));
        assert!(is_libsqlite("/opt/lib/libsqlite3.so"));
        assert!(!is_libsqlite("/usr/lib/libsqlite3mc.a"));
        assert!(!is_libsqlite("/usr/lib/x86_64-linux-gnu/libc.so.6"));
    }

    /// The system library (when installed) exposes every traced function
    /// and a recognizable `sqlite3_sql`; libc is not SQLite.
    #[test]
    fn inspects_system_library() {
        let lib = Path::new("/usr/lib/x86_64-linux-gnu/libsqlite3.so.0");
        if !lib.exists() {
            return;
        }
        let Inspection::Sqlite(found) = inspect(lib, true) else {
            panic!("libsqlite3 not recognized");
        };
        for f in SqliteFn::ALL {
            assert!(found.functions.iter().any(|(g, _)| *g == f), "{f:?}");
        }
        assert!(found.sql_field_offset.is_some());
        let libc = Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6");
        assert_eq!(inspect(libc, false), Inspection::NotSqlite);
        assert_eq!(inspect(libc, true), Inspection::NoSymbols);
    }
}
