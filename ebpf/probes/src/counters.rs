//! Per-CPU drop counters shared by every capability (ids in qprof-common).

use aya_ebpf::{macros::map, maps::PerCpuArray};
use qprof_common::counters::{COUNTER_SLOTS, Counter};

#[map(name = "DROP_COUNTERS")]
static DROP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Adds one to `counter` on this CPU (per-CPU, so no atomics are needed).
#[inline(always)]
pub fn bump(counter: Counter) {
    if let Some(slot) = DROP_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from the map lookup of this CPU's slot and
        // BPF programs do not preempt each other on one CPU.
        unsafe { *slot += 1 };
    }
}
