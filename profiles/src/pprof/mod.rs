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

/// Upper bound on the inflated size of a gzipped profile (1 GiB). A gzip
/// stream compresses zeros ~1000:1, so without a cap a small hostile file
/// could make the decoder allocate until the machine swaps.
pub const MAX_DECOMPRESSED_BYTES: u64 = 1 << 30;

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
/// inflated data beyond [`MAX_DECOMPRESSED_BYTES`] is refused.
pub fn decode(bytes: &[u8]) -> Result<Profile, ProfileError> {
    decoder::decode_with_limit(bytes, MAX_DECOMPRESSED_BYTES)
}
