//! pprof protobuf (raw or gzipped) → model, validating every reference.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::Read;

use flate2::read::MultiGzDecoder;
use prost::Message;

use super::proto;
use crate::{Label, LabelValue, Line, Location, Mapping, Profile, ProfileError, Sample, ValueType};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

fn invalid(msg: String) -> ProfileError {
    ProfileError::Invalid(msg)
}

/// [`super::decode`] with a configurable inflate limit, so tests can exercise
/// the gzip-bomb guard without producing a gigabyte.
pub(super) fn decode_with_limit(bytes: &[u8], limit: u64) -> Result<Profile, ProfileError> {
    if bytes.is_empty() {
        return Err(ProfileError::Empty);
    }
    let inflated;
    let raw = if bytes.starts_with(&GZIP_MAGIC) {
        inflated = gunzip(bytes, limit)?;
        if inflated.is_empty() {
            return Err(ProfileError::Empty);
        }
        &inflated[..]
    } else {
        bytes
    };
    from_proto(proto::Profile::decode(raw)?)
}

/// Inflates all gzip members (like Go's reader, which pprof uses) but never
/// more than `limit` bytes.
fn gunzip(bytes: &[u8], limit: u64) -> Result<Vec<u8>, ProfileError> {
    let mut out = Vec::new();
    MultiGzDecoder::new(bytes)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(ProfileError::Gzip)?;
    if out.len() as u64 > limit {
        return Err(ProfileError::TooLarge { limit });
    }
    Ok(out)
}

/// Bounds-checked access to the string table with errors that say who held
/// the bad index.
struct Strings(Vec<String>);

impl Strings {
    fn get(&self, index: i64, what: impl FnOnce() -> String) -> Result<&str, ProfileError> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.0.get(i))
            .map(String::as_str)
            .ok_or_else(|| {
                invalid(format!(
                    "string index {index} out of range (string table has {} entries), used by {}",
                    self.0.len(),
                    what()
                ))
            })
    }

    fn owned(&self, index: i64, what: impl FnOnce() -> String) -> Result<String, ProfileError> {
        self.get(index, what).map(str::to_owned)
    }

    fn value_type(&self, vt: &proto::ValueType, what: &str) -> Result<ValueType, ProfileError> {
        Ok(ValueType {
            r#type: self.owned(vt.r#type, || format!("{what} type"))?,
            unit: self.owned(vt.unit, || format!("{what} unit"))?,
        })
    }
}

/// Function fields, still as string-table references to avoid copying each
/// name once per function *and* once per line.
struct Function<'s> {
    name: &'s str,
    system_name: &'s str,
    file: &'s str,
}

fn from_proto(pb: proto::Profile) -> Result<Profile, ProfileError> {
    let strings = Strings(
        pb.string_table
            .into_iter()
            .map(|b| match String::from_utf8(b) {
                Ok(s) => s,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            })
            .collect(),
    );
    match strings.0.first() {
        Some(s) if s.is_empty() => {}
        Some(s) => {
            return Err(invalid(format!(
                "string table entry 0 must be \"\", found {s:?}"
            )));
        }
        None => {
            return Err(invalid(
                "string table is empty (entry 0 must be \"\")".into(),
            ));
        }
    }
    let s = &strings;

    let sample_types = pb
        .sample_type
        .iter()
        .enumerate()
        .map(|(i, vt)| s.value_type(vt, &format!("sample_type {i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let default_sample_type = s.owned(pb.default_sample_type, || "default_sample_type".into())?;
    if !default_sample_type.is_empty()
        && !sample_types.iter().any(|t| t.r#type == default_sample_type)
    {
        return Err(invalid(format!(
            "default_sample_type {default_sample_type:?} is not one of the sample types"
        )));
    }
    s.get(pb.drop_frames, || "drop_frames".into())?;
    s.get(pb.keep_frames, || "keep_frames".into())?;
    let period_type = match &pb.period_type {
        Some(vt) => s.value_type(vt, "period_type")?,
        None => ValueType::default(),
    };
    let comments = pb
        .comment
        .iter()
        .enumerate()
        .map(|(i, &c)| s.owned(c, || format!("comment {i}")))
        .collect::<Result<Vec<_>, _>>()?;

    let (mappings, mapping_index) = mappings(&pb.mapping, s)?;
    let functions = functions(&pb.function, s)?;
    let locations = locations(&pb.location, &mapping_index, &functions)?;
    let samples = pb
        .sample
        .iter()
        .enumerate()
        .map(|(i, sample)| self::sample(i, sample, sample_types.len(), &locations, s))
        .collect::<Result<Vec<_>, _>>()?;

    Ok(Profile {
        sample_types,
        default_sample_type,
        period_type,
        period: pb.period,
        time_nanos: pb.time_nanos,
        duration_nanos: pb.duration_nanos,
        mappings,
        samples,
        comments,
    })
}

/// Rejects id 0 and duplicates, which would make references ambiguous.
fn check_id<V>(
    map: &mut HashMap<u64, V>,
    kind: &str,
    pos: usize,
    id: u64,
    v: V,
) -> Result<(), ProfileError> {
    if id == 0 {
        return Err(invalid(format!(
            "{kind} #{pos} has id 0; ids must be nonzero"
        )));
    }
    match map.entry(id) {
        Entry::Occupied(_) => Err(invalid(format!("duplicate {kind} id {id}"))),
        Entry::Vacant(e) => {
            e.insert(v);
            Ok(())
        }
    }
}

fn mappings(
    pb: &[proto::Mapping],
    s: &Strings,
) -> Result<(Vec<Mapping>, HashMap<u64, usize>), ProfileError> {
    let mut index = HashMap::with_capacity(pb.len());
    let mut out = Vec::with_capacity(pb.len());
    for (i, m) in pb.iter().enumerate() {
        check_id(&mut index, "mapping", i, m.id, i)?;
        out.push(Mapping {
            start: m.memory_start,
            limit: m.memory_limit,
            offset: m.file_offset,
            file: s.owned(m.filename, || format!("mapping id {} filename", m.id))?,
            build_id: s.owned(m.build_id, || format!("mapping id {} build_id", m.id))?,
            has_functions: m.has_functions,
        });
    }
    Ok((out, index))
}

fn functions<'s>(
    pb: &[proto::Function],
    s: &'s Strings,
) -> Result<HashMap<u64, Function<'s>>, ProfileError> {
    let mut out = HashMap::with_capacity(pb.len());
    for (i, f) in pb.iter().enumerate() {
        let function = Function {
            name: s.get(f.name, || format!("function id {} name", f.id))?,
            system_name: s.get(f.system_name, || {
                format!("function id {} system_name", f.id)
            })?,
            file: s.get(f.filename, || format!("function id {} filename", f.id))?,
        };
        check_id(&mut out, "function", i, f.id, function)?;
    }
    Ok(out)
}

fn locations(
    pb: &[proto::Location],
    mapping_index: &HashMap<u64, usize>,
    functions: &HashMap<u64, Function<'_>>,
) -> Result<HashMap<u64, Location>, ProfileError> {
    let mut out = HashMap::with_capacity(pb.len());
    for (i, l) in pb.iter().enumerate() {
        let mapping = match l.mapping_id {
            0 => None,
            id => Some(*mapping_index.get(&id).ok_or_else(|| {
                invalid(format!(
                    "location id {} references unknown mapping id {id}",
                    l.id
                ))
            })?),
        };
        let lines = l
            .line
            .iter()
            .map(|line| line_of(l.id, line, functions))
            .collect::<Result<Vec<_>, _>>()?;
        check_id(
            &mut out,
            "location",
            i,
            l.id,
            Location {
                address: l.address,
                mapping,
                lines,
            },
        )?;
    }
    Ok(out)
}

/// A line whose `function_id` is 0 is accepted as an unknown function, as
/// Go's pprof does.
fn line_of(
    location_id: u64,
    line: &proto::Line,
    functions: &HashMap<u64, Function<'_>>,
) -> Result<Line, ProfileError> {
    if line.function_id == 0 {
        return Ok(Line {
            line: line.line,
            ..Line::default()
        });
    }
    let f = functions.get(&line.function_id).ok_or_else(|| {
        invalid(format!(
            "location id {location_id} references unknown function id {}",
            line.function_id
        ))
    })?;
    Ok(Line {
        function: f.name.to_owned(),
        system_name: f.system_name.to_owned(),
        file: f.file.to_owned(),
        line: line.line,
    })
}

fn sample(
    index: usize,
    pb: &proto::Sample,
    type_count: usize,
    locations: &HashMap<u64, Location>,
    s: &Strings,
) -> Result<Sample, ProfileError> {
    if pb.value.len() != type_count {
        return Err(invalid(format!(
            "sample #{index} has {} values but the profile declares {type_count} sample types",
            pb.value.len()
        )));
    }
    let stack = pb
        .location_id
        .iter()
        .map(|id| {
            locations.get(id).cloned().ok_or_else(|| {
                invalid(format!(
                    "sample #{index} references unknown location id {id}"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let labels = pb
        .label
        .iter()
        .map(|l| {
            let key = s.owned(l.key, || format!("sample #{index} label key"))?;
            // pprof's rule: a label with a string value index of 0 is numeric.
            let value = if l.str == 0 {
                let unit = s.owned(l.num_unit, || format!("sample #{index} label {key:?} unit"))?;
                LabelValue::Num { value: l.num, unit }
            } else {
                LabelValue::Str(s.owned(l.str, || format!("sample #{index} label {key:?} value"))?)
            };
            Ok(Label { key, value })
        })
        .collect::<Result<Vec<_>, ProfileError>>()?;
    Ok(Sample {
        stack,
        values: pb.value.clone(),
        labels,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::pprof::encode_gzip;

    /// Guards the gzip-bomb cap: inflating past the limit is refused, not buffered.
    #[test]
    fn inflate_limit_is_enforced() {
        let p = Profile {
            comments: vec!["x".repeat(10_000)],
            ..Profile::default()
        };
        let gz = encode_gzip(&p).unwrap();
        let err = decode_with_limit(&gz, 1_000).unwrap_err();
        assert!(
            matches!(err, ProfileError::TooLarge { limit: 1_000 }),
            "{err}"
        );
        assert!(err.to_string().contains("larger than 1000 bytes"), "{err}");
        assert_eq!(decode_with_limit(&gz, 100_000).unwrap(), p);
    }

    /// Guards that a location id of 0 in a sample is reported, not looked up silently.
    #[test]
    fn location_id_zero_is_invalid() {
        let pb = proto::Profile {
            string_table: vec![Vec::new()],
            sample: vec![proto::Sample {
                location_id: vec![0],
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = from_proto(pb).unwrap_err().to_string();
        assert!(err.contains("unknown location id 0"), "{err}");
    }

    /// Guards that non-UTF-8 symbol bytes degrade to U+FFFD instead of failing the decode.
    #[test]
    fn non_utf8_strings_are_lossy() {
        let pb = proto::Profile {
            string_table: vec![Vec::new(), b"caf\xe9".to_vec()],
            comment: vec![1],
            ..Default::default()
        };
        assert_eq!(
            from_proto(pb).unwrap().comments,
            vec!["caf\u{fffd}".to_string()]
        );
    }
}
