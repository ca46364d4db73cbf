//! The agent's configuration: TOML, every field optional, embedded defaults.
//!
//! Unknown keys and wrong types are errors that name the key and the line
//! (toml's spans); values are checked after parsing (zero or negative
//! durations, a zero rate) so that a bad file never half-starts an agent.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Everything `qprof agent` reads from its config file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP address. Loopback by default; anything else needs an auth token.
    pub listen: SocketAddr,
    /// Where continuous windows and captures are kept (created 0700).
    pub data_dir: PathBuf,
    /// A file holding the bearer token every endpoint but /metrics and
    /// /healthz requires. Required when `listen` is not loopback.
    pub auth_token_file: Option<PathBuf>,
    /// Keep and show query text with its literals (off: literals can be
    /// personal data).
    pub raw_queries: bool,
    /// Length of one continuous window: each writes a profile and feeds
    /// the metrics.
    #[serde(with = "human_duration")]
    pub window: Duration,
    pub continuous: Continuous,
    pub store: Store,
    pub captures: Captures,
    pub metrics: Metrics,
    pub pyroscope: Pyroscope,
    /// Guards shared by every rule, and the flight recorder.
    pub triggers: Triggers,
    /// Trigger rules; absent: [`crate::trigger::rules::DEFAULT_RULES`];
    /// `rules = []` turns triggers off.
    pub rules: Vec<crate::trigger::rules::RuleConfig>,
}

/// Guards over all rules, and the flight recorder's length.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Triggers {
    /// Triggered firings per rolling hour, all rules together: a flapping
    /// signal must not turn the agent into a profiler that never stops.
    pub max_per_hour: u32,
    /// Triggered firings whose captures may run at once.
    pub max_concurrent: u32,
    /// How much CPU history the flight recorder keeps (the pre-breach
    /// profile of a triggered capture).
    #[serde(with = "human_duration")]
    pub flight_recorder: Duration,
}

impl Default for Triggers {
    fn default() -> Self {
        Self {
            max_per_hour: 6,
            max_concurrent: 2,
            flight_recorder: Duration::from_mins(1),
        }
    }
}

/// The always-on capabilities.
#[expect(
    clippy::struct_excessive_bools,
    reason = "one switch per capability, as the TOML shows them"
)]
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Continuous {
    /// Host-wide CPU sampling.
    pub cpu: bool,
    /// Samples per second per CPU: 19, a prime, so the sampler does not
    /// lock step with periodic work at round rates (parca-agent's choice).
    pub cpu_hz: u64,
    /// Keep the idle task in CPU profiles (a quiet host is otherwise 99%
    /// `cpuidle_enter`).
    pub include_idle: bool,
    /// libpq and SQLite queries.
    pub queries: bool,
    /// Syscall counts and errors per process.
    pub syscalls: bool,
    /// TCP per remote endpoint.
    pub tcp: bool,
}

/// Retention of what is written to disk.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Store {
    /// Continuous windows are deleted oldest first past this total size.
    #[serde(with = "human_size")]
    pub max_size: u64,
    /// …and past this age.
    #[serde(with = "human_duration")]
    pub max_age: Duration,
    /// Windows also kept in memory for the API.
    pub memory_windows: usize,
}

/// On-demand captures.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Captures {
    /// The longest capture the API accepts.
    #[serde(with = "human_duration")]
    pub max_duration: Duration,
}

/// Cardinality of the exported series.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Fingerprints exported by name (top by total time); the rest are
    /// summed under `fingerprint_id="other"`.
    pub top_fingerprints: usize,
    /// Same cap for (comm, syscall) and (remote, comm) series.
    pub top_series: usize,
}

/// Push of each window's CPU profile to a Pyroscope server.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pyroscope {
    /// e.g. `http://pyroscope:4040`; none: no push.
    pub url: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9876)),
            data_dir: PathBuf::from("/var/lib/qprof"),
            auth_token_file: None,
            raw_queries: false,
            window: Duration::from_mins(1),
            continuous: Continuous::default(),
            store: Store::default(),
            captures: Captures::default(),
            metrics: Metrics::default(),
            pyroscope: Pyroscope::default(),
            triggers: Triggers::default(),
            rules: crate::trigger::rules::default_rules(),
        }
    }
}

impl Default for Continuous {
    fn default() -> Self {
        Self {
            cpu: true,
            cpu_hz: 19,
            include_idle: false,
            queries: true,
            syscalls: true,
            tcp: true,
        }
    }
}

impl Default for Store {
    fn default() -> Self {
        Self {
            max_size: 1 << 30,
            max_age: Duration::from_hours(7 * 24),
            memory_windows: 10,
        }
    }
}

impl Default for Captures {
    fn default() -> Self {
        Self {
            max_duration: Duration::from_mins(10),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            top_fingerprints: 200,
            top_series: 200,
        }
    }
}

/// Why a config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// toml's message names the key and shows the line.
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {key}: {problem}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        problem: String,
    },
    #[error("config {path}: {source}")]
    Rule {
        path: PathBuf,
        source: crate::trigger::rules::RuleError,
    },
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks config text (`path` only names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: with_line(text, &e),
        })?;
        config.validate(path)?;
        crate::trigger::rules::check(&config.rules, text).map_err(|e| ConfigError::Rule {
            path: path.to_path_buf(),
            source: e,
        })?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, problem: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            problem: problem.to_owned(),
        };
        if self.continuous.cpu_hz == 0 || self.continuous.cpu_hz > 1000 {
            return Err(invalid("continuous.cpu_hz", "must be between 1 and 1000"));
        }
        if self.window < Duration::from_secs(1) {
            return Err(invalid("window", "must be at least 1s"));
        }
        if self.store.memory_windows == 0 || self.store.memory_windows > 1440 {
            return Err(invalid(
                "store.memory_windows",
                "must be between 1 and 1440",
            ));
        }
        if self.store.max_size < 1 << 20 {
            return Err(invalid("store.max_size", "must be at least 1MiB"));
        }
        if self.metrics.top_fingerprints == 0 || self.metrics.top_series == 0 {
            return Err(invalid(
                "metrics",
                "top_fingerprints and top_series must be > 0",
            ));
        }
        let t = &self.triggers;
        if t.max_concurrent == 0 || t.max_per_hour == 0 {
            return Err(invalid(
                "triggers",
                "max_per_hour and max_concurrent must be > 0 (rules = [] turns triggers off)",
            ));
        }
        if t.flight_recorder > Duration::from_mins(10) {
            return Err(invalid("triggers.flight_recorder", "must be at most 10m"));
        }
        if let Some(url) = &self.pyroscope.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(
                "pyroscope.url",
                "must start with http:// or https://",
            ));
        }
        Ok(())
    }

    /// The effective config as TOML (what `--print-config` shows).
    #[must_use]
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
    }
}

/// toml's message, with "line N" added when it has a span.
fn with_line(text: &str, err: &toml::de::Error) -> String {
    let mut message = err.message().to_owned();
    if let Some(span) = err.span() {
        let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
        let _ = write!(message, " (line {line})");
    }
    message
}

/// Durations as `60s`, `500ms`, `10m`, `2h`, `7d`.
pub(crate) mod human_duration {
    use super::{Deserialize, Deserializer, Duration, Serializer};

    pub fn parse(text: &str) -> Result<Duration, String> {
        let t = text.trim();
        if let Some(days) = t.strip_suffix('d') {
            let n: u64 = days.trim().parse().map_err(|_| {
                format!("invalid duration '{text}': expected e.g. 60s, 10m, 2h, 7d")
            })?;
            if n == 0 {
                return Err(format!("invalid duration '{text}': must be more than 0"));
            }
            return Ok(Duration::from_secs(n.saturating_mul(86_400)));
        }
        if t.starts_with('-')
            || t.trim_start_matches(['0', '.'])
                .chars()
                .next()
                .is_none_or(|c| !c.is_ascii_digit())
        {
            return Err(format!(
                "invalid duration '{text}': must be more than 0, e.g. 60s"
            ));
        }
        crate::cli::values::parse_duration(t)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        let secs = value.as_secs();
        let text = if value.subsec_millis() != 0 {
            format!("{}ms", value.as_millis())
        } else if secs.is_multiple_of(86_400) {
            format!("{}d", secs / 86_400)
        } else {
            format!("{secs}s")
        };
        s.serialize_str(&text)
    }
}

/// Sizes as `1GiB`, `512MiB`, `64KiB` or a number of bytes.
mod human_size {
    use super::{Deserialize, Deserializer, Serializer};

    const UNITS: [(&str, u64); 4] = [
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ];

    pub fn parse(text: &str) -> Result<u64, String> {
        let t = text.trim();
        let bad = || format!("invalid size '{text}': expected e.g. 1GiB, 512MiB, 64KiB");
        let (number, scale) = UNITS
            .iter()
            .find_map(|(unit, scale)| t.strip_suffix(unit).map(|n| (n.trim(), *scale)))
            .unwrap_or((t, 1));
        let n: u64 = number.parse().map_err(|_| bad())?;
        n.checked_mul(scale).ok_or_else(bad)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    #[expect(
        clippy::trivially_copy_pass_by_ref,
        reason = "serde's serialize_with signature"
    )]
    pub fn serialize<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
        let (unit, scale) = UNITS
            .iter()
            .find(|(_, scale)| *value >= *scale && value.is_multiple_of(*scale))
            .copied()
            .unwrap_or(("B", 1));
        s.serialize_str(&format!("{}{unit}", value / scale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("qprof.toml")).map_err(|e| e.to_string())
    }

    /// An empty file is the embedded defaults, and they are the documented ones.
    #[test]
    fn empty_file_is_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listen.to_string(), "127.0.0.1:9876");
        assert_eq!(c.continuous.cpu_hz, 19);
        assert_eq!(c.window, Duration::from_mins(1));
    }

    /// The printed config parses back to the same config.
    #[test]
    fn printed_config_round_trips() {
        let mut c = Config::default();
        c.store.max_size = 512 << 20;
        c.window = Duration::from_millis(1500);
        let back = parse(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    /// Unknown keys are refused by name and line.
    #[test]
    fn unknown_key_names_key_and_line() {
        let err = parse("window = \"10s\"\n[continuous]\ncpu_hzz = 5\n").unwrap_err();
        assert!(err.contains("cpu_hzz") && err.contains("line 3"), "{err}");
    }

    /// A wrong type is refused by key and line.
    #[test]
    fn wrong_type_names_key_and_line() {
        let err = parse("\n[continuous]\ncpu_hz = \"fast\"\n").unwrap_err();
        assert!(err.contains("line 3") && err.contains("\"fast\""), "{err}");
    }

    /// Zero, negative and malformed durations are refused with their key.
    #[test]
    fn bad_durations_are_refused() {
        for bad in ["0s", "-5s", "soon", "0d", ""] {
            let err = parse(&format!("window = \"{bad}\"")).unwrap_err();
            assert!(
                err.contains("window") || err.contains("line 1"),
                "{bad}: {err}"
            );
            assert!(err.contains("duration"), "{bad}: {err}");
        }
        let err = parse("[captures]\nmax_duration = \"0ms\"").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    /// Out-of-range values are refused with the key.
    #[test]
    fn out_of_range_values_are_refused() {
        let err = parse("[continuous]\ncpu_hz = 0").unwrap_err();
        assert!(err.contains("continuous.cpu_hz"), "{err}");
        let err = parse("[store]\nmax_size = \"12B\"").unwrap_err();
        assert!(err.contains("store.max_size"), "{err}");
        let err = parse("[pyroscope]\nurl = \"ftp://x\"").unwrap_err();
        assert!(err.contains("pyroscope.url"), "{err}");
        let err = parse("listen = \"not an address\"").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
    }

    /// Sizes and day durations parse as documented.
    #[test]
    fn sizes_and_days_parse() {
        let c = parse("[store]\nmax_size = \"2GiB\"\nmax_age = \"30d\"").unwrap();
        assert_eq!(c.store.max_size, 2 << 30);
        assert_eq!(c.store.max_age, Duration::from_hours(30 * 24));
    }
}
