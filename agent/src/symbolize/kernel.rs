//! Kernel frames, from `/proc/kallsyms` (readable with full addresses by
//! root or `CAP_SYSLOG`; otherwise frames stay `[kernel.kallsyms]+0x…`).

use std::collections::{BTreeSet, HashMap};

use blazesym::{
    MaybeDefault,
    symbolize::{
        Input, Symbolized, Symbolizer,
        source::{Kernel, Source},
    },
};
use profiles::Location;

use super::{FrameKey, user::sym_lines};
use crate::aggregate::stacks::RawStack;

pub(super) fn resolve(
    symbolizer: &Symbolizer,
    mapping: usize,
    keyed: &[(Vec<FrameKey>, &RawStack)],
    out: &mut HashMap<FrameKey, Location>,
) {
    let addrs: Vec<u64> = keyed
        .iter()
        .flat_map(|(frames, _)| frames.iter())
        .filter_map(|k| {
            if let FrameKey::Kernel(a) = *k {
                Some(a)
            } else {
                None
            }
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Searching for a vmlinux costs seconds and distro kernels seldom ship
    // one; kallsyms gives function names, which is what flamegraphs need.
    let kernel = Kernel {
        vmlinux: MaybeDefault::None,
        debug_syms: false,
        ..Kernel::default()
    };
    let symbols = symbolizer
        .symbolize(&Source::Kernel(kernel), Input::AbsAddr(&addrs))
        .unwrap_or_default();
    for (i, &addr) in addrs.iter().enumerate() {
        let lines = match symbols.get(i) {
            Some(Symbolized::Sym(sym)) => sym_lines(sym),
            _ => Vec::new(),
        };
        out.insert(
            FrameKey::Kernel(addr),
            Location {
                address: addr,
                mapping: Some(mapping),
                lines,
            },
        );
    }
}
