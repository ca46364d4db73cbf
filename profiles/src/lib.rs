//! The profile model and its formats for qprof.
//!
//! * [`model`]: a symbolized, denormalized [`Profile`] that the agent builds
//!   and every output format consumes.
//! * [`pprof`]: encode/decode google/pprof protobuf (optionally gzipped), so
//!   profiles open in `go tool pprof`, Grafana/Pyroscope, Speedscope, ...
//! * [`folded`]: Brendan Gregg's folded-stack text, the lingua franca of
//!   flame graph tools.
//! * [`flamegraph`]: interactive SVG flame graphs via inferno.
//! * [`filter`]: narrowing a profile to some samples (e.g. one query's).
//!
//! The crate is pure (no I/O beyond the writers it is handed, no kernel or
//! async dependencies) so it is fast to test and reusable offline.

pub mod error;
pub mod filter;
pub mod flamegraph;
pub mod folded;
pub mod merge;
pub mod model;
pub mod pprof;

pub use error::ProfileError;
pub use flamegraph::render_svg;
pub use folded::{folded_lines, write_folded};
pub use merge::merge;
pub use model::{Label, LabelValue, Line, Location, Mapping, Profile, Sample, ValueType};
pub use pprof::{decode, encode, encode_gzip};
