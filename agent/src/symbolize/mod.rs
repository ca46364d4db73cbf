//! Symbolization on the host: raw stacks (addresses per process) in, a
//! symbolized [`profiles::Profile`] out.
//!
//! User frames are symbolized per *file*, by file offset, from the mappings
//! the sampler snapshotted while each process was alive — so processes that
//! exited during the capture still symbolize, and a library shared by a
//! hundred processes is read once. Kernel frames come from kallsyms.

mod kernel;
mod user;

use std::collections::HashMap;

use profiles::{Label, LabelValue, Location, Mapping, Profile, Sample, ValueType};

use crate::{aggregate::stacks::StackCounts, probes::process_maps::ProcessMaps};

/// pprof mapping name of kernel frames (the name perf uses).
pub const KERNEL_MAPPING: &str = "[kernel.kallsyms]";

/// How samples are valued in the profile being built.
#[derive(Debug, Clone)]
pub struct ProfileShape {
    /// e.g. ("samples","count") and ("cpu","nanoseconds").
    pub sample_types: Vec<ValueType>,
    pub period_type: ValueType,
    /// Value of one sample in the period type's unit.
    pub period: i64,
    pub time_nanos: i64,
    pub duration_nanos: i64,
}

/// Where a frame lives before symbolization.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum FrameKey {
    /// (index into the module table, file offset or, for pseudo mappings,
    /// the offset inside the mapping).
    Module(usize, u64),
    Kernel(u64),
    /// No mapping known for this address (process not snapshotted).
    Unmapped(u64),
}

/// Builds profiles from stack counts; holds blazesym's caches so that one
/// symbolizer serves a whole capture.
pub struct Symbolizer {
    inner: blazesym::symbolize::Symbolizer,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    #[must_use]
    pub fn new() -> Self {
        let inner = blazesym::symbolize::Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .build();
        Self { inner }
    }

    /// Symbolizes every stack and returns the profile. Each stack's values
    /// must match `shape.sample_types`.
    #[must_use]
    pub fn build_profile(
        &self,
        stacks: &StackCounts,
        maps: &ProcessMaps,
        shape: &ProfileShape,
    ) -> Profile {
        let mut modules = ModuleTable::default();
        let mut keyed: Vec<(Vec<FrameKey>, &crate::aggregate::stacks::RawStack)> = Vec::new();
        for stack in stacks.stacks() {
            let mut frames = Vec::with_capacity(stack.kernel.len() + stack.user.len());
            for (i, &ip) in stack.kernel.iter().enumerate() {
                frames.push(FrameKey::Kernel(caller_adjusted(ip, i)));
            }
            for (i, &ip) in stack.user.iter().enumerate() {
                let ip = caller_adjusted(ip, i);
                frames.push(match maps.find(stack.pid, ip) {
                    Some(entry) => modules.frame(entry, ip),
                    None => FrameKey::Unmapped(ip),
                });
            }
            keyed.push((frames, stack));
        }
        let mut resolved: HashMap<FrameKey, Location> = HashMap::new();
        user::resolve(&self.inner, &modules, &keyed, &mut resolved);
        let has_kernel = keyed
            .iter()
            .any(|(f, _)| f.iter().any(|k| matches!(k, FrameKey::Kernel(_))));
        if has_kernel {
            kernel::resolve(&self.inner, modules.kernel_index(), &keyed, &mut resolved);
        }
        let samples = keyed
            .iter()
            .map(|(frames, raw)| Sample {
                stack: frames
                    .iter()
                    .map(|k| resolved.get(k).cloned().unwrap_or_else(|| unresolved(*k)))
                    .collect(),
                values: raw.values.clone(),
                labels: labels(raw),
            })
            .collect();
        Profile {
            default_sample_type: shape
                .sample_types
                .last()
                .map(|t| t.r#type.clone())
                .unwrap_or_default(),
            sample_types: shape.sample_types.clone(),
            period_type: shape.period_type.clone(),
            period: shape.period,
            time_nanos: shape.time_nanos,
            duration_nanos: shape.duration_nanos,
            mappings: modules.into_mappings(),
            samples,
            comments: Vec::new(),
        }
    }
}

/// `pid`, `comm`, then the stack's own labels.
fn labels(raw: &crate::aggregate::stacks::RawStack) -> Vec<Label> {
    let mut labels = vec![
        Label {
            key: "pid".into(),
            value: LabelValue::Num {
                value: i64::from(raw.pid),
                unit: String::new(),
            },
        },
        Label {
            key: "comm".into(),
            value: LabelValue::Str(raw.comm.clone()),
        },
    ];
    labels.extend(raw.labels.iter().map(|(k, v)| Label {
        key: k.clone(),
        value: LabelValue::Str(v.clone()),
    }));
    labels
}

/// Return addresses point after the call; step back one byte so that the
/// caller's line (not the next one) is found. The leaf is an exact ip.
fn caller_adjusted(ip: u64, depth: usize) -> u64 {
    if depth == 0 { ip } else { ip.saturating_sub(1) }
}

fn unresolved(key: FrameKey) -> Location {
    match key {
        FrameKey::Module(_, addr) | FrameKey::Kernel(addr) | FrameKey::Unmapped(addr) => Location {
            address: addr,
            mapping: None,
            lines: Vec::new(),
        },
    }
}

/// Binaries (and pseudo mappings) seen in the capture; each becomes one
/// pprof mapping. Addresses in those mappings are file offsets (start 0,
/// offset 0), so one library shared by many processes is one mapping.
#[derive(Default)]
struct ModuleTable {
    index: HashMap<String, usize>,
    modules: Vec<Module>,
    kernel: Option<usize>,
}

struct Module {
    path: String,
    is_file: bool,
    max_offset: u64,
}

impl ModuleTable {
    fn frame(&mut self, entry: &crate::probes::process_maps::MapEntry, ip: u64) -> FrameKey {
        let offset = entry.file_offset(ip);
        let idx = self.intern(&entry.path, entry.is_file());
        let module = &mut self.modules[idx];
        module.max_offset = module.max_offset.max(offset);
        FrameKey::Module(idx, offset)
    }

    fn intern(&mut self, path: &str, is_file: bool) -> usize {
        if let Some(&i) = self.index.get(path) {
            return i;
        }
        self.modules.push(Module {
            path: path.to_owned(),
            is_file,
            max_offset: 0,
        });
        self.index.insert(path.to_owned(), self.modules.len() - 1);
        self.modules.len() - 1
    }

    fn kernel_index(&mut self) -> usize {
        if let Some(i) = self.kernel {
            return i;
        }
        let i = self.intern(KERNEL_MAPPING, false);
        self.modules[i].max_offset = u64::MAX - 1;
        self.kernel = Some(i);
        i
    }

    fn into_mappings(self) -> Vec<Mapping> {
        self.modules
            .into_iter()
            .map(|m| Mapping {
                start: 0,
                limit: m.max_offset.saturating_add(1),
                offset: 0,
                build_id: if m.is_file {
                    user::build_id(&m.path)
                } else {
                    String::new()
                },
                file: m.path,
                has_functions: true,
            })
            .collect()
    }
}
