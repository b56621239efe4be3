//! The crate's error type: what failed, on which path, and the operating system's reason.

use std::io;
use std::path::PathBuf;

/// Mounting, unmounting or detaching failed. Each message names the operation and the path.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The mount itself failed (mount(2), the FUSE handshake or the session thread).
    #[error("mount {}: {error}", path.display())]
    Mount { path: PathBuf, error: io::Error },
    /// A live FUSE filesystem already serves the path; mounting over it would hide it.
    #[error("mount {}: a live fuse filesystem is already mounted there", path.display())]
    Busy { path: PathBuf },
    /// A dead FUSE mount was found on the path but could not be detached.
    #[error("detach stale mount {}: {error}", path.display())]
    Detach { path: PathBuf, error: io::Error },
    /// Detaching failed, or the session still served open files when the wait ran out.
    #[error("unmount {}: {error}", path.display())]
    Unmount { path: PathBuf, error: io::Error },
}
