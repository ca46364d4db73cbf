//! The crate's single error type.
//!
//! Profiles come from files users hand us, so every way they can be wrong
//! gets a message that says what is wrong rather than a generic failure.

/// Everything that can go wrong reading, writing or rendering a profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The input had no bytes at all (often a failed or interrupted write).
    #[error("empty file")]
    Empty,
    /// The input looked like gzip (magic `1f 8b`) but could not be inflated.
    #[error("not a valid gzip stream: {0}")]
    Gzip(#[source] std::io::Error),
    /// Inflating the input exceeded its cap (by default
    /// [`crate::pprof::MAX_DECOMPRESSED_BYTES`]); refused so a gzip bomb
    /// cannot exhaust memory.
    #[error(
        "decompressed profile is larger than {}, the cap on inflated pprof data; refusing to load it (a gzip bomb, or not a profile)",
        mib(*limit)
    )]
    TooLarge {
        /// The limit that was exceeded, in bytes.
        limit: u64,
    },
    /// The decoded profile would exceed its cap on copied frames and strings
    /// (by default [`crate::pprof::MAX_MODEL_BYTES`]): samples that share
    /// huge stacks by id.
    #[error(
        "decoded profile would hold more than {} of stack frames, the cap on a decoded profile; refusing to load it",
        mib(*limit)
    )]
    ModelTooLarge {
        /// The limit that was exceeded, in bytes.
        limit: u64,
    },
    /// The bytes are not a protobuf message of the pprof shape.
    #[error("not a pprof profile (protobuf decode failed): {0}")]
    Decode(#[from] prost::DecodeError),
    /// The protobuf parsed but its contents are inconsistent (dangling ids,
    /// string indices out of range, value count mismatches, ...).
    #[error("invalid pprof profile: {0}")]
    Invalid(String),
    /// The in-memory [`crate::Profile`] cannot be encoded because it is
    /// inconsistent (e.g. a sample with the wrong number of values).
    #[error("cannot encode profile: {0}")]
    Model(String),
    /// A flame graph could not be produced.
    #[error("cannot render flame graph: {0}")]
    Render(String),
}

/// `256 MiB (268435456 bytes)`, or just bytes when the limit is not a
/// whole number of MiB.
fn mib(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB ({bytes} bytes)", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}
