//! SVG flame graph rendering: content, interactivity and clear errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use profiles::{Profile, ProfileError, Sample, ValueType, render_svg};

fn render(p: &Profile, index: usize) -> Result<String, ProfileError> {
    let mut out = Vec::new();
    render_svg(p, index, "qprof test graph", &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

/// Guards that the SVG has every frame, the title, the unit and inferno's search/zoom script.
#[test]
fn svg_contains_frames_and_script() {
    let p = common::fixture();
    let svg = render(&p, p.sample_type_index("cpu").unwrap()).unwrap();
    assert!(
        svg.starts_with("<?xml") || svg.contains("<svg"),
        "{}",
        &svg[..svg.len().min(200)]
    );
    for name in [
        "main",
        "work",
        "helper",
        "libc.so.6+0x2234",
        "qprof test graph",
        "nanoseconds",
    ] {
        assert!(svg.contains(name), "{name} missing from SVG");
    }
    // Zero cpu: the JIT frame must not be drawn in the cpu graph.
    assert!(!svg.contains("0xdeadbeef"));
    // inferno's embedded JavaScript gives click-to-zoom and Ctrl-F search.
    assert!(svg.contains("function search("));
    assert!(svg.contains("function zoom("));
}

/// Guards that rendering the same profile twice gives the same SVG (hash-based colours).
#[test]
fn svg_is_deterministic() {
    let p = common::fixture();
    assert_eq!(render(&p, 0).unwrap(), render(&p, 0).unwrap());
}

/// Guards the clear error for a profile with nothing to draw, instead of inferno's.
#[test]
fn empty_profile_is_an_error() {
    let mut p = Profile {
        sample_types: vec![ValueType::new("cpu", "nanoseconds")],
        ..Profile::default()
    };
    let err = render(&p, 0).unwrap_err();
    assert!(matches!(err, ProfileError::Render(_)));
    assert_eq!(
        err.to_string(),
        "cannot render flame graph: profile has no samples for cpu"
    );
    // Only zero or negative values: still nothing to draw.
    p.samples = vec![Sample {
        values: vec![-5],
        ..Sample::default()
    }];
    assert!(
        render(&p, 0)
            .unwrap_err()
            .to_string()
            .contains("no samples for cpu")
    );
}

/// Guards the error for a sample type index past the end.
#[test]
fn bad_index_is_an_error() {
    let err = render(&common::fixture(), 2).unwrap_err().to_string();
    assert!(
        err.contains("sample type index 2 out of range (the profile has 2 sample types)"),
        "{err}"
    );
}
