//! Narrowing a profile to some of its samples.

use crate::{LabelValue, Profile, Sample};

/// The label qprof puts on samples taken inside a traced query: the
/// query's fingerprint id.
pub const QUERY_LABEL: &str = "query";

/// Why a filter left nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error(
        "none is labelled query={wanted}; the profile has no query labels (record it with `record cpu --by-query`)"
    )]
    NoQueryLabels { wanted: String },
    #[error("none is labelled query={wanted}; its queries are: {}", known.join(", "))]
    UnknownQuery { wanted: String, known: Vec<String> },
}

fn query_of(sample: &Sample) -> Option<&str> {
    sample
        .labels
        .iter()
        .find(|l| l.key == QUERY_LABEL)
        .and_then(|l| match &l.value {
            LabelValue::Str(v) => Some(v.as_str()),
            LabelValue::Num { .. } => None,
        })
}

/// Keeps only the samples labelled `query=<id>`. When none is, the profile
/// is left as it was and the error lists the query ids it does have.
pub fn keep_query(profile: &mut Profile, id: &str) -> Result<(), FilterError> {
    if profile.samples.iter().any(|s| query_of(s) == Some(id)) {
        profile.samples.retain(|s| query_of(s) == Some(id));
        return Ok(());
    }
    let mut known: Vec<String> = profile
        .samples
        .iter()
        .filter_map(query_of)
        .map(str::to_owned)
        .collect();
    known.sort();
    known.dedup();
    Err(if known.is_empty() {
        FilterError::NoQueryLabels {
            wanted: id.to_owned(),
        }
    } else {
        FilterError::UnknownQuery {
            wanted: id.to_owned(),
            known,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Label;

    fn sample(query: Option<&str>, value: i64) -> Sample {
        Sample {
            stack: Vec::new(),
            values: vec![value],
            labels: query
                .map(|q| Label {
                    key: QUERY_LABEL.into(),
                    value: LabelValue::Str(q.into()),
                })
                .into_iter()
                .collect(),
        }
    }

    fn profile(samples: Vec<Sample>) -> Profile {
        Profile {
            samples,
            ..Profile::default()
        }
    }

    /// Only the wanted query's samples remain, with their values.
    #[test]
    fn keeps_only_the_query() {
        let mut p = profile(vec![
            sample(Some("aa"), 1),
            sample(Some("bb"), 2),
            sample(None, 4),
            sample(Some("aa"), 8),
        ]);
        keep_query(&mut p, "aa").expect("aa is there");
        assert_eq!(p.total(0), 9);
        assert_eq!(p.samples.len(), 2);
    }

    /// An unknown id names the ids the profile has (sorted, once each) and
    /// leaves the profile untouched; a profile without labels says so.
    #[test]
    fn unknown_query_lists_the_known_ones() {
        let mut p = profile(vec![
            sample(Some("bb"), 1),
            sample(Some("aa"), 1),
            sample(Some("bb"), 1),
        ]);
        let err = keep_query(&mut p, "cc").expect_err("no cc");
        assert_eq!(
            err.to_string(),
            "none is labelled query=cc; its queries are: aa, bb"
        );
        assert_eq!(p.samples.len(), 3);
        let mut bare = profile(vec![sample(None, 1)]);
        assert!(matches!(
            keep_query(&mut bare, "aa"),
            Err(FilterError::NoQueryLabels { .. })
        ));
    }
}
