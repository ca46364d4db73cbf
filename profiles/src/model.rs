//! The symbolized, high-level profile model.
//!
//! pprof's wire format is normalized (string table, id-linked functions and
//! locations) to keep files small. Everything else in qprof is easier to write
//! against a denormalized model where a sample simply owns its frames, so this
//! module holds that model and [`crate::pprof`] translates at the boundary.

/// What a sample value measures, e.g. `cpu`/`nanoseconds` or `samples`/`count`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ValueType {
    /// The kind of value (`cpu`, `samples`, `alloc_space`, ...).
    pub r#type: String,
    /// The unit of the value (`nanoseconds`, `count`, `bytes`, ...).
    pub unit: String,
}

impl ValueType {
    /// Convenience constructor, because profiles are mostly built in code.
    #[must_use]
    pub fn new(r#type: impl Into<String>, unit: impl Into<String>) -> Self {
        Self {
            r#type: r#type.into(),
            unit: unit.into(),
        }
    }
}

/// One executable mapping (binary or shared library) of the profiled process.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Mapping {
    /// First address of the mapping in the process' address space.
    pub start: u64,
    /// One past the last address of the mapping.
    pub limit: u64,
    /// File offset that `start` corresponds to.
    pub offset: u64,
    /// Path of the mapped file; empty for anonymous memory.
    pub file: String,
    /// Hex build id of the file, when known; lets pprof find the right binary.
    pub build_id: String,
    /// Whether the frames in this mapping were symbolized.
    pub has_functions: bool,
}

/// One source-level frame of a [`Location`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Line {
    /// Human-readable (demangled) function name; empty when unknown.
    pub function: String,
    /// Mangled / system name of the function; empty when unknown.
    pub system_name: String,
    /// Source file; `""` when unknown.
    pub file: String,
    /// Source line; `0` when unknown.
    pub line: i64,
}

/// One frame; `lines` innermost first (index 0 = the inlined callee), like
/// pprof's `Location.line`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Location {
    /// Instruction address in the process' address space (0 if unknown).
    pub address: u64,
    /// Index into [`Profile::mappings`]; `None` when the address is not
    /// covered by any known mapping (e.g. JIT code or kernel frames).
    pub mapping: Option<usize>,
    /// Source frames at this address, innermost (inlined callee) first.
    pub lines: Vec<Line>,
}

impl Location {
    /// The name to show for this frame: the innermost function name, or a
    /// `module+0xoffset` / `0xaddress` fallback so an unsymbolized frame is
    /// still identifiable (and never renders as an empty string).
    #[must_use]
    pub fn display_name(&self, mappings: &[Mapping]) -> String {
        if let Some(line) = self.lines.first() {
            if !line.function.is_empty() {
                return line.function.clone();
            }
            if !line.system_name.is_empty() {
                return line.system_name.clone();
            }
        }
        self.fallback_name(mappings)
    }

    /// `"<basename>+0x<file offset>"` when the mapping is known and named,
    /// else `"0x<address>"`. File offsets (not raw addresses) are used so the
    /// name is stable across runs despite ASLR and matches `addr2line` input.
    #[must_use]
    pub fn fallback_name(&self, mappings: &[Mapping]) -> String {
        let mapping = self.mapping.and_then(|i| mappings.get(i));
        if let Some(m) = mapping {
            let base = m.file.rsplit('/').next().unwrap_or_default();
            let file_offset = self
                .address
                .checked_sub(m.start)
                .and_then(|rel| rel.checked_add(m.offset));
            if let (false, Some(off)) = (base.is_empty(), file_offset) {
                return format!("{base}+0x{off:x}");
            }
        }
        format!("0x{:x}", self.address)
    }
}

/// The value of a [`Label`]: pprof labels are either strings or numbers with
/// an optional unit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LabelValue {
    /// A string label such as `thread_name = "worker-1"`.
    Str(String),
    /// A numeric label such as `pid = 42` or `bytes = 4096 (bytes)`.
    Num {
        /// The number.
        value: i64,
        /// Its unit; may be empty.
        unit: String,
    },
}

impl Default for LabelValue {
    fn default() -> Self {
        Self::Str(String::new())
    }
}

/// A key/value annotation on a sample (pid, thread name, ...).
///
/// Note that pprof stores a label with an empty string value the same way as
/// a numeric label of 0, so `Str("")` decodes back as `Num { value: 0, .. }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Label {
    /// Label name.
    pub key: String,
    /// Label value.
    pub value: LabelValue,
}

impl Label {
    /// A string label.
    #[must_use]
    pub fn str(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: LabelValue::Str(value.into()),
        }
    }

    /// A numeric label.
    #[must_use]
    pub fn num(key: impl Into<String>, value: i64, unit: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: LabelValue::Num {
                value,
                unit: unit.into(),
            },
        }
    }
}

/// One observed stack with its measured values.
///
/// `stack` is leaf first (pprof order).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sample {
    /// Frames, leaf (innermost) first.
    pub stack: Vec<Location>,
    /// One value per [`Profile::sample_types`] entry, in the same order.
    pub values: Vec<i64>,
    /// Annotations such as pid or thread name.
    pub labels: Vec<Label>,
}

/// A whole profile: what was measured, over which period, and the samples.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Profile {
    /// What each entry of [`Sample::values`] measures.
    pub sample_types: Vec<ValueType>,
    /// `type` of the sample type viewers should show first; empty = the last
    /// one (pprof's convention).
    pub default_sample_type: String,
    /// What the sampling period is measured in (e.g. `cpu`/`nanoseconds`).
    pub period_type: ValueType,
    /// Sampling period, in `period_type` units.
    pub period: i64,
    /// Wall-clock start of the profile, nanoseconds since the Unix epoch.
    pub time_nanos: i64,
    /// Length of the profiled interval in nanoseconds.
    pub duration_nanos: i64,
    /// Mappings referenced by [`Location::mapping`].
    pub mappings: Vec<Mapping>,
    /// The samples.
    pub samples: Vec<Sample>,
    /// Free-form comments shown by `pprof -comments`.
    pub comments: Vec<String>,
}

impl Profile {
    /// Index of the sample type whose `type` is `name`, so callers can pick
    /// e.g. `"cpu"` without knowing the layout the agent chose.
    #[must_use]
    pub fn sample_type_index(&self, name: &str) -> Option<usize> {
        self.sample_types.iter().position(|t| t.r#type == name)
    }

    /// Sum of value `index` over all samples (samples lacking that value count
    /// as 0). Saturates instead of overflowing: this is for display, and a
    /// wrong-but-huge number is better than a panic.
    #[must_use]
    pub fn total(&self, index: usize) -> i64 {
        self.samples
            .iter()
            .filter_map(|s| s.values.get(index))
            .fold(0i64, |acc, v| acc.saturating_add(*v))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn libc() -> Mapping {
        Mapping {
            start: 0x7f00_0000_0000,
            limit: 0x7f00_0010_0000,
            offset: 0x2000,
            file: "/usr/lib/libc.so.6".into(),
            ..Mapping::default()
        }
    }

    /// Guards the display-name fallback chain: function, system name, module+offset, address.
    #[test]
    fn display_name_fallbacks() {
        let maps = [libc(), Mapping::default()];
        let mut loc = Location {
            address: 0x7f00_0000_1234,
            mapping: Some(0),
            lines: vec![],
        };
        assert_eq!(loc.display_name(&maps), "libc.so.6+0x3234");
        loc.lines.push(Line {
            system_name: "_Z3foov".into(),
            ..Line::default()
        });
        assert_eq!(loc.display_name(&maps), "_Z3foov");
        loc.lines[0].function = "foo()".into();
        assert_eq!(loc.display_name(&maps), "foo()");

        let unmapped = Location {
            address: 0xdead,
            mapping: None,
            lines: vec![Line::default()],
        };
        assert_eq!(unmapped.display_name(&maps), "0xdead");
        let anon = Location {
            address: 0xbeef,
            mapping: Some(1),
            lines: vec![],
        };
        assert_eq!(anon.display_name(&maps), "0xbeef");
        let below = Location {
            address: 1,
            mapping: Some(0),
            lines: vec![],
        };
        assert_eq!(below.display_name(&maps), "0x1");
        let dangling = Location {
            address: 2,
            mapping: Some(9),
            lines: vec![],
        };
        assert_eq!(dangling.display_name(&maps), "0x2");
    }

    /// Guards sample type lookup by name and saturating totals.
    #[test]
    fn lookup_and_total() {
        let p = Profile {
            sample_types: vec![
                ValueType::new("samples", "count"),
                ValueType::new("cpu", "ns"),
            ],
            samples: vec![
                Sample {
                    values: vec![1, i64::MAX],
                    ..Sample::default()
                },
                Sample {
                    values: vec![2, 5],
                    ..Sample::default()
                },
                Sample {
                    values: vec![3],
                    ..Sample::default()
                },
            ],
            ..Profile::default()
        };
        assert_eq!(p.sample_type_index("cpu"), Some(1));
        assert_eq!(p.sample_type_index("wall"), None);
        assert_eq!(p.total(0), 6);
        assert_eq!(p.total(1), i64::MAX);
        assert_eq!(p.total(7), 0);
    }
}
