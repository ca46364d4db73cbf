//! Interop with the reference producer: profiles written by Go's runtime/pprof decode and re-encode.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use profiles::{LabelValue, Profile, ValueType, decode, encode, encode_gzip, folded_lines};

fn load(name: &str) -> Profile {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    decode(&std::fs::read(path).unwrap()).unwrap()
}

/// Guards decoding a real gzipped Go CPU profile: types, totals, labels, stacks.
#[test]
fn go_cpu_profile_decodes() {
    let p = load("go-cpu.pb.gz");
    assert_eq!(
        p.sample_types,
        vec![
            ValueType::new("samples", "count"),
            ValueType::new("cpu", "nanoseconds")
        ]
    );
    assert_eq!(p.period_type, ValueType::new("cpu", "nanoseconds"));
    let cpu = p.sample_type_index("cpu").unwrap();
    assert_eq!(p.total(cpu), 300_000_000);
    assert!(p.samples.iter().any(|s| {
        s.labels
            .iter()
            .any(|l| l.key == "worker" && l.value == LabelValue::Str("a".into()))
    }));
    let lines = folded_lines(&p, cpu);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("runtime.main;main.main;") && l.contains(";main.spin"))
    );
}

/// Guards that Go profiles survive our encoder unchanged (raw and gzip).
#[test]
fn go_profiles_round_trip() {
    for name in ["go-cpu.pb.gz", "go-heap.pb.gz"] {
        let p = load(name);
        assert_eq!(decode(&encode(&p).unwrap()).unwrap(), p, "{name}");
        assert_eq!(decode(&encode_gzip(&p).unwrap()).unwrap(), p, "{name}");
    }
}

/// Guards a four-value heap profile with numeric labels.
#[test]
fn go_heap_profile_decodes() {
    let p = load("go-heap.pb.gz");
    let types: Vec<&str> = p.sample_types.iter().map(|t| t.r#type.as_str()).collect();
    assert_eq!(
        types,
        [
            "alloc_objects",
            "alloc_space",
            "inuse_objects",
            "inuse_space"
        ]
    );
    assert!(p.samples.iter().all(|s| s.values.len() == 4));
    assert!(
        p.samples
            .iter()
            .flat_map(|s| &s.labels)
            .any(|l| l.key == "bytes" && matches!(l.value, LabelValue::Num { .. }))
    );
}
