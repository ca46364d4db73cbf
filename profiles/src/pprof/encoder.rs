//! Model → pprof protobuf.

use std::collections::HashMap;

use prost::Message;

use super::proto;
use crate::{LabelValue, Line, Location, Profile, ProfileError, Sample, ValueType};

/// Interns strings so each distinct one is stored once; index 0 is `""` as
/// pprof requires (0 doubles as "unset" in every string field).
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut s = Self {
            table: Vec::new(),
            index: HashMap::new(),
        };
        s.intern("");
        s
    }

    fn intern(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }

    fn value_type(&mut self, vt: &ValueType) -> proto::ValueType {
        proto::ValueType {
            r#type: self.intern(&vt.r#type),
            unit: self.intern(&vt.unit),
        }
    }
}

/// What the locations of one mapping turned out to contain; pprof tools use
/// these flags to decide whether a mapping still needs symbolization.
#[derive(Default, Clone, Copy)]
struct MappingFlags {
    filenames: bool,
    line_numbers: bool,
    inline_frames: bool,
}

struct Encoder<'a> {
    profile: &'a Profile,
    strings: Strings,
    functions: Vec<proto::Function>,
    /// (`name`, `system_name`, `filename`) string indices → function id.
    function_ids: HashMap<(i64, i64, i64), u64>,
    locations: Vec<proto::Location>,
    /// Keyed by content: equal model locations become one pprof location.
    location_ids: HashMap<&'a Location, u64>,
    mapping_flags: Vec<MappingFlags>,
}

pub(super) fn encode(profile: &Profile) -> Result<Vec<u8>, ProfileError> {
    Ok(Encoder::new(profile).build()?.encode_to_vec())
}

impl<'a> Encoder<'a> {
    fn new(profile: &'a Profile) -> Self {
        Self {
            profile,
            strings: Strings::new(),
            functions: Vec::new(),
            function_ids: HashMap::new(),
            locations: Vec::new(),
            location_ids: HashMap::new(),
            mapping_flags: vec![MappingFlags::default(); profile.mappings.len()],
        }
    }

    fn build(mut self) -> Result<proto::Profile, ProfileError> {
        let p = self.profile;
        if !p.default_sample_type.is_empty()
            && p.sample_type_index(&p.default_sample_type).is_none()
        {
            return Err(ProfileError::Model(format!(
                "default_sample_type {:?} is not one of the sample types",
                p.default_sample_type
            )));
        }
        let sample_type = p
            .sample_types
            .iter()
            .map(|t| self.strings.value_type(t))
            .collect();
        let sample = p
            .samples
            .iter()
            .enumerate()
            .map(|(i, s)| self.sample(i, s))
            .collect::<Result<Vec<_>, _>>()?;
        let mapping = self.mappings();
        let period_type = (p.period_type != ValueType::default())
            .then(|| self.strings.value_type(&p.period_type));
        let comment = p.comments.iter().map(|c| self.strings.intern(c)).collect();
        let default_sample_type = self.strings.intern(&p.default_sample_type);
        Ok(proto::Profile {
            sample_type,
            sample,
            mapping,
            location: self.locations,
            function: self.functions,
            string_table: self
                .strings
                .table
                .into_iter()
                .map(String::into_bytes)
                .collect(),
            drop_frames: 0,
            keep_frames: 0,
            time_nanos: p.time_nanos,
            duration_nanos: p.duration_nanos,
            period_type,
            period: p.period,
            comment,
            default_sample_type,
        })
    }

    fn sample(&mut self, index: usize, s: &'a Sample) -> Result<proto::Sample, ProfileError> {
        let types = self.profile.sample_types.len();
        if s.values.len() != types {
            return Err(ProfileError::Model(format!(
                "sample {index} has {} values but the profile has {types} sample types",
                s.values.len()
            )));
        }
        let location_id = s
            .stack
            .iter()
            .enumerate()
            .map(|(frame, loc)| self.location(index, frame, loc))
            .collect::<Result<Vec<_>, _>>()?;
        let label = s
            .labels
            .iter()
            .map(|l| {
                let key = self.strings.intern(&l.key);
                match &l.value {
                    LabelValue::Str(v) => proto::Label {
                        key,
                        str: self.strings.intern(v),
                        num: 0,
                        num_unit: 0,
                    },
                    LabelValue::Num { value, unit } => proto::Label {
                        key,
                        str: 0,
                        num: *value,
                        num_unit: self.strings.intern(unit),
                    },
                }
            })
            .collect();
        Ok(proto::Sample {
            location_id,
            value: s.values.clone(),
            label,
        })
    }

    fn location(
        &mut self,
        sample: usize,
        frame: usize,
        loc: &'a Location,
    ) -> Result<u64, ProfileError> {
        if let Some(&id) = self.location_ids.get(loc) {
            return Ok(id);
        }
        let mapping_id = match loc.mapping {
            None => 0,
            Some(i) if i < self.profile.mappings.len() => {
                let flags = &mut self.mapping_flags[i];
                flags.inline_frames |= loc.lines.len() > 1;
                flags.filenames |= loc.lines.iter().any(|l| !l.file.is_empty());
                flags.line_numbers |= loc.lines.iter().any(|l| l.line != 0);
                i as u64 + 1
            }
            Some(i) => {
                return Err(ProfileError::Model(format!(
                    "sample {sample} frame {frame} refers to mapping index {i}, but the profile \
                     has only {} mappings",
                    self.profile.mappings.len()
                )));
            }
        };
        let line = loc
            .lines
            .iter()
            .map(|l| proto::Line {
                function_id: self.function(l),
                line: l.line,
                column: 0,
            })
            .collect();
        let id = self.locations.len() as u64 + 1;
        self.locations.push(proto::Location {
            id,
            mapping_id,
            address: loc.address,
            line,
            is_folded: false,
        });
        self.location_ids.insert(loc, id);
        Ok(id)
    }

    fn function(&mut self, line: &Line) -> u64 {
        let key = (
            self.strings.intern(&line.function),
            self.strings.intern(&line.system_name),
            self.strings.intern(&line.file),
        );
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        self.functions.push(proto::Function {
            id,
            name: key.0,
            system_name: key.1,
            filename: key.2,
            start_line: 0,
        });
        self.function_ids.insert(key, id);
        id
    }

    fn mappings(&mut self) -> Vec<proto::Mapping> {
        let profile = self.profile;
        profile
            .mappings
            .iter()
            .zip(&self.mapping_flags)
            .enumerate()
            .map(|(i, (m, flags))| proto::Mapping {
                id: i as u64 + 1,
                memory_start: m.start,
                memory_limit: m.limit,
                file_offset: m.offset,
                filename: self.strings.intern(&m.file),
                build_id: self.strings.intern(&m.build_id),
                has_functions: m.has_functions,
                has_filenames: flags.filenames,
                has_line_numbers: flags.line_numbers,
                has_inline_frames: flags.inline_frames,
            })
            .collect()
    }
}
