use super::*;

fn slice(stacks: &[(&[&str], u32, i64)]) -> Profile {
    Profile {
        samples: stacks
            .iter()
            .map(|(frames, pid, n)| Sample {
                stack: frames
                    .iter()
                    .rev()
                    .map(|f| Location {
                        lines: vec![Line {
                            function: (*f).into(),
                            ..Line::default()
                        }],
                        ..Location::default()
                    })
                    .collect(),
                values: vec![*n, *n * 1000],
                labels: vec![Label::num("pid", i64::from(*pid), "")],
            })
            .collect(),
        ..Profile::default()
    }
}

/// Slices older than the span are dropped; the profile keeps only the asked pids and slices before the breach.
#[test]
fn keeps_the_span_and_filters() {
    let mut r = FlightRecorder::new(3_000, 1_000);
    for s in 0..6u64 {
        let frames: &[&str] = if s < 4 {
            &["main", "quiet"]
        } else {
            &["main", "burn"]
        };
        r.push(
            s * 1000,
            s * 1000 + 1000,
            &slice(&[(frames, 7, 2), (&["other"], 8, 1)]),
        );
    }
    // Slices ending at 4000, 5000, 6000 remain.
    assert_eq!(r.samples(), 9);
    let p = r.profile(&[7], 5_000);
    let lines = profiles::folded_lines(&p, 0);
    assert_eq!(lines, ["main;burn 2", "main;quiet 2"]);
    assert_eq!(p.total(1), 4 * 1000);
}

/// Interners are rebuilt when full, so a long run of ever-new stacks stays bounded and the kept slices stay right.
#[test]
fn stays_bounded_with_new_stacks_every_slice() {
    let mut r = FlightRecorder::new(2_000, 1);
    let names: Vec<String> = (0..200_000).map(|i| format!("f{i}")).collect();
    for s in 0..40u64 {
        let batch: Vec<Vec<&str>> = (0..5_000)
            .map(|i| {
                vec![
                    "main",
                    names[(s as usize * 5_000 + i) % names.len()].as_str(),
                ]
            })
            .collect();
        let stacks: Vec<(&[&str], u32, i64)> = batch.iter().map(|b| (&b[..], 1, 1)).collect();
        r.push(s * 1000, s * 1000 + 1000, &slice(&stacks));
        assert!(r.stacks.len() <= MAX_STACKS && r.frames.len() <= MAX_FRAMES);
    }
    assert_eq!(r.samples(), 10_000);
    assert_eq!(r.dropped, 0);
    assert!(r.bytes() < 8 << 20, "{} bytes", r.bytes());
}
