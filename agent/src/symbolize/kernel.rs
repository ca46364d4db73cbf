//! Kernel frames, from `/proc/kallsyms` (readable with full addresses by
//! root or `CAP_SYSLOG`; otherwise frames stay `[kernel.kallsyms]+0x…`).

use blazesym::{
    MaybeDefault,
    symbolize::{
        Input, Symbolizer,
        source::{Kernel, Source},
    },
};
use profiles::Line;

use super::user::lines_of;

/// The lines of each kernel address, in order; empty when unknown.
pub(super) fn resolve(symbolizer: &Symbolizer, addrs: &[u64]) -> Vec<Vec<Line>> {
    if addrs.is_empty() {
        return Vec::new();
    }
    // Searching for a vmlinux costs seconds and distro kernels seldom ship
    // one; kallsyms gives function names, which is what flamegraphs need.
    let kernel = Kernel {
        vmlinux: MaybeDefault::None,
        debug_syms: false,
        ..Kernel::default()
    };
    let symbols = symbolizer
        .symbolize(&Source::Kernel(kernel), Input::AbsAddr(addrs))
        .unwrap_or_default();
    lines_of(&symbols, addrs.len())
}
