//! Where stacks come from.
//!
//! Today the kernel unwinds with frame pointers (`bpf_get_stackid`) and the
//! agent reads the resulting stack-trace map. Binaries built without frame
//! pointers need an unwinder driven by `.eh_frame` (as the `OTel` profiler does);
//! it will implement [`StackSource`] too, so aggregation and symbolization
//! do not change when it arrives.

use aya::{
    Ebpf,
    maps::{MapData, StackTraceMap},
};
use qprof_common::cpu::{MAP_STACK_TRACES, NO_STACK};

use super::{ProbeError, map_err, missing_map};

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
    /// Takes the stack-trace map (shared by every stack-walking program)
    /// out of the object. The loaded programs keep their own reference to
    /// it, so a component takes it once at start and reads it at every
    /// snapshot.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        let map = ebpf
            .take_map(MAP_STACK_TRACES)
            .ok_or_else(|| missing_map(MAP_STACK_TRACES))?;
        Ok(Self {
            map: StackTraceMap::try_from(map).map_err(map_err(MAP_STACK_TRACES))?,
        })
    }
}

impl FramePointerStacks {
    /// Frees a stack id once every count that referred to it was read, so
    /// that a long-running component does not fill the map with stacks of
    /// windows long gone. A sample taken between the read and this call
    /// that hashed to the same id loses its stack (counted by the caller as
    /// a lost stack lookup).
    pub fn forget(&mut self, stack_id: i32) {
        if stack_id >= 0 && stack_id != NO_STACK {
            // Already gone (or never there) is fine: nothing to free.
            let _ = self.map.remove(&(stack_id as u32));
        }
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
            .map_err(map_err(MAP_STACK_TRACES))?;
        Ok(trace
            .frames()
            .iter()
            .map(|f| f.ip)
            .filter(|&ip| ip != 0)
            .collect())
    }
}
