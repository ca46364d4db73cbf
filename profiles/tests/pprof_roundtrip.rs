//! pprof encoding: round trips, interning/dedup invariants and gzip framing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;

use profiles::pprof::{self, proto};
use prost::Message;

/// Guards that encode → decode gives back exactly the model (mappings, inlined lines, labels).
#[test]
fn round_trip_is_lossless() {
    let p = common::fixture();
    let back = pprof::decode(&pprof::encode(&p).unwrap()).unwrap();
    assert_eq!(back.mappings, p.mappings);
    assert_eq!(back.samples, p.samples);
    assert_eq!(back, p);
}

/// Guards that an empty profile (no samples, no types) also round trips.
#[test]
fn empty_profile_round_trips() {
    let p = profiles::Profile::default();
    assert_eq!(pprof::decode(&pprof::encode(&p).unwrap()).unwrap(), p);
}

/// Guards the string table shape: "" at 0, every string exactly once, all referenced.
#[test]
fn string_table_is_interned() {
    let raw = proto::Profile::decode(&pprof::encode(&common::fixture()).unwrap()[..]).unwrap();
    let table: Vec<String> = raw
        .string_table
        .iter()
        .map(|b| String::from_utf8(b.clone()).unwrap())
        .collect();
    assert_eq!(table[0], "");
    let distinct: HashSet<&String> = table.iter().collect();
    assert_eq!(
        distinct.len(),
        table.len(),
        "duplicate strings in {table:?}"
    );
    for s in [
        "samples",
        "cpu",
        "nanoseconds",
        "main",
        "_Z4mainv",
        "app.c",
        "/usr/bin/app",
        "worker",
    ] {
        assert!(table.iter().any(|t| t == s), "{s} missing from {table:?}");
    }
}

/// Guards dedup and id density: shared frames become one Location, functions are shared by name.
#[test]
fn locations_and_functions_are_deduplicated_with_dense_ids() {
    let raw = proto::Profile::decode(&pprof::encode(&common::fixture()).unwrap()[..]).unwrap();
    // main, main_b, work(+helper), memcpy, jit: 5 locations across 5 samples / 10 frames.
    assert_eq!(raw.location.len(), 5);
    // main (shared by main and main_b), work, helper; frames without lines add none.
    assert_eq!(raw.function.len(), 3);
    let dense = |ids: Vec<u64>| ids == (1..=ids.len() as u64).collect::<Vec<_>>();
    assert!(dense(raw.location.iter().map(|l| l.id).collect()));
    assert!(dense(raw.function.iter().map(|f| f.id).collect()));
    assert_eq!(
        raw.mapping.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    // The first two samples share the same two frames, hence the same ids.
    assert_eq!(raw.sample[0].location_id, raw.sample[1].location_id);
    // Inlined frames are stored innermost first on a single location.
    let work = raw.location.iter().find(|l| l.line.len() == 2).unwrap();
    let name = |fid: u64| {
        let f = raw.function.iter().find(|f| f.id == fid).unwrap();
        String::from_utf8(raw.string_table[f.name as usize].clone()).unwrap()
    };
    assert_eq!(name(work.line[0].function_id), "helper");
    assert_eq!(name(work.line[1].function_id), "work");
}

/// Guards the derived mapping flags pprof uses to decide whether to re-symbolize.
#[test]
fn mapping_flags_reflect_contents() {
    let raw = proto::Profile::decode(&pprof::encode(&common::fixture()).unwrap()[..]).unwrap();
    let (app, libc) = (&raw.mapping[0], &raw.mapping[1]);
    assert!(
        app.has_functions && app.has_filenames && app.has_line_numbers && app.has_inline_frames
    );
    assert!(!libc.has_functions && !libc.has_filenames && !libc.has_line_numbers);
}

/// Guards that encoding is deterministic, so identical profiles give identical files.
#[test]
fn encoding_is_deterministic() {
    let p = common::fixture();
    assert_eq!(pprof::encode(&p).unwrap(), pprof::encode(&p).unwrap());
}

/// Guards gzip framing: output has the gzip magic and decodes; raw protobuf decodes too.
#[test]
fn gzip_and_raw_both_decode() {
    let p = common::fixture();
    let gz = pprof::encode_gzip(&p).unwrap();
    assert_eq!(&gz[..2], &[0x1f, 0x8b]);
    assert_eq!(pprof::decode(&gz).unwrap(), p);
    assert_eq!(pprof::decode(&pprof::encode(&p).unwrap()).unwrap(), p);
}

/// Guards that concatenated gzip members are read in full, as Go's reader does.
#[test]
fn multi_member_gzip_decodes() {
    use std::io::Write;
    let raw = pprof::encode(&common::fixture()).unwrap();
    let (a, b) = raw.split_at(raw.len() / 2);
    let mut out = Vec::new();
    for part in [a, b] {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(part).unwrap();
        out.extend(gz.finish().unwrap());
    }
    assert_eq!(pprof::decode(&out).unwrap(), common::fixture());
}
