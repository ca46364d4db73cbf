//! User-space frames: ELF symbols (and DWARF lines and inlining where the
//! binary has them), looked up by file offset, one batch per file.

use std::{
    collections::{BTreeSet, HashMap},
    fmt::Write as _,
    path::Path,
};

use blazesym::symbolize::{
    CodeInfo, Input, Symbolized, Symbolizer,
    source::{Elf, Source},
};
use profiles::{Line, Location};

use super::{FrameKey, ModuleTable};
use crate::aggregate::stacks::RawStack;

/// Resolves every `FrameKey::Module` of `keyed` into `out`.
pub(super) fn resolve(
    symbolizer: &Symbolizer,
    modules: &ModuleTable,
    keyed: &[(Vec<FrameKey>, &RawStack)],
    out: &mut HashMap<FrameKey, Location>,
) {
    let mut offsets: HashMap<usize, BTreeSet<u64>> = HashMap::new();
    for (frames, _) in keyed {
        for key in frames {
            if let FrameKey::Module(idx, off) = *key {
                offsets.entry(idx).or_default().insert(off);
            }
        }
    }
    for (idx, offs) in offsets {
        let offs: Vec<u64> = offs.into_iter().collect();
        let module = &modules.modules[idx];
        let symbols = if module.is_file {
            let src = Source::Elf(Elf::new(&module.path));
            // A file that vanished or is not ELF leaves the frames unnamed
            // (module+offset), which is what the user should see.
            symbolizer
                .symbolize(&src, Input::FileOffset(&offs))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        for (i, &off) in offs.iter().enumerate() {
            let lines = match symbols.get(i) {
                Some(Symbolized::Sym(sym)) => sym_lines(sym),
                _ => Vec::new(),
            };
            out.insert(
                FrameKey::Module(idx, off),
                Location {
                    address: off,
                    mapping: Some(idx),
                    lines,
                },
            );
        }
    }
}

/// A blazesym symbol as pprof lines, innermost (most deeply inlined) first.
pub(super) fn sym_lines(sym: &blazesym::symbolize::Sym<'_>) -> Vec<Line> {
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
