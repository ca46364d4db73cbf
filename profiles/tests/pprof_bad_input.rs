//! pprof decoding and encoding of bad input: always a descriptive error, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;

use profiles::pprof::{self, proto};
use profiles::{Location, Profile, ProfileError, Sample, ValueType};
use prost::Message;

fn decode_err(bytes: &[u8]) -> String {
    match pprof::decode(bytes) {
        Ok(p) => panic!("decoded garbage into {p:?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_contains(msg: &str, needle: &str) {
    assert!(msg.contains(needle), "expected {needle:?} in {msg:?}");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// A minimal well-formed raw profile to break one field at a time.
fn base() -> proto::Profile {
    proto::Profile {
        string_table: ["", "cpu", "nanoseconds", "main"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect(),
        sample_type: vec![proto::ValueType { r#type: 1, unit: 2 }],
        function: vec![proto::Function {
            id: 1,
            name: 3,
            ..Default::default()
        }],
        location: vec![proto::Location {
            id: 1,
            line: vec![proto::Line {
                function_id: 1,
                ..Default::default()
            }],
            ..Default::default()
        }],
        sample: vec![proto::Sample {
            location_id: vec![1],
            value: vec![5],
            label: vec![],
        }],
        ..Default::default()
    }
}

fn broken(f: impl FnOnce(&mut proto::Profile)) -> String {
    let mut pb = base();
    f(&mut pb);
    decode_err(&pb.encode_to_vec())
}

/// Guards that the unbroken base profile decodes, so each case below fails for its own reason.
#[test]
fn base_is_valid() {
    let p = pprof::decode(&base().encode_to_vec()).unwrap();
    assert_eq!(p.samples[0].stack[0].lines[0].function, "main");
}

/// Guards the empty-input message (a truncated write is the usual cause).
#[test]
fn empty_input() {
    assert!(matches!(pprof::decode(&[]), Err(ProfileError::Empty)));
    assert_eq!(decode_err(&[]), "empty file");
    assert_eq!(decode_err(&gzip(&[])), "empty file");
}

/// Guards that arbitrary bytes never panic and never decode.
#[test]
fn random_bytes() {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in 1..300 {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 56) as u8
            })
            .collect();
        let _ = pprof::decode(&bytes);
        let _ = pprof::decode(&gzip(&bytes));
    }
    assert_contains(
        &decode_err(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
        "not a pprof profile",
    );
}

/// Guards truncated gzip (interrupted download/copy) → gzip error.
#[test]
fn truncated_gzip() {
    let gz = pprof::encode_gzip(&common::fixture()).unwrap();
    for cut in [3, 10, gz.len() / 2, gz.len() - 1] {
        assert_contains(&decode_err(&gz[..cut]), "not a valid gzip stream");
    }
}

/// Guards that a valid gzip wrapping non-protobuf data is reported as "not a pprof profile".
#[test]
fn gzip_of_garbage() {
    assert_contains(
        &decode_err(&gzip(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")),
        "not a pprof profile",
    );
    // Text that happens to parse as protobuf must still fail validation.
    let msg = decode_err(&gzip(b"hello, I am a text file and not a profile\n"));
    assert!(
        msg.contains("not a pprof profile") || msg.contains("invalid pprof profile"),
        "{msg}"
    );
}

/// Guards a sample pointing at a location id that does not exist.
#[test]
fn missing_location_id() {
    let msg = broken(|p| p.sample[0].location_id = vec![1, 7]);
    assert_contains(&msg, "sample #0 references unknown location id 7");
}

/// Guards string indices past the end of the table (and negative ones).
#[test]
fn string_index_out_of_range() {
    let msg = broken(|p| p.function[0].name = 99);
    assert_contains(
        &msg,
        "string index 99 out of range (string table has 4 entries), used by function id 1 name",
    );
    assert_contains(
        &broken(|p| p.comment = vec![-1]),
        "string index -1 out of range",
    );
    assert_contains(&broken(|p| p.sample_type[0].unit = 4), "sample_type 0 unit");
}

/// Guards each dangling or malformed id reference.
#[test]
fn bad_ids() {
    assert_contains(
        &broken(|p| p.location[0].line[0].function_id = 9),
        "location id 1 references unknown function id 9",
    );
    assert_contains(
        &broken(|p| p.location[0].mapping_id = 3),
        "location id 1 references unknown mapping id 3",
    );
    assert_contains(&broken(|p| p.function[0].id = 0), "function #0 has id 0");
    assert_contains(
        &broken(|p| {
            p.mapping = vec![proto::Mapping {
                id: 0,
                ..Default::default()
            }];
        }),
        "mapping #0 has id 0",
    );
    assert_contains(
        &broken(|p| {
            let dup = p.location[0].clone();
            p.location.push(dup);
        }),
        "duplicate location id 1",
    );
}

/// Guards value-count and table-shape checks.
#[test]
fn inconsistent_tables() {
    assert_contains(
        &broken(|p| p.sample[0].value = vec![1, 2]),
        "sample #0 has 2 values but the profile declares 1 sample types",
    );
    assert_contains(
        &broken(|p| p.string_table[0] = b"x".to_vec()),
        "string table entry 0 must be \"\"",
    );
    assert_contains(&broken(|p| p.string_table.clear()), "string table is empty");
    assert_contains(
        &broken(|p| p.default_sample_type = 3),
        "default_sample_type \"main\" is not one of the sample types",
    );
}

/// Guards encode-side validation of an inconsistent model.
#[test]
fn encode_rejects_inconsistent_model() {
    let mut p = Profile {
        sample_types: vec![ValueType::new("cpu", "nanoseconds")],
        samples: vec![Sample {
            values: vec![1, 2],
            ..Sample::default()
        }],
        ..Profile::default()
    };
    let err = pprof::encode(&p).unwrap_err().to_string();
    assert_contains(
        &err,
        "sample 0 has 2 values but the profile has 1 sample types",
    );

    p.samples[0].values = vec![1];
    p.default_sample_type = "wall".into();
    assert_contains(
        &pprof::encode(&p).unwrap_err().to_string(),
        "default_sample_type \"wall\"",
    );

    p.default_sample_type = "cpu".into();
    p.samples[0].stack = vec![Location {
        address: 1,
        mapping: Some(0),
        lines: vec![],
    }];
    assert_contains(
        &pprof::encode_gzip(&p).unwrap_err().to_string(),
        "sample 0 frame 0 refers to mapping index 0, but the profile has only 0 mappings",
    );
}
