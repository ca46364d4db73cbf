//! Symbolization on the host: raw stacks (addresses per process) in, a
//! symbolized [`profiles::Profile`] out.
//!
//! User frames are symbolized per *file*, by file offset, from the mappings
//! the sampler snapshotted while each process was alive — so processes that
//! exited during the capture still symbolize, and a library shared by a
//! hundred processes is read once. Kernel frames come from kallsyms.
//!
//! A [`Symbolizer`] is meant to live as long as the agent: it keeps what it
//! resolved (per file identity and offset, and per kernel address) and
//! blazesym's parsed files, so that a window costs little when the binaries
//! are those of a minute ago. Every cache is bounded; see the constants.
//! It is not `Send` (blazesym's caches use `Rc`): keep it on one thread.

mod cache;
mod kernel;
mod user;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
};

use profiles::{Label, LabelValue, Line, Location, Mapping, Profile, Sample, ValueType};

use crate::{aggregate::stacks::StackCounts, probes::process_maps::ProcessMaps};
use cache::BoundedCache;

/// pprof mapping name of kernel frames (the name perf uses).
pub const KERNEL_MAPPING: &str = "[kernel.kallsyms]";

/// Resolved frames kept across windows. A 60 s host-wide window at 19 Hz
/// on a few CPUs has a few thousand distinct frames; a busy 16-CPU host at
/// 99 Hz some tens of thousands. An entry is ~200-300 bytes (function and
/// file names), so 65,536 entries are ~16 MiB at most.
pub const FRAME_CACHE_CAPACITY: usize = 65_536;
/// Files whose identity and build id are kept: more executables and
/// libraries than a host runs at once.
pub const FILE_CACHE_CAPACITY: usize = 4_096;
/// Files blazesym keeps parsed (each holds a mapping of the file and its
/// parsed symbol tables, debug info included). blazesym has no eviction of
/// its own, so past this many distinct files it is rebuilt empty (counted
/// as a resolver reset); the frame cache above keeps most of its work.
pub const RESOLVER_FILES_CAPACITY: usize = 256;
/// Bytes of files (their sizes) blazesym may hold parsed at once. Parsed
/// symbol tables and debug info grow with the file: on a build host a few
/// compilers' libraries (`librustc_driver` 150 MB, `libLLVM` 195 MB, test
/// binaries with full DWARF) held 500+ MB resident under a count-only
/// bound. 128 MiB keeps the agent's memory in tens of MB while a host's
/// usual binaries (libc, the services) stay parsed between windows.
pub const RESOLVER_BYTES_CAPACITY: u64 = 128 << 20;

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

/// A file as it is on disk now: a file replaced by an upgrade at the same
/// path is another file, and its frames are resolved again.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileId {
    fn of(path: &str) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        })
    }
}

/// Key of the frame cache: stable across windows (unlike [`FrameKey`],
/// whose module index is per profile).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum CachedFrame {
    File(FileId, u64),
    /// Kernel text does not move while it runs (a module unloaded and
    /// another loaded at its address is the rare exception).
    Kernel(u64),
}

/// Counters of the caches, for the agent's health metrics and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SymbolizerStats {
    /// Frames found in the frame cache.
    pub frame_hits: u64,
    /// Frames resolved with blazesym (then cached).
    pub frame_misses: u64,
    pub frame_evictions: u64,
    pub frames_cached: usize,
    pub file_evictions: u64,
    /// Times blazesym was rebuilt empty to bound its parsed files.
    pub resolver_resets: u64,
}

/// Builds profiles from stack counts; keeps its caches between calls.
pub struct Symbolizer {
    inner: blazesym::symbolize::Symbolizer,
    /// Files handed to `inner` since it was (re)built.
    resolver_files: HashSet<FileId>,
    /// Sum of their sizes.
    resolver_bytes: u64,
    frames: BoundedCache<CachedFrame, Vec<Line>>,
    /// Build id (lowercase hex, "" for none) per file.
    build_ids: BoundedCache<FileId, String>,
    stats: SymbolizerStats,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

fn blazesym_symbolizer() -> blazesym::symbolize::Symbolizer {
    blazesym::symbolize::Symbolizer::builder()
        .enable_code_info(true)
        .enable_inlined_fns(true)
        .enable_demangling(true)
        .build()
}

impl Symbolizer {
    #[must_use]
    pub fn new() -> Self {
        Self {
            inner: blazesym_symbolizer(),
            resolver_files: HashSet::new(),
            resolver_bytes: 0,
            frames: BoundedCache::new(FRAME_CACHE_CAPACITY),
            build_ids: BoundedCache::new(FILE_CACHE_CAPACITY),
            stats: SymbolizerStats::default(),
        }
    }

    /// What the caches did since this symbolizer was made.
    #[must_use]
    pub fn stats(&self) -> SymbolizerStats {
        SymbolizerStats {
            frame_evictions: self.frames.evictions(),
            frames_cached: self.frames.len(),
            file_evictions: self.build_ids.evictions(),
            ..self.stats
        }
    }

    /// Symbolizes every stack and returns the profile. Each stack's values
    /// must match `shape.sample_types`.
    pub fn build_profile(
        &mut self,
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
        let resolved = self.resolve(&mut modules, &keyed);
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
        let mappings = self.mappings(modules);
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
            mappings,
            samples,
            comments: Vec::new(),
        }
    }

    /// Every distinct frame of `keyed` as a location: from the cache, or
    /// resolved (one blazesym batch per file, one for the kernel) and cached.
    fn resolve(
        &mut self,
        modules: &mut ModuleTable,
        keyed: &[(Vec<FrameKey>, &crate::aggregate::stacks::RawStack)],
    ) -> HashMap<FrameKey, Location> {
        let distinct: BTreeSet<FrameKeyOrd> = keyed
            .iter()
            .flat_map(|(f, _)| f.iter().copied().map(FrameKeyOrd))
            .collect();
        let mut out = HashMap::with_capacity(distinct.len());
        let mut user_misses: HashMap<usize, Vec<u64>> = HashMap::new();
        let mut kernel_misses = Vec::new();
        let kernel_index = if distinct.iter().any(|k| matches!(k.0, FrameKey::Kernel(_))) {
            Some(modules.kernel_index())
        } else {
            None
        };
        for FrameKeyOrd(key) in distinct {
            let (cached, mapping) = match key {
                FrameKey::Module(idx, off) => {
                    let Some(id) = modules.modules[idx].file else {
                        // Pseudo mapping ([vdso], [anon]): nothing to resolve.
                        out.insert(key, location(off, idx, Vec::new()));
                        continue;
                    };
                    (CachedFrame::File(id, off), idx)
                }
                FrameKey::Kernel(addr) => {
                    (CachedFrame::Kernel(addr), kernel_index.unwrap_or_default())
                }
                FrameKey::Unmapped(_) => continue,
            };
            if let Some(lines) = self.frames.get(&cached) {
                self.stats.frame_hits += 1;
                out.insert(key, location(addr_of(key), mapping, lines.clone()));
            } else {
                self.stats.frame_misses += 1;
                match key {
                    FrameKey::Module(idx, off) => user_misses.entry(idx).or_default().push(off),
                    _ => kernel_misses.push(addr_of(key)),
                }
            }
        }
        for (idx, offs) in user_misses {
            let Some(id) = modules.modules[idx].file else {
                continue;
            };
            self.bound_resolver(id);
            let lines = user::resolve(&self.inner, &modules.modules[idx].path, &offs);
            for (off, lines) in offs.into_iter().zip(lines) {
                self.frames
                    .insert(CachedFrame::File(id, off), lines.clone());
                out.insert(FrameKey::Module(idx, off), location(off, idx, lines));
            }
        }
        if let Some(kernel_index) = kernel_index {
            let lines = kernel::resolve(&self.inner, &kernel_misses);
            for (addr, lines) in kernel_misses.into_iter().zip(lines) {
                self.frames.insert(CachedFrame::Kernel(addr), lines.clone());
                out.insert(FrameKey::Kernel(addr), location(addr, kernel_index, lines));
            }
        }
        out
    }

    /// Rebuilds blazesym empty before it would hold more than
    /// [`RESOLVER_FILES_CAPACITY`] parsed files or
    /// [`RESOLVER_BYTES_CAPACITY`] bytes of them.
    fn bound_resolver(&mut self, id: FileId) {
        if self.resolver_files.contains(&id) {
            return;
        }
        let too_many = self.resolver_files.len() >= RESOLVER_FILES_CAPACITY;
        let too_big = self.resolver_bytes.saturating_add(id.size) > RESOLVER_BYTES_CAPACITY;
        if (too_many || too_big) && !self.resolver_files.is_empty() {
            self.release_resolver();
        }
        self.resolver_bytes = self.resolver_bytes.saturating_add(id.size);
        self.resolver_files.insert(id);
    }

    /// Drops everything blazesym holds parsed (counted as a reset); the
    /// frame cache keeps what was resolved. The agent calls it after each
    /// window so that files seen once do not stay parsed.
    pub fn release_resolver(&mut self) {
        if self.resolver_files.is_empty() {
            return;
        }
        self.inner = blazesym_symbolizer();
        self.resolver_files.clear();
        self.resolver_bytes = 0;
        self.stats.resolver_resets += 1;
    }

    /// One pprof mapping per module, with the file's build id (cached).
    fn mappings(&mut self, modules: ModuleTable) -> Vec<Mapping> {
        modules
            .modules
            .into_iter()
            .map(|m| {
                let build_id = match m.file {
                    Some(id) => {
                        if let Some(b) = self.build_ids.get(&id) {
                            b.clone()
                        } else {
                            let b = user::build_id(&m.path);
                            self.build_ids.insert(id, b.clone());
                            b
                        }
                    }
                    None => String::new(),
                };
                Mapping {
                    start: 0,
                    limit: m.max_offset.saturating_add(1),
                    offset: 0,
                    build_id,
                    file: m.path,
                    has_functions: true,
                }
            })
            .collect()
    }
}

/// [`FrameKey`] in a deterministic order, so that batches (and the
/// profile) do not depend on hash order.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FrameKeyOrd(FrameKey);

impl FrameKeyOrd {
    fn rank(self) -> (u8, usize, u64) {
        match self.0 {
            FrameKey::Module(i, o) => (0, i, o),
            FrameKey::Kernel(a) => (1, 0, a),
            FrameKey::Unmapped(a) => (2, 0, a),
        }
    }
}

impl PartialOrd for FrameKeyOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FrameKeyOrd {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank().cmp(&other.rank())
    }
}

fn addr_of(key: FrameKey) -> u64 {
    match key {
        FrameKey::Module(_, a) | FrameKey::Kernel(a) | FrameKey::Unmapped(a) => a,
    }
}

fn location(address: u64, mapping: usize, lines: Vec<Line>) -> Location {
    Location {
        address,
        mapping: Some(mapping),
        lines,
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
    /// Identity of the file on disk; `None` for pseudo mappings and files
    /// that cannot be opened (their frames stay module+offset).
    file: Option<FileId>,
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
            file: if is_file { FileId::of(path) } else { None },
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
}

#[cfg(test)]
mod tests;
