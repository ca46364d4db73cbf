//! User-space frames: ELF symbols (and DWARF lines and inlining where the
//! binary has them), looked up by file offset, one batch per file.

use std::{fmt::Write as _, path::Path};

use blazesym::symbolize::{
    CodeInfo, Input, Symbolized, Symbolizer,
    source::{Elf, Source},
};
use profiles::Line;

/// The lines of each of `offsets` (file offsets) in the ELF file `path`,
/// in order; empty for offsets without a symbol.
pub(super) fn resolve(symbolizer: &Symbolizer, path: &str, offsets: &[u64]) -> Vec<Vec<Line>> {
    let src = Source::Elf(Elf::new(path));
    // A file that vanished or is not ELF leaves the frames unnamed
    // (module+offset), which is what the user should see.
    let symbols = symbolizer
        .symbolize(&src, Input::FileOffset(offsets))
        .unwrap_or_default();
    lines_of(&symbols, offsets.len())
}

/// One entry per input address: the symbol's lines, or none.
pub(super) fn lines_of(symbols: &[Symbolized<'_>], n: usize) -> Vec<Vec<Line>> {
    (0..n)
        .map(|i| match symbols.get(i) {
            Some(Symbolized::Sym(sym)) => sym_lines(sym),
            _ => Vec::new(),
        })
        .collect()
}

/// A blazesym symbol as pprof lines, innermost (most deeply inlined) first.
fn sym_lines(sym: &blazesym::symbolize::Sym<'_>) -> Vec<Line> {
    let mut lines: Vec<Line> = sym
        .inlined
        .iter()
        .rev()
        .map(|f| line(&f.name, f.code_info.as_ref()))
        .collect();
    lines.push(line(&sym.name, sym.code_info.as_deref()));
    lines
}

fn line(name: &str, code: Option<&CodeInfo<'_>>) -> Line {
    Line {
        function: name.to_owned(),
        system_name: name.to_owned(),
        file: code
            .map(|c| c.to_path().display().to_string())
            .unwrap_or_default(),
        line: code.and_then(|c| c.line).map_or(0, i64::from),
    }
}

/// GNU build id of an ELF file as lowercase hex, or "" when it has none.
pub(super) fn build_id(path: &str) -> String {
    match blazesym::helper::read_elf_build_id(&Path::new(path)) {
        Ok(Some(id)) => id
            .iter()
            .fold(String::with_capacity(id.len() * 2), |mut hex, b| {
                let _ = write!(hex, "{b:02x}");
                hex
            }),
        _ => String::new(),
    }
}
