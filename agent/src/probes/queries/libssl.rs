//! OpenSSL's read path, probed so that TLS connections are read in
//! plaintext. `SSL_read` and `SSL_read_ex` both call one internal function
//! (`ssl_read_internal` in OpenSSL 3); probing it instead covers both with
//! one uprobe whose first instruction (`push %rbp` after `endbr64` in
//! Debian's 3.0) the kernel emulates, where `SSL_read` starts with `sub
//! $0x18,%rsp`, which it would single-step (a second trap). A uretprobe
//! must sit where the return address is still on top of the stack, so the
//! probe only ever skips instructions that leave `%rsp` alone.

use std::path::Path;

use aya::Ebpf;

use super::{
    libpq::symbol_offsets,
    library::{LibrarySpec, attach_at},
};
use crate::probes::{ProbeError, memory::placement};

/// OpenSSL's libssl for [`LibraryProbes`](super::library::LibraryProbes).
pub static LIBSSL: LibrarySpec = LibrarySpec {
    programs: &["tls_read_ex", "tls_read", "tls_read_ret"],
    matches: is_libssl,
    attach: attach_file,
};

/// Whether a mapped path is OpenSSL's libssl (1.1 or 3).
#[must_use]
pub fn is_libssl(path: &str) -> bool {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("libssl.so"))
}

/// Where the read probes go in one file.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// The internal read both exported reads call: one probe.
    Internal(u64),
    /// The exported functions themselves (`SSL_read`, `SSL_read_ex`).
    Exported(Option<u64>, Option<u64>),
}

fn attach_file(ebpf: &mut Ebpf, full: &Path) -> Result<(), ProbeError> {
    let at = |offset: u64| Some(offset + entry_skip(full, offset));
    // (program, file offset; None: by symbol name).
    let targets: Vec<(&'static str, Option<u64>, &'static str)> = match plan(full) {
        Plan::Internal(offset) => vec![
            ("tls_read_ex", at(offset), ""),
            ("tls_read_ret", at(offset), ""),
        ],
        Plan::Exported(read, read_ex) => {
            let (read, read_ex) = (read.and_then(at), read_ex.and_then(at));
            vec![
                ("tls_read", read, "SSL_read"),
                ("tls_read_ret", read, "SSL_read"),
                ("tls_read_ex", read_ex, "SSL_read_ex"),
                ("tls_read_ret", read_ex, "SSL_read_ex"),
            ]
        }
    };
    for (program, offset, symbol) in targets {
        attach_at(ebpf, program, full, offset, symbol)?;
    }
    Ok(())
}

/// Finds the internal read from the exported ones' code.
fn plan(file: &Path) -> Plan {
    let offsets = symbol_offsets(file, &["SSL_read", "SSL_read_ex"]);
    let (read, read_ex) = (
        offsets.first().copied().flatten(),
        offsets.get(1).copied().flatten(),
    );
    let internal = read.zip(read_ex).and_then(|(r, ex)| {
        let code_r = placement::read_bytes(file, r, SEARCHED_BYTES)?;
        let code_ex = placement::read_code(file, ex)?;
        internal_read(r, &code_r, ex, &code_ex)
    });
    internal.map_or(Plan::Exported(read, read_ex), Plan::Internal)
}

/// The target of `SSL_read_ex`'s opening call (`[endbr64] sub $imm8,%rsp;
/// call rel32`, a thin wrapper), if `SSL_read` calls the same function
/// too: then it is the read both share, with `SSL_read_ex`'s arguments.
fn internal_read(read: u64, code_read: &[u8], read_ex: u64, code_ex: &[u8]) -> Option<u64> {
    let start = if code_ex.starts_with(&ENDBR64) { 4 } else { 0 };
    let [0x48, 0x83, 0xec, _, 0xe8, rel @ ..] = code_ex.get(start..)? else {
        return None;
    };
    let target = call_target(read_ex + start as u64 + 4, rel)?;
    let calls_it = (0..code_read.len()).any(|i| {
        code_read.get(i) == Some(&0xe8)
            && code_read
                .get(i + 1..)
                .and_then(|rel| call_target(read + i as u64, rel))
                == Some(target)
    });
    calls_it.then_some(target)
}

/// Bytes of `SSL_read` searched for the call (it is at +30 in Debian's
/// 3.0, after the stack protector's set-up).
const SEARCHED_BYTES: usize = 64;

const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// Target of a `call rel32` at `at` whose displacement starts `rel`.
fn call_target(at: u64, rel: &[u8]) -> Option<u64> {
    let rel = i32::from_le_bytes(rel.get(..4)?.try_into().ok()?);
    (at + 5).checked_add_signed(i64::from(rel))
}

/// Bytes to skip at a function's entry: the allocator probes' rules, all
/// of which leave `%rsp` (and so the return address a uretprobe takes)
/// untouched.
fn entry_skip(file: &Path, offset: u64) -> u64 {
    placement::read_code(file, offset).map_or(0, |code| placement::probe_offset(&code))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian 12's libssl 3.0.19: `SSL_read_ex` at 0x354c0 is `sub $8,%rsp;
    /// call 0x35290`, and `SSL_read` at 0x35430 calls 0x35290 at +30.
    #[test]
    fn finds_the_shared_internal_read() {
        let read_ex = [0x48, 0x83, 0xec, 0x08, 0xe8, 0xc7, 0xfd, 0xff, 0xff, 0x31];
        let mut read = vec![0x90; 30];
        read.extend([0xe8, 0x3d, 0xfe, 0xff, 0xff, 0x85, 0xc0]);
        assert_eq!(
            internal_read(0x35430, &read, 0x354c0, &read_ex),
            Some(0x35290)
        );
        // SSL_read calling something else: no shared function.
        read[31] = 0x00;
        assert_eq!(internal_read(0x35430, &read, 0x354c0, &read_ex), None);
        // SSL_read_ex not a thin wrapper.
        assert_eq!(internal_read(0x35430, &read, 0x354c0, &[0x55, 0x48]), None);
    }

    /// On this host's own libssl (when it is OpenSSL 3 as packaged by
    /// Debian 12, whose layout the test above copies) the shared read is
    /// found, and it is neither exported function.
    #[test]
    fn plans_the_system_libssl() {
        let file = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        if !file.exists() {
            return;
        }
        let offsets = symbol_offsets(file, &["SSL_read", "SSL_read_ex"]);
        match plan(file) {
            Plan::Internal(at) => assert!(!offsets.contains(&Some(at)), "{at:x}"),
            Plan::Exported(..) => panic!("no shared read found in {}", file.display()),
        }
    }

    /// Versioned sonames count; other libraries do not.
    #[test]
    fn recognizes_libssl() {
        assert!(is_libssl("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
        assert!(is_libssl("/opt/ssl/lib/libssl.so.1.1"));
        assert!(!is_libssl("/usr/lib/x86_64-linux-gnu/libcrypto.so.3"));
    }
}
