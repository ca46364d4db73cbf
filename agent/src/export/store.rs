//! The agent's profile store on disk:
//!
//! ```text
//! <data-dir>/continuous/<start-ms>-<what>.<ext>   one file per window and kind
//! <data-dir>/captures/<id>/meta.json              one directory per capture
//! <data-dir>/captures/<id>/<files>
//! ```
//!
//! Directories are 0700 and files 0600 (profiles reveal code paths, process
//! names and query shapes). Continuous windows are retained by total size
//! and age, oldest first. A capture directory without a readable
//! `meta.json` (a crash mid-write, a hand edit) is skipped with a warning
//! and counted, never fatal: the rest of the store stays usable.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::files::{self, FileError};

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("encoding {what}: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
}

/// A capture's state, as `meta.json` and the API show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureStatus {
    Running,
    Done,
    Failed,
}

/// `meta.json` of one capture.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaptureMeta {
    pub id: String,
    pub kind: String,
    pub status: CaptureStatus,
    /// "on-demand" (API or `qprof capture`); triggers will add theirs.
    pub reason: String,
    pub started_unix_ms: u64,
    /// Requested duration.
    pub duration_s: f64,
    /// How long it really ran (stopped early on agent shutdown).
    #[serde(default)]
    pub elapsed_s: f64,
    #[serde(default)]
    pub pids: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hz: Option<u64>,
    /// Files in the capture directory.
    #[serde(default)]
    pub files: Vec<String>,
    /// Samples, executions or calls counted, by what they are.
    #[serde(default)]
    pub counts: Vec<(String, u64)>,
    /// Losses by cause (BPF counter names).
    #[serde(default)]
    pub drops: Vec<(String, u64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One window file in `continuous/`.
#[derive(Debug, Clone, Serialize)]
pub struct WindowFile {
    pub name: String,
    pub start_unix_ms: u64,
    pub bytes: u64,
}

/// The store rooted at the data directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Capture ids: only these characters, so an id can never leave the
/// captures directory.
#[must_use]
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// File names inside a capture: no separators, no dot files, bounded.
#[must_use]
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Milliseconds since the epoch.
#[must_use]
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Store {
    /// Opens (creating, 0700) the data directory and its two subdirectories,
    /// and proves it writable, so that an unusable directory fails at
    /// start-up rather than at the first window.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        for dir in [
            root.to_path_buf(),
            root.join("continuous"),
            root.join("captures"),
        ] {
            let err = |source| StoreError::Dir {
                path: dir.clone(),
                source,
            };
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(err)?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
        files::check_writable(&root.join("continuous").join("probe"))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn continuous(&self) -> PathBuf {
        self.root.join("continuous")
    }

    /// Writes one window's file (`what` e.g. `cpu.pb.gz`).
    pub fn write_window(&self, start_ms: u64, what: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.continuous().join(format!("{start_ms}-{what}"));
        files::write_private(&path, bytes)?;
        Ok(())
    }

    /// Window files, oldest first.
    #[must_use]
    pub fn windows(&self) -> Vec<WindowFile> {
        let Ok(dir) = fs::read_dir(self.continuous()) else {
            return Vec::new();
        };
        let mut out: Vec<WindowFile> = dir
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_owned();
                let start = name.split('-').next()?.parse().ok()?;
                let bytes = e.metadata().ok()?.len();
                Some(WindowFile {
                    name,
                    start_unix_ms: start,
                    bytes,
                })
            })
            .collect();
        out.sort_by(|a, b| (a.start_unix_ms, &a.name).cmp(&(b.start_unix_ms, &b.name)));
        out
    }

    /// Reads one window file by name.
    #[must_use]
    pub fn read_window(&self, name: &str) -> Option<Vec<u8>> {
        valid_file_name(name)
            .then(|| fs::read(self.continuous().join(name)).ok())
            .flatten()
    }

    /// Deletes windows past `max_age` and then, oldest first, until the
    /// total is under `max_size`. Returns how many files were removed.
    #[must_use]
    pub fn retain(&self, max_size: u64, max_age: Duration, now: SystemTime) -> usize {
        let windows = self.windows();
        let cutoff = unix_ms(now).saturating_sub(max_age.as_millis() as u64);
        let mut total: u64 = windows.iter().map(|w| w.bytes).sum();
        let mut removed = 0;
        for w in &windows {
            if w.start_unix_ms >= cutoff && total <= max_size {
                break;
            }
            if fs::remove_file(self.continuous().join(&w.name)).is_ok() {
                removed += 1;
            }
            total = total.saturating_sub(w.bytes);
        }
        removed
    }

    /// Bytes on disk under the data directory's two stores.
    #[must_use]
    pub fn size(&self) -> u64 {
        let windows: u64 = self.windows().iter().map(|w| w.bytes).sum();
        let captures: u64 = fs::read_dir(self.root.join("captures"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .flat_map(|d| fs::read_dir(d.path()).into_iter().flatten())
            .filter_map(Result::ok)
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum();
        windows + captures
    }

    /// A capture's directory (created 0700), for a valid id.
    pub fn capture_dir(&self, id: &str) -> Result<PathBuf, StoreError> {
        let dir = self.root.join("captures").join(id);
        fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&dir)
            .map_err(|source| StoreError::Dir {
                path: dir.clone(),
                source,
            })?;
        Ok(dir)
    }

    /// Writes a capture's `meta.json` (atomically: a reader sees the old
    /// or the new one, never half).
    pub fn write_meta(&self, meta: &CaptureMeta) -> Result<(), StoreError> {
        let dir = self.capture_dir(&meta.id)?;
        let json = serde_json::to_vec_pretty(meta).map_err(|source| StoreError::Json {
            what: "meta.json",
            source,
        })?;
        files::write_private(&dir.join("meta.json"), &json)?;
        Ok(())
    }

    /// Writes one file of a capture.
    pub fn write_capture_file(&self, id: &str, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let dir = self.capture_dir(id)?;
        files::write_private(&dir.join(name), bytes)?;
        Ok(())
    }

    /// Every capture whose `meta.json` reads, newest first; the others are
    /// returned as warnings (directory and why).
    #[must_use]
    pub fn captures(&self) -> (Vec<CaptureMeta>, Vec<String>) {
        let mut metas = Vec::new();
        let mut warnings = Vec::new();
        let Ok(dir) = fs::read_dir(self.root.join("captures")) else {
            return (metas, warnings);
        };
        for entry in dir.filter_map(Result::ok) {
            let path = entry.path().join("meta.json");
            match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<CaptureMeta>(&b).map_err(|e| e.to_string()))
            {
                Ok(meta) if valid_id(&meta.id) => metas.push(meta),
                Ok(meta) => warnings.push(format!("{}: invalid id {:?}", path.display(), meta.id)),
                Err(e) => warnings.push(format!("{}: {e}", path.display())),
            }
        }
        metas.sort_by(|a, b| (b.started_unix_ms, &b.id).cmp(&(a.started_unix_ms, &a.id)));
        (metas, warnings)
    }

    /// One file of a capture, if both names are valid and it exists.
    #[must_use]
    pub fn read_capture_file(&self, id: &str, name: &str) -> Option<Vec<u8>> {
        (valid_id(id) && valid_file_name(name))
            .then(|| fs::read(self.root.join("captures").join(id).join(name)).ok())
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("qprof-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn meta(id: &str, started: u64) -> CaptureMeta {
        CaptureMeta {
            id: id.into(),
            kind: "cpu".into(),
            status: CaptureStatus::Done,
            reason: "on-demand".into(),
            started_unix_ms: started,
            duration_s: 1.0,
            elapsed_s: 1.0,
            pids: vec![],
            hz: Some(99),
            files: vec!["cpu.pb.gz".into()],
            counts: vec![],
            drops: vec![],
            error: None,
        }
    }

    /// The data directory and its subdirectories are created 0700.
    #[test]
    fn directories_are_private() {
        let root = scratch("mode");
        Store::open(&root).unwrap();
        for d in [root.clone(), root.join("captures"), root.join("continuous")] {
            assert_eq!(
                fs::metadata(&d).unwrap().permissions().mode() & 0o777,
                0o700
            );
        }
    }

    /// Retention drops the oldest windows first, by age and by size.
    #[test]
    fn retention_by_age_then_size() {
        let store = Store::open(&scratch("retain")).unwrap();
        let now = SystemTime::now();
        let now_ms = unix_ms(now);
        store
            .write_window(now_ms - 10 * 86_400_000, "cpu.pb.gz", &[0; 100])
            .unwrap();
        for i in 0..5 {
            store
                .write_window(now_ms - 5000 + i, "cpu.pb.gz", &[0; 100])
                .unwrap();
        }
        assert_eq!(store.retain(10_000, Duration::from_hours(7 * 24), now), 1);
        assert_eq!(store.windows().len(), 5);
        assert_eq!(store.retain(250, Duration::from_hours(7 * 24), now), 3);
        let left = store.windows();
        assert_eq!(left.len(), 2);
        assert_eq!(
            left[0].start_unix_ms,
            now_ms - 5000 + 3,
            "the newest are kept"
        );
    }

    /// A corrupt or truncated capture is skipped with a warning; the others list, newest first.
    #[test]
    fn corrupt_capture_is_skipped_not_fatal() {
        let root = scratch("corrupt");
        let store = Store::open(&root).unwrap();
        store.write_meta(&meta("1-cpu", 1)).unwrap();
        store.write_meta(&meta("2-cpu", 2)).unwrap();
        let bad = root.join("captures/3-cpu");
        fs::create_dir_all(&bad).unwrap();
        fs::write(bad.join("meta.json"), b"{\"id\": \"3-cp").unwrap();
        fs::create_dir_all(root.join("captures/4-empty")).unwrap();
        let (metas, warnings) = Store::open(&root).unwrap().captures();
        let ids: Vec<&str> = metas.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["2-cpu", "1-cpu"]);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
    }

    /// Ids and file names that could leave the store are refused.
    #[test]
    fn traversal_is_refused() {
        for id in ["..", "../etc", "a/b", "", "A", "x.y"] {
            assert!(!valid_id(id), "{id}");
        }
        for name in ["..", "../meta.json", "a/b", ".hidden", ""] {
            assert!(!valid_file_name(name), "{name}");
        }
        let store = Store::open(&scratch("trav")).unwrap();
        assert!(store.read_capture_file("..", "passwd").is_none());
        assert!(store.read_window("../captures").is_none());
    }
}
