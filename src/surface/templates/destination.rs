//! A template's `destination:`: the rendered bytes written to a file on
//! disk, only when they differ from what the file holds, and so that no
//! reader ever sees half of them:
//!
//! - **atomically**: a temporary file in the same directory, written,
//!   given its mode, fsynced, then renamed over the destination (and the
//!   directory fsynced), so a reader opens the old file or the new one;
//! - **in place** where a rename cannot replace the file: a file that is a
//!   bind mount (Docker's `/etc/hosts`, a file mounted into a container)
//!   refuses it with EBUSY. Then, as the hosts hook does
//!   ([`crate::surface::hosts`]), the space is reserved first (a full disk
//!   fails the update before a byte changes), the bytes go in with one
//!   `pwrite` at the start, and a shorter file is truncated after them.
//!
//! The mode is `mode:` when given, else the existing file's, else 0644. In
//! a child the file is written with the application's file identity (its
//! uid, gid and groups: [`crate::surface::restrict`]), so a destination
//! the application could not write itself is not written for it either.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::surface::hosts::reserve;
use crate::surface::restrict::{as_file_user, Ids};

/// Where a destination was or was not written.
#[derive(Debug, thiserror::Error)]
#[error("write template `{name}` to {}: {what}: {error}", path.display())]
pub(crate) struct WriteError {
    pub name: String,
    pub path: PathBuf,
    /// The step that failed (`create the temporary file`, `rename`, ...).
    pub what: &'static str,
    pub error: std::io::Error,
}

/// How a write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The file already held these bytes (its mode set if it differed).
    Same,
    /// Replaced by rename.
    Renamed,
    /// Rewritten in place (the rename was refused with EBUSY).
    InPlace,
}

impl Written {
    pub fn changed(self) -> bool {
        self != Written::Same
    }
}

/// One template's destination.
#[derive(Debug, Clone)]
pub(crate) struct Destination {
    pub name: String,
    pub path: PathBuf,
    pub mode: Option<u32>,
    /// The file identity to write with (a child's `user:`).
    pub ids: Option<Ids>,
}

const DEFAULT_MODE: u32 = 0o644;

impl Destination {
    /// Writes `bytes` unless the file holds them already.
    pub fn write(&self, bytes: &[u8]) -> Result<Written, WriteError> {
        match &self.ids {
            None => self.write_here(bytes),
            Some(ids) => as_file_user(ids, || self.write_here(bytes))
                .map_err(|error| self.fail("take the application's file identity", error))?,
        }
    }

    fn fail(&self, what: &'static str, error: std::io::Error) -> WriteError {
        WriteError {
            name: self.name.clone(),
            path: self.path.clone(),
            what,
            error,
        }
    }

    fn write_here(&self, bytes: &[u8]) -> Result<Written, WriteError> {
        let existing = match std::fs::metadata(&self.path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(self.fail("stat", e)),
        };
        let mode = self
            .mode
            .or(existing.as_ref().map(|m| m.permissions().mode() & 0o7777))
            .unwrap_or(DEFAULT_MODE);
        if let Some(meta) = &existing {
            if meta.len() == bytes.len() as u64 {
                let now = std::fs::read(&self.path).map_err(|e| self.fail("read", e))?;
                if now == bytes {
                    if meta.permissions().mode() & 0o7777 != mode {
                        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(mode))
                            .map_err(|e| self.fail("set the mode", e))?;
                    }
                    return Ok(Written::Same);
                }
            }
        }
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("/"),
        };
        let file_name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(
            ".{file_name}.serfnode-{}-{}.tmp",
            std::process::id(),
            unique()
        ));
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&tmp)
                .map_err(|e| self.fail("create the temporary file", e))?;
            file.write_all(bytes)
                .map_err(|e| self.fail("write the temporary file", e))?;
            // The umask took bits of `mode`; give them back.
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| self.fail("set the mode", e))?;
            file.sync_all()
                .map_err(|e| self.fail("fsync the temporary file", e))?;
            drop(file);
            match std::fs::rename(&tmp, &self.path) {
                Ok(()) => {
                    // The rename itself is durable once the directory is.
                    if let Ok(d) = File::open(dir) {
                        let _ = d.sync_all();
                    }
                    Ok(Written::Renamed)
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    let _ = std::fs::remove_file(&tmp);
                    self.in_place(bytes, mode).map(|()| Written::InPlace)
                }
                Err(e) => Err(self.fail("rename the temporary file over it", e)),
            }
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// The file rewritten where it is: reserve, one write, truncate.
    fn in_place(&self, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
        let file = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| self.fail("open for an in-place write", e))?;
        reserve(&file, bytes.len()).map_err(|e| self.fail("reserve space", e))?;
        file.write_all_at(bytes, 0)
            .map_err(|e| self.fail("write in place", e))?;
        file.set_len(bytes.len() as u64)
            .map_err(|e| self.fail("truncate after the write", e))?;
        let _ = file.set_permissions(std::fs::Permissions::from_mode(mode));
        file.sync_all().map_err(|e| self.fail("fsync", e))?;
        Ok(())
    }
}

/// A number no other temporary file of this process has.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn dest(path: &Path, mode: Option<u32>) -> Destination {
        Destination {
            name: "t".into(),
            path: path.to_owned(),
            mode,
            ids: None,
        }
    }

    #[test]
    fn written_by_rename_only_when_the_bytes_differ() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up.conf");
        let d = dest(&path, Some(0o600));
        assert_eq!(d.write(b"a\n").unwrap(), Written::Renamed);
        assert_eq!(std::fs::read(&path).unwrap(), b"a\n");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600);
        assert_eq!(d.write(b"a\n").unwrap(), Written::Same);
        assert_eq!(
            std::fs::metadata(&path).unwrap().ino(),
            meta.ino(),
            "same bytes: not replaced"
        );
        assert_eq!(d.write(b"bb\n").unwrap(), Written::Renamed);
        assert_ne!(std::fs::metadata(&path).unwrap().ino(), meta.ino());
        assert_eq!(std::fs::read(&path).unwrap(), b"bb\n");
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["up.conf"]);
    }

    #[test]
    fn without_a_mode_the_existing_files_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        dest(&path, None).write(b"new").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o640);
        let fresh = dir.path().join("fresh");
        dest(&fresh, None).write(b"x").unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o7777, 0o644);
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_file() {
        let err = dest(Path::new("/nonexistent-dir/x"), None)
            .write(b"x")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("write template `t` to /nonexistent-dir/x: create the temporary file"),
            "{err}"
        );
    }
}
