//! Syscalls (stub).

use aya_ebpf::programs::RawTracePointContext;

#[inline(always)]
pub fn on_enter(_ctx: &RawTracePointContext) {}
#[inline(always)]
pub fn on_exit(_ctx: &RawTracePointContext) {}
