//! Folded-stack output: exact lines, merging, ordering and frame-name fallbacks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use profiles::{Line, Location, Profile, Sample, ValueType, folded_lines, write_folded};

/// Guards the exact folded lines for the fixture's cpu values: root first,
/// inlined `helper` after its caller `work`, the two identical stacks merged
/// (10ms + 20ms), the zero-cpu JIT sample dropped, the unsymbolized libc
/// frame named `libc.so.6+0x2234` (0x7f0000001234 - 0x7f0000000000 + 0x1000).
#[test]
fn cpu_lines_are_exact() {
    let p = common::fixture();
    let cpu = p.sample_type_index("cpu").unwrap();
    assert_eq!(
        folded_lines(&p, cpu),
        vec![
            "main 5000000",
            "main;work;helper 30000000",
            "main;work;helper;libc.so.6+0x2234 10000000",
        ]
    );
}

/// Guards the count view: the unmapped JIT frame falls back to its raw address.
#[test]
fn count_lines_use_address_fallback() {
    let p = common::fixture();
    let count = p.sample_type_index("samples").unwrap();
    assert_eq!(
        folded_lines(&p, count),
        vec![
            "main;0xdeadbeef 1",
            "main;work;helper 3",
            "main;work;helper;libc.so.6+0x2234 1"
        ]
    );
}

/// Guards that `write_folded` emits exactly `folded_lines`, newline-terminated.
#[test]
fn write_folded_matches_lines() {
    let p = common::fixture();
    let mut out = Vec::new();
    write_folded(&p, 1, &mut out).unwrap();
    let expected = folded_lines(&p, 1).join("\n") + "\n";
    assert_eq!(String::from_utf8(out).unwrap(), expected);
}

/// Guards name sanitizing, the system-name fallback and that stacks cancelling to 0 vanish.
#[test]
fn names_are_sanitized_and_zero_totals_dropped() {
    let frame = |function: &str, system_name: &str| Location {
        address: 0x10,
        mapping: None,
        lines: vec![Line {
            function: function.into(),
            system_name: system_name.into(),
            ..Line::default()
        }],
    };
    let weird = frame("Vec<a;b>::push\nnow", "");
    let mangled = frame("", "_ZN3foo3barE");
    let unnamed = frame("", "");
    let sample = |stack: Vec<Location>, v: i64| Sample {
        stack,
        values: vec![v],
        labels: vec![],
    };
    let p = Profile {
        sample_types: vec![ValueType::new("delta", "count")],
        samples: vec![
            sample(vec![weird.clone(), mangled.clone()], 4),
            sample(vec![unnamed.clone()], 2),
            sample(vec![unnamed], -2),
            sample(vec![mangled], -3),
        ],
        ..Profile::default()
    };
    assert_eq!(
        folded_lines(&p, 0),
        vec!["_ZN3foo3barE -3", "_ZN3foo3barE;Vec<a:b>::push now 4"]
    );
}
