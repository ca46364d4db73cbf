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

/// Caps applied while decoding, so that a small hostile file cannot make the
/// decoder allocate without bound (see [`super::MAX_DECOMPRESSED_BYTES`] and
/// [`super::MAX_MODEL_BYTES`] for the numbers and why).
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Most bytes a gzip stream may inflate to.
    pub inflated: u64,
    /// Most bytes (estimated) the decoded model may hold in frames and
    /// strings copied out of shared tables.
    pub model: u64,
}

/// Inflated bytes kept while inflating in one pass. A stream that ends
/// within this is decoded from that buffer (nearly every real profile: a
/// 60 s qprof window is well under 16 MiB). A longer stream is *counted* to
/// the cap without being kept, then inflated again into an exact-size
/// buffer: a gzip bomb is refused having held at most this much (24 MiB
/// for a moment while the buffer last grows). The second inflate costs
/// CPU only for streams over 16 MiB.
const ONE_PASS_BYTES: u64 = 16 << 20;

/// [`super::decode`] with configurable caps, so tests can exercise the
/// guards without producing gigabytes.
pub(super) fn decode_with_limits(bytes: &[u8], limits: Limits) -> Result<Profile, ProfileError> {
    if bytes.is_empty() {
        return Err(ProfileError::Empty);
    }
    let inflated;
    let raw = if bytes.starts_with(&GZIP_MAGIC) {
        inflated = gunzip(bytes, limits.inflated)?;
        if inflated.is_empty() {
            return Err(ProfileError::Empty);
        }
        &inflated[..]
    } else {
        bytes
    };
    from_proto(proto::Profile::decode(raw)?, limits.model)
}

/// Inflates all gzip members (like Go's reader, which pprof uses) but never
/// more than `limit` bytes, holding at most `min(limit, ONE_PASS_BYTES)`
/// bytes for a stream that turns out to be longer than `limit`.
fn gunzip(bytes: &[u8], limit: u64) -> Result<Vec<u8>, ProfileError> {
    let mut decoder = MultiGzDecoder::new(bytes);
    let out = read_capped(&mut decoder, limit.min(ONE_PASS_BYTES))?;
    if read_one(&mut decoder)? == 0 {
        return Ok(out);
    }
    // Longer than one pass keeps: let the buffer go and count the rest.
    let kept = out.len() as u64 + 1;
    drop(out);
    let rest = std::io::copy(
        &mut decoder.take((limit + 1).saturating_sub(kept)),
        &mut std::io::sink(),
    )
    .map_err(ProfileError::Gzip)?;
    let total = kept + rest;
    if total > limit {
        return Err(ProfileError::TooLarge { limit });
    }
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    MultiGzDecoder::new(bytes)
        .take(total)
        .read_to_end(&mut out)
        .map_err(ProfileError::Gzip)?;
    Ok(out)
}

/// Reads up to `cap` bytes into a buffer that grows by doubling but never
/// past `cap` (`read_to_end` would double past it: 32 MiB of capacity, and
/// 48 MiB live while it reallocates, for 16 MiB of data).
fn read_capped(reader: &mut impl Read, cap: u64) -> Result<Vec<u8>, ProfileError> {
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while out.len() < cap {
        let want = chunk.len().min(cap - out.len());
        let n = match reader.read(&mut chunk[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ProfileError::Gzip(e)),
        };
        if out.capacity() - out.len() < n {
            let grown = (out.capacity() * 2).max(chunk.len()).min(cap);
            out.reserve_exact(grown - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(out)
}

/// Reads at most one byte: 0 at the end of the stream, 1 when there is more.
fn read_one(reader: &mut impl Read) -> Result<usize, ProfileError> {
    let mut byte = [0u8; 1];
    loop {
        match reader.read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => return other.map_err(ProfileError::Gzip),
        }
    }
}

/// Running total of model bytes against [`Limits::model`]. Each sample's
/// stack is a copy of its locations (with their function names), so a few
/// bytes of ids can stand for megabytes of frames; the cost is checked
/// before anything is copied.
struct Budget {
    used: u64,
    limit: u64,
}

impl Budget {
    fn spend(&mut self, bytes: u64) -> Result<(), ProfileError> {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.limit {
            return Err(ProfileError::ModelTooLarge { limit: self.limit });
        }
        Ok(())
    }
}

/// Estimated heap and inline bytes of one copy of `location`.
fn location_cost(location: &Location) -> u64 {
    let lines: usize = location
        .lines
        .iter()
        .map(|l| size_of::<Line>() + l.function.len() + l.system_name.len() + l.file.len())
        .sum();
    (size_of::<Location>() + lines) as u64
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

fn from_proto(pb: proto::Profile, model_limit: u64) -> Result<Profile, ProfileError> {
    let mut budget = Budget {
        used: 0,
        limit: model_limit,
    };
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
    let locations = locations(&pb.location, &mapping_index, &functions, &mut budget)?;
    let samples = pb
        .sample
        .iter()
        .enumerate()
        .map(|(i, sample)| self::sample(i, sample, sample_types.len(), &locations, s, &mut budget))
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
    budget: &mut Budget,
) -> Result<HashMap<u64, (Location, u64)>, ProfileError> {
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
        // Each line copies its function's strings: charge them first.
        budget.spend(
            l.line
                .iter()
                .filter_map(|line| functions.get(&line.function_id))
                .map(|f| {
                    (size_of::<Line>() + f.name.len() + f.system_name.len() + f.file.len()) as u64
                })
                .sum(),
        )?;
        let lines = l
            .line
            .iter()
            .map(|line| line_of(l.id, line, functions))
            .collect::<Result<Vec<_>, _>>()?;
        check_id(&mut out, "location", i, l.id, {
            let location = Location {
                address: l.address,
                mapping,
                lines,
            };
            let cost = location_cost(&location);
            (location, cost)
        })?;
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
    locations: &HashMap<u64, (Location, u64)>,
    s: &Strings,
    budget: &mut Budget,
) -> Result<Sample, ProfileError> {
    if pb.value.len() != type_count {
        return Err(invalid(format!(
            "sample #{index} has {} values but the profile declares {type_count} sample types",
            pb.value.len()
        )));
    }
    let frames = pb
        .location_id
        .iter()
        .map(|id| {
            locations.get(id).ok_or_else(|| {
                invalid(format!(
                    "sample #{index} references unknown location id {id}"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    budget.spend(frames.iter().map(|(_, cost)| cost).sum())?;
    let stack = frames.into_iter().map(|(l, _)| l.clone()).collect();
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
        let limits = |inflated| Limits {
            inflated,
            model: u64::MAX,
        };
        let err = decode_with_limits(&gz, limits(1_000)).unwrap_err();
        assert!(
            matches!(err, ProfileError::TooLarge { limit: 1_000 }),
            "{err}"
        );
        assert!(
            err.to_string().contains("larger than 1000 bytes, the cap"),
            "{err}"
        );
        assert_eq!(decode_with_limits(&gz, limits(100_000)).unwrap(), p);
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
        let err = from_proto(pb, u64::MAX).unwrap_err().to_string();
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
            from_proto(pb, u64::MAX).unwrap().comments,
            vec!["caf\u{fffd}".to_string()]
        );
    }
}
