//! google/pprof protobuf encoding and decoding.
//!
//! pprof is the interchange format: `go tool pprof`, Grafana Pyroscope,
//! Speedscope and most profiling UIs read it. Files are usually gzipped;
//! [`decode`] accepts both forms so users never need to care.

mod decoder;
mod encoder;
pub mod proto;

use std::io::Write;

use flate2::{Compression, write::GzEncoder};

use crate::{Profile, ProfileError};

/// Upper bound on the inflated size of a gzipped profile: 256 MiB.
///
/// gzip shrinks zeros ~1000:1, so without a cap a 4 MB file could make the
/// decoder allocate a gigabyte (and a 40 MB one, ten). 256 MiB is an order
/// of magnitude above the largest real profiles we know of (qprof's own 60 s
/// windows and Go heap profiles of large services are single-digit to tens
/// of MB inflated) and small enough that even the worst case of decoding it
/// (protobuf varints widening to 8-byte integers) stays within a few GiB
/// on a host that runs the agent. A ratio cap was rejected: honest pprof
/// compresses anywhere from 3:1 to 50:1, so no ratio separates it from a
/// bomb, while an absolute cap bounds memory, which is what matters. A
/// stream past the cap is refused having held at most 16 MiB of it.
pub const MAX_DECOMPRESSED_BYTES: u64 = 256 << 20;

/// Upper bound on the (estimated) bytes of frames and strings a decoded
/// [`Profile`] may hold: 1 GiB.
///
/// pprof shares locations and function names between samples by id; the
/// model gives every sample its own copy of its stack, so a few bytes of ids
/// can stand for megabytes of frames (1,000 samples each naming the same
/// 1,000-line location of a 64 KiB function name would be 64 GB). Costs are
/// checked before copying. 1 GiB is ~4x the inflated cap: room for real
/// profiles whose stacks repeat across samples.
pub const MAX_MODEL_BYTES: u64 = 1 << 30;

/// Encodes `profile` as raw (uncompressed) pprof protobuf.
///
/// Strings are interned (index 0 is `""`), functions are shared by
/// (name, system name, file) and identical locations are shared by all the
/// samples that use them; ids are dense and 1-based, mapping id = index + 1.
/// Output is deterministic for a given profile.
///
/// Fails with [`ProfileError::Model`] when a sample's value count differs
/// from the number of sample types, a location points past
/// [`Profile::mappings`], or `default_sample_type` names no sample type.
pub fn encode(profile: &Profile) -> Result<Vec<u8>, ProfileError> {
    encoder::encode(profile)
}

/// [`encode`] followed by gzip, the form pprof tools write and expect.
pub fn encode_gzip(profile: &Profile) -> Result<Vec<u8>, ProfileError> {
    let raw = encode(profile)?;
    let mut gz = GzEncoder::new(
        Vec::with_capacity(raw.len() / 4 + 64),
        Compression::default(),
    );
    gz.write_all(&raw).map_err(ProfileError::Gzip)?;
    gz.finish().map_err(ProfileError::Gzip)
}

/// Decodes a pprof profile, gzipped (magic `1f 8b`) or raw.
///
/// Every cross reference is checked (string indices, function / location /
/// mapping ids, value counts), so a `Profile` returned here is internally
/// consistent and re-encodes without error. Never panics on bad input;
/// inflated data beyond [`MAX_DECOMPRESSED_BYTES`] and models beyond
/// [`MAX_MODEL_BYTES`] are refused.
pub fn decode(bytes: &[u8]) -> Result<Profile, ProfileError> {
    decode_with_limits(bytes, MAX_DECOMPRESSED_BYTES, MAX_MODEL_BYTES)
}

/// [`decode`] with caller-chosen caps in bytes (on the inflated stream and
/// on the decoded model); for callers with tighter memory budgets, and for
/// tests of the guards.
pub fn decode_with_limits(
    bytes: &[u8],
    max_inflated: u64,
    max_model: u64,
) -> Result<Profile, ProfileError> {
    decoder::decode_with_limits(
        bytes,
        decoder::Limits {
            inflated: max_inflated,
            model: max_model,
        },
    )
}
