//! Merging profiles of consecutive windows into one (the agent's
//! `/api/continuous` range): samples are concatenated, mappings renumbered,
//! the time frame spans all inputs. Pure, so it is tested without a kernel.

use crate::{Profile, ProfileError};

/// Merges profiles that share their sample types (e.g. the continuous CPU
/// windows of one agent). Fails, naming both, if the sample types differ.
pub fn merge(profiles: Vec<Profile>) -> Result<Profile, ProfileError> {
    let mut iter = profiles.into_iter();
    let Some(mut out) = iter.next() else {
        return Ok(Profile::default());
    };
    let mut end = out.time_nanos.saturating_add(out.duration_nanos);
    for p in iter {
        if p.sample_types != out.sample_types {
            return Err(ProfileError::Invalid(format!(
                "cannot merge profiles with different sample types ({:?} and {:?})",
                names(&out),
                names(&p)
            )));
        }
        let base = out.mappings.len();
        out.mappings.extend(p.mappings);
        out.samples.extend(p.samples.into_iter().map(|mut s| {
            for loc in &mut s.stack {
                loc.mapping = loc.mapping.map(|m| m + base);
            }
            s
        }));
        end = end.max(p.time_nanos.saturating_add(p.duration_nanos));
        if p.time_nanos != 0 && (out.time_nanos == 0 || p.time_nanos < out.time_nanos) {
            out.time_nanos = p.time_nanos;
        }
    }
    out.duration_nanos = end.saturating_sub(out.time_nanos);
    Ok(out)
}

fn names(p: &Profile) -> Vec<&str> {
    p.sample_types.iter().map(|t| t.r#type.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Location, Mapping, Sample, ValueType};

    fn window(start: i64, file: &str, value: i64) -> Profile {
        Profile {
            sample_types: vec![ValueType::new("samples", "count")],
            time_nanos: start,
            duration_nanos: 10,
            mappings: vec![Mapping {
                file: file.into(),
                ..Mapping::default()
            }],
            samples: vec![Sample {
                stack: vec![Location {
                    address: 1,
                    mapping: Some(0),
                    lines: vec![],
                }],
                values: vec![value],
                labels: vec![],
            }],
            ..Profile::default()
        }
    }

    /// Totals add up, each sample keeps its own mapping, and the time frame spans both.
    #[test]
    fn merges_samples_mappings_and_time() {
        let m = merge(vec![window(100, "/a", 3), window(110, "/b", 4)]).unwrap();
        assert_eq!(m.total(0), 7);
        assert_eq!(m.time_nanos, 100);
        assert_eq!(m.duration_nanos, 20);
        let files: Vec<&str> = m
            .samples
            .iter()
            .map(|s| m.mappings[s.stack[0].mapping.unwrap()].file.as_str())
            .collect();
        assert_eq!(files, ["/a", "/b"]);
    }

    /// Profiles of different kinds are refused, not mixed.
    #[test]
    fn different_sample_types_are_refused() {
        let mut other = window(0, "/a", 1);
        other.sample_types = vec![ValueType::new("alloc_space", "bytes")];
        let err = merge(vec![window(0, "/a", 1), other])
            .unwrap_err()
            .to_string();
        assert!(err.contains("alloc_space"), "{err}");
    }
}
