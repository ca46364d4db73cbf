//! Shared fixture: a small but representative profile built by hand.

use profiles::{Label, Line, Location, Mapping, Profile, Sample, ValueType};

fn line(function: &str, file: &str, line: i64) -> Line {
    Line {
        function: function.into(),
        system_name: format!("_Z{}{function}v", function.len()),
        file: file.into(),
        line,
    }
}

/// Two mappings; `main` <- `work` with `helper` inlined into `work`; an
/// unsymbolized libc frame; an unmapped JIT frame; several samples sharing
/// locations; string and numeric labels.
pub fn fixture() -> Profile {
    let main = Location {
        address: 0x40_1000,
        mapping: Some(0),
        lines: vec![line("main", "app.c", 10)],
    };
    // Same function as `main`, different address and line: must share the Function.
    let main_b = Location {
        address: 0x40_1010,
        mapping: Some(0),
        lines: vec![line("main", "app.c", 11)],
    };
    let work = Location {
        address: 0x40_2000,
        mapping: Some(0),
        lines: vec![line("helper", "util.h", 30), line("work", "app.c", 20)],
    };
    let memcpy = Location {
        address: 0x7f00_0000_1234,
        mapping: Some(1),
        lines: vec![],
    };
    let jit = Location {
        address: 0xdead_beef,
        mapping: None,
        lines: vec![],
    };
    let sample = |stack: &[&Location], values: [i64; 2], labels: Vec<Label>| Sample {
        stack: stack.iter().map(|l| (*l).clone()).collect(),
        values: values.to_vec(),
        labels,
    };
    Profile {
        sample_types: vec![
            ValueType::new("samples", "count"),
            ValueType::new("cpu", "nanoseconds"),
        ],
        default_sample_type: "cpu".into(),
        period_type: ValueType::new("cpu", "nanoseconds"),
        period: 10_000_000,
        time_nanos: 1_700_000_000_000_000_000,
        duration_nanos: 5_000_000_000,
        mappings: vec![
            Mapping {
                start: 0x40_0000,
                limit: 0x50_0000,
                offset: 0,
                file: "/usr/bin/app".into(),
                build_id: "abcd".into(),
                has_functions: true,
            },
            Mapping {
                start: 0x7f00_0000_0000,
                limit: 0x7f00_0020_0000,
                offset: 0x1000,
                file: "/usr/lib/libc.so.6".into(),
                build_id: "ef01".into(),
                has_functions: false,
            },
        ],
        samples: vec![
            sample(
                &[&work, &main],
                [1, 10_000_000],
                vec![Label::str("thread", "worker"), Label::num("pid", 42, "")],
            ),
            sample(
                &[&work, &main],
                [2, 20_000_000],
                vec![Label::str("thread", "main")],
            ),
            sample(
                &[&memcpy, &work, &main],
                [1, 10_000_000],
                vec![Label::num("bytes", 4096, "bytes")],
            ),
            sample(&[&jit, &main], [1, 0], vec![]),
            sample(&[&main_b], [0, 5_000_000], vec![]),
        ],
        comments: vec!["qprof test".into()],
    }
}
