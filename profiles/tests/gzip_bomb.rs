//! Decompression and expansion bombs: refused with an error naming the cap,
//! having allocated a bounded amount on the way.
//!
//! The allocator of this test binary counts live bytes and their peak, so
//! the bound is measured, not assumed. The tests share that counter, so
//! they take a lock and run one at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use profiles::ProfileError;
use profiles::pprof::{self, MAX_DECOMPRESSED_BYTES, proto};
use prost::Message;

/// The system allocator, plus live and peak byte counts.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static SERIAL: Mutex<()> = Mutex::new(());

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// GlobalAlloc contract; the counters are plain atomics and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same layout, forwarded to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result with the most bytes that were live at
/// once during it, above what was live before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = f();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    eprintln!("peak allocation: {:.1} MiB", peak as f64 / MIB as f64);
    (out, peak)
}

const MIB: usize = 1 << 20;

/// `total` zero bytes as gzip: one member of 1 MiB of zeros, repeated
/// (gzip readers, Go's and ours, inflate concatenated members as one
/// stream). 1 GiB of zeros this way is ~1 MB on disk.
fn zeros_gzip(total: usize) -> Vec<u8> {
    let mut member = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    member.write_all(&vec![0u8; MIB]).unwrap();
    let member = member.finish().unwrap();
    member.repeat(total / MIB)
}

/// Guards the gzip-bomb cap: 1 GiB of zeros in ~1 MB of gzip is refused
/// with an error naming the 256 MiB cap, and decoding it never holds more
/// than the 16 MiB one-pass buffer (24 MiB while it last grows, plus
/// slack), not the gigabyte.
#[test]
fn gzip_bomb_is_refused_in_bounded_memory() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let bomb = zeros_gzip(1024 * MIB);
    assert!(bomb.len() < 4 * MIB, "bomb is {} bytes", bomb.len());
    let (result, peak) = peak_during(|| pprof::decode(&bomb));
    let err = result.unwrap_err();
    assert!(
        matches!(err, ProfileError::TooLarge { limit } if limit == MAX_DECOMPRESSED_BYTES),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("larger than 256 MiB (268435456 bytes), the cap on inflated pprof data"),
        "{msg}"
    );
    assert!(
        peak < 26 * MIB,
        "decoding the bomb peaked at {} MiB",
        peak / MIB
    );
}

/// Guards the two-pass path: a stream longer than the one-pass buffer but
/// under the cap still decodes (here, a real profile padded with a 40 MiB
/// comment), and is held once, at its exact size.
#[test]
fn long_stream_under_the_cap_still_decodes() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let profile = profiles::Profile {
        comments: vec!["z".repeat(40 * MIB)],
        ..profiles::Profile::default()
    };
    let gz = pprof::encode_gzip(&profile).unwrap();
    let (decoded, peak) = peak_during(|| pprof::decode(&gz).unwrap());
    assert_eq!(decoded, profile);
    // Inflated bytes once (40 MiB) + the decoded comment (40 MiB) + the
    // returned copy's string (40 MiB), plus slack: not a doubling buffer.
    assert!(peak < 130 * MIB, "peaked at {} MiB", peak / MIB);
    // A cap below the stream's size refuses it, naming that cap.
    let err = pprof::decode_with_limits(&gz, 32 * MIB as u64, u64::MAX).unwrap_err();
    assert!(err.to_string().contains("larger than 32 MiB"), "{err}");
}

/// Guards the model cap: a tiny profile whose 1,000 samples each name one
/// location of 1,000 lines of a 16 KiB function (16 GB if every stack were
/// copied) is refused, under a 64 MiB model cap, before the copies exceed it.
#[test]
fn stack_expansion_bomb_is_refused_in_bounded_memory() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let name = "f".repeat(16 * 1024);
    let pb = proto::Profile {
        string_table: vec![Vec::new(), b"cpu".to_vec(), name.into_bytes()],
        sample_type: vec![proto::ValueType { r#type: 1, unit: 1 }],
        function: vec![proto::Function {
            id: 1,
            name: 2,
            ..Default::default()
        }],
        location: vec![proto::Location {
            id: 1,
            line: vec![
                proto::Line {
                    function_id: 1,
                    ..Default::default()
                };
                1000
            ],
            ..Default::default()
        }],
        sample: vec![
            proto::Sample {
                location_id: vec![1],
                value: vec![1],
                label: vec![],
            };
            1000
        ],
        ..Default::default()
    };
    let raw = pb.encode_to_vec();
    assert!(raw.len() < 200 * 1024, "{} bytes", raw.len());
    let cap = 64 * MIB as u64;
    let (result, peak) =
        peak_during(|| pprof::decode_with_limits(&raw, MAX_DECOMPRESSED_BYTES, cap));
    let err = result.unwrap_err();
    assert!(
        matches!(err, ProfileError::ModelTooLarge { limit } if limit == cap),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("more than 64 MiB (67108864 bytes) of stack frames"),
        "{err}"
    );
    assert!(peak < 70 * MIB, "peaked at {} MiB", peak / MIB);
    // The default cap is 1 GiB, and says so.
    assert_eq!(pprof::MAX_MODEL_BYTES, 1 << 30);
}
