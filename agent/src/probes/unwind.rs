//! Where stacks come from.
//!
//! Today the kernel unwinds with frame pointers (`bpf_get_stackid`) and the
//! agent reads the resulting stack-trace map. Binaries built without frame
//! pointers need an unwinder driven by `.eh_frame` (as the `OTel` profiler does);
//! it will implement [`StackSource`] too, so aggregation and symbolization
//! do not change when it arrives.

use aya::maps::{MapData, StackTraceMap};
use qprof_common::cpu::NO_STACK;

use super::ProbeError;

/// Turns a stack id recorded with a sample into instruction pointers,
/// leaf first.
pub trait StackSource {
    fn frames(&self, stack_id: i32) -> Result<Vec<u64>, ProbeError>;
}

/// Stacks unwound by the kernel with frame pointers.
pub struct FramePointerStacks {
    map: StackTraceMap<MapData>,
}

impl FramePointerStacks {
    #[must_use]
    pub fn new(map: StackTraceMap<MapData>) -> Self {
        Self { map }
    }
}

impl StackSource for FramePointerStacks {
    fn frames(&self, stack_id: i32) -> Result<Vec<u64>, ProbeError> {
        if stack_id == NO_STACK || stack_id < 0 {
            return Ok(Vec::new());
        }
        let trace = self
            .map
            .get(&(stack_id as u32), 0)
            .map_err(|source| ProbeError::Map {
                name: "CPU_STACK_TRACES",
                source,
            })?;
        Ok(trace
            .frames()
            .iter()
            .map(|f| f.ip)
            .filter(|&ip| ip != 0)
            .collect())
    }
}
