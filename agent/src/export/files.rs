//! Profile files: checked before a capture starts, written 0600 and
//! atomically (temp file + rename) so a reader never sees half a profile.

use std::{
    fs::OpenOptions,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("output directory {dir} does not exist (for {path})")]
    MissingDir { dir: PathBuf, path: PathBuf },
    #[error("output directory {dir} is not writable (for {path}): {source}")]
    Unwritable {
        dir: PathBuf,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is a directory, not a file path")]
    IsDir { path: PathBuf },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_dir(path).join(format!(".{name}.qprof-{}.tmp", std::process::id()))
}

/// Proves that `path` can be written, by creating and removing a temp file
/// beside it: checking permission bits is not enough for root, who is
/// refused only by read-only or special file systems.
pub fn check_writable(path: &Path) -> Result<(), FileError> {
    let dir = parent_dir(path);
    if path.is_dir() {
        return Err(FileError::IsDir {
            path: path.to_path_buf(),
        });
    }
    if !dir.is_dir() {
        return Err(FileError::MissingDir {
            dir,
            path: path.to_path_buf(),
        });
    }
    let probe = temp_name(path);
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe);
    match created {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(source) => Err(FileError::Unwritable {
            dir,
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `bytes` to `path` with mode 0600 (profiles reveal code paths and
/// process names), via a temp file and a rename.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let err = |source| FileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = temp_name(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("qprof-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    /// A missing directory is named in the error.
    #[test]
    fn missing_dir_is_reported() {
        let err = check_writable(Path::new("/nonexistent-qprof/x/cpu.pb.gz")).expect_err("missing");
        assert!(
            err.to_string()
                .contains("/nonexistent-qprof/x does not exist"),
            "{err}"
        );
    }

    /// A directory given as the output file is refused.
    #[test]
    fn directory_as_output_is_refused() {
        let dir = scratch("isdir");
        assert!(matches!(check_writable(&dir), Err(FileError::IsDir { .. })));
    }

    /// Written files are 0600, complete, and leave no temp file behind.
    #[test]
    fn writes_private_files() {
        let dir = scratch("write");
        let path = dir.join("p.pb.gz");
        check_writable(&path).expect("writable");
        write_private(&path, b"abc").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"abc");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(&dir).expect("ls").count(), 1);
    }
}
