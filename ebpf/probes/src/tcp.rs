//! TCP: connection lifecycle, RTT, retransmits and resets (stub; filled in
//! by the TCP capability).

use aya_ebpf::programs::TracePointContext;

#[inline(always)]
pub fn on_set_state(_ctx: &TracePointContext) {}
#[inline(always)]
pub fn on_probe(_ctx: &TracePointContext) {}
#[inline(always)]
pub fn on_retransmit(_ctx: &TracePointContext) {}
#[inline(always)]
pub fn on_send_reset(_ctx: &TracePointContext) {}
#[inline(always)]
pub fn on_receive_reset(_ctx: &TracePointContext) {}
