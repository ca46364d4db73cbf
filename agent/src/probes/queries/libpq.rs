//! libpq's probes: one uprobe per query, on the `PQsend*` entry points,
//! placed on an instruction the kernel emulates.

use std::path::Path;

use aya::Ebpf;
use blazesym::{
    SymType,
    inspect::{
        Inspector,
        source::{Elf, Source},
    },
};

use super::library::{LibrarySpec, attach_at};
use crate::probes::{ProbeError, memory::placement};

/// (program, libpq function). The `PQexec*`/`PQprepare` entry points call
/// these, so four probes cover synchronous and asynchronous use with one
/// trap per query.
pub const PROBES: [(&str, &str); 4] = [
    ("pq_send_query", "PQsendQuery"),
    ("pq_send_query_params", "PQsendQueryParams"),
    ("pq_send_prepare", "PQsendPrepare"),
    ("pq_send_query_prepared", "PQsendQueryPrepared"),
];

/// Whether a mapped path is a libpq shared object.
#[must_use]
pub fn is_libpq(path: &str) -> bool {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("libpq.so"))
}

/// libpq for [`LibraryProbes`](super::library::LibraryProbes).
pub static LIBPQ: LibrarySpec = LibrarySpec {
    programs: &[
        "pq_send_query",
        "pq_send_query_params",
        "pq_send_prepare",
        "pq_send_query_prepared",
    ],
    matches: is_libpq,
    attach: attach_file,
};

/// Attaches the four programs to one libpq file.
fn attach_file(ebpf: &mut Ebpf, full: &Path) -> Result<(), ProbeError> {
    let names: Vec<&str> = PROBES.iter().map(|(_, f)| *f).collect();
    let offsets = symbol_offsets(full, &names);
    for ((program, function), offset) in PROBES.into_iter().zip(offsets) {
        // The probe goes on an instruction the kernel emulates (one trap
        // per hit) rather than one it must single-step (two).
        let offset = offset.map(|at| at + probe_skip(full, at));
        attach_at(ebpf, program, full, offset, function)?;
    }
    Ok(())
}

/// File offsets of the functions `names` in `file` (None when not found:
/// aya then resolves the name itself and reports what is missing).
pub(super) fn symbol_offsets(file: &Path, names: &[&str]) -> Vec<Option<u64>> {
    let mut elf = Elf::new(file);
    elf.debug_syms = false;
    match Inspector::new().lookup(&Source::Elf(elf), names) {
        Ok(found) => found
            .iter()
            .map(|syms| {
                syms.iter()
                    .filter(|s| s.sym_type == SymType::Function)
                    .find_map(|s| s.file_offset)
            })
            .collect(),
        Err(_) => vec![None; names.len()],
    }
}

/// Bytes to skip at `offset` to land on an emulated instruction. On top of
/// the allocator probes' rules, a leading `mov $imm32, %edx` is skipped:
/// it only sets the third argument, which none of these probes reads
/// (`PQsendQuery` is `mov $1, %edx; jmp PQsendQueryInternal` in libpq 15).
fn probe_skip(file: &Path, offset: u64) -> u64 {
    let Some(code) = placement::read_code(file, offset) else {
        return 0;
    };
    if let [0xba, _, _, _, _, rest @ ..] = code.as_slice()
        && is_jump(rest)
    {
        return 5;
    }
    placement::probe_offset(&code)
}

/// `jmp rel32`/`jmp rel8`: emulated, and a tail call leaves the argument
/// registers as the caller set them.
fn is_jump(code: &[u8]) -> bool {
    matches!(code.first(), Some(0xe9 | 0xeb))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `PQsendQuery`'s `mov $1,%edx; jmp` is probed on the jump.
    #[test]
    fn skips_the_argument_move_before_a_tail_call() {
        let dir = std::env::temp_dir().join(format!("qprof-pq-skip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("code");
        std::fs::write(&file, [0xba, 1, 0, 0, 0, 0xe9, 0xa6, 0xeb, 0xff, 0xff]).expect("write");
        assert_eq!(probe_skip(&file, 0), 5);
        std::fs::write(&file, [0x55, 0x48, 0x89, 0xe5]).expect("write");
        assert_eq!(probe_skip(&file, 0), 0);
        std::fs::write(&file, [0xba, 1, 0, 0, 0, 0x48, 0x89, 0xe5]).expect("write");
        assert_eq!(probe_skip(&file, 0), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Versioned sonames count; other libraries do not.
    #[test]
    fn recognizes_libpq() {
        assert!(is_libpq("/usr/lib/x86_64-linux-gnu/libpq.so.5.15"));
        assert!(is_libpq("/opt/pg/lib/libpq.so"));
        assert!(!is_libpq("/usr/lib/libpqwalreceiver.so"));
        assert!(!is_libpq("/usr/lib/x86_64-linux-gnu/libc.so.6"));
    }
}
