//! Where in a function to put its uprobe so that a hit costs one trap.
//!
//! On x86-64 the kernel *emulates* a few instructions under a uprobe
//! (`push reg`, relative `jmp`/`call`/`jcc`, `nop`); any other instruction
//! is single-stepped out of line, a second trap. Measured here (Linux
//! 6.18, a VM): a uprobe on glibc's `malloc` (first instruction `push
//! %r12`) costs ~0.9 µs per call, one on `free` (`test %rdi,%rdi`) ~4.3 µs.
//!
//! So the probe goes on the first instruction the kernel emulates, after
//! at most a few leading instructions that only set flags (`test` of an
//! argument register, `cmpb $imm, rip-relative`) or do nothing
//! (`endbr64`): those run natively before the probe and change neither the
//! argument registers nor the stack pointer, so the program sees exactly
//! what it would see at the entry. Anything not recognised keeps the probe
//! at the entry (correct, just slower).

/// Leading instructions skipped at most.
const MAX_SKIPPED: usize = 3;

/// Bytes of a function's start to read: enough for `MAX_SKIPPED` of the
/// longest skippable instruction (7 bytes) plus an emulated one.
pub const CODE_BYTES: usize = 32;

/// Whether the kernel emulates the instruction at the start of `code`.
fn emulated(code: &[u8]) -> bool {
    // push r64 (REX.B for r8-r15), nop, jmp rel8/rel32, call rel32, jcc
    // rel8, jcc rel32.
    matches!(
        code,
        [0x50..=0x57 | 0x90 | 0xeb | 0xe9 | 0xe8 | 0x70..=0x7f, ..]
            | [0x41, 0x50..=0x57, ..]
            | [0x0f, 0x80..=0x8f, ..]
    )
}

/// Length of the instruction at the start of `code` if it only sets flags
/// or does nothing, and never branches.
fn skippable(code: &[u8]) -> Option<usize> {
    match code {
        // endbr64
        [0xf3, 0x0f, 0x1e, 0xfa, ..] => Some(4),
        // test %rdi,%rdi / %rsi,%rsi / %rdx,%rdx / %rcx,%rcx
        [0x48, 0x85, 0xff | 0xf6 | 0xd2 | 0xc9, ..] => Some(3),
        // cmpb $imm8, disp32(%rip)
        [0x80, 0x3d, _, _, _, _, _, ..] => Some(7),
        _ => None,
    }
}

/// Offset from the function's start at which to attach its uprobe: the
/// first emulated instruction after only skippable ones, else 0.
#[must_use]
pub fn probe_offset(code: &[u8]) -> u64 {
    let mut at = 0;
    for _ in 0..=MAX_SKIPPED {
        let rest = code.get(at..).unwrap_or_default();
        if emulated(rest) {
            return at as u64;
        }
        match skippable(rest) {
            Some(len) => at += len,
            None => return 0,
        }
    }
    0
}

/// Reads the first [`CODE_BYTES`] of the function at `offset` in `file`;
/// `None` if the file cannot be read there.
#[must_use]
pub fn read_code(file: &std::path::Path, offset: u64) -> Option<Vec<u8>> {
    read_bytes(file, offset, CODE_BYTES)
}

/// Reads `len` bytes of `file` at `offset` (fewer at its end); `None` if
/// the file cannot be read there.
#[must_use]
pub fn read_bytes(file: &std::path::Path, offset: u64, len: usize) -> Option<Vec<u8>> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = std::fs::File::open(file).ok()?;
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut code = vec![0; len];
    let n = f.read(&mut code).ok()?;
    code.truncate(n);
    Some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// glibc 2.36's `free`: `test %rdi,%rdi; je ...` -> on the `je`.
    #[test]
    fn free_moves_past_its_test() {
        let free = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0, 0, 0, 0x55];
        assert_eq!(probe_offset(&free), 3);
    }

    /// `malloc`, `calloc`, `realloc` start with an emulated push: entry.
    #[test]
    fn push_stays_at_entry() {
        assert_eq!(probe_offset(&[0x41, 0x54, 0x55, 0x53]), 0);
        assert_eq!(probe_offset(&[0x55, 0x48, 0x89, 0xe5]), 0);
    }

    /// `memalign` and `posix_memalign`: `cmpb $0, x(%rip)` then `je`/push.
    #[test]
    fn rip_relative_compare_is_skipped() {
        let memalign = [0x80, 0x3d, 0x71, 0x0e, 0x14, 0x00, 0x00, 0x74, 0x07];
        assert_eq!(probe_offset(&memalign), 7);
        let posix = [0x80, 0x3d, 0x01, 0x02, 0x14, 0x00, 0x00, 0x41, 0x54];
        assert_eq!(probe_offset(&posix), 7);
    }

    /// `endbr64` (CET builds) is skipped; anything unknown keeps the entry.
    #[test]
    fn unknown_code_keeps_the_entry() {
        assert_eq!(probe_offset(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55]), 4);
        // mov %rdi,%rax: it writes a register, so never skipped.
        assert_eq!(probe_offset(&[0x48, 0x89, 0xf8, 0x55]), 0);
        assert_eq!(probe_offset(&[]), 0);
        assert_eq!(probe_offset(&[0x48, 0x85]), 0);
        // Too many skippable instructions in a row: give up.
        assert_eq!(probe_offset(&[0x48, 0x85, 0xff].repeat(5)), 0);
    }
}
