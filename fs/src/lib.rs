//! `serfnode-fs`: a FUSE filesystem serving a tree of named, versioned, immutable documents
//! that its owner publishes, plus control nodes whose writes go to a sink and volatile files
//! whose content is produced anew, asynchronously, by each lookup.
//!
//! Guarantees (see `core` for the invariants behind them):
//! - Each (path, version) of a document is its own inode whose bytes never change. After
//!   `Publisher::publish` returns, the next open of a changed name sees the new version;
//!   an fd opened before keeps reading its complete old version. No torn or mixed reads.
//! - Reading a file read before costs no FUSE request: no-open mode plus long TTLs let the
//!   kernel serve open+read+close from its page cache.
//! - Waiting for change: inotify does not see publishes (the kernel only learns about them
//!   through invalidations). Instead, poll(2) an open fd for POLLPRI: it is raised once a
//!   newer version of the fd's file exists (or the name is gone); then reopen.
//! - Volatile files (`Node::Volatile`): every lookup of the name asks its `Resolve` anew and
//!   the kernel keeps no usable dentry for the name (entry TTL 0, and the dentry is dropped
//!   after each answer), so each `cat` gets a fresh answer.
//!   The LOOKUP waits for the resolver without occupying a FUSE worker: other requests keep
//!   being served meanwhile. Each answer is its own immutable inode (no POLLPRI, untouched
//!   by publishes), freed once the kernel forgets it. See `volatile` for what the kernel
//!   does with such names (e.g. `stat` then `cat` resolves twice).
//! - Bounded under hostile readers and writers: an inode lives only while the kernel holds
//!   it; below an open-ended directory (`Dir::open_ended`) only the most recently looked-up
//!   names are kept and the kernel is told to forget the others; poll handles of gone
//!   pollers are woken and dropped past a small bound; opendirs of an unchanged directory
//!   share one listing; control-node writers' partial lines are bounded per writer and in
//!   all (see `control`). Documents may share bytes (`Parts`), e.g. every suffix of a log.
//! - No request is ever held open waiting for a future event (fuser 0.18 ignores
//!   FUSE_INTERRUPT, so such a waiter could not be killed). Control writes are held only
//!   until the sink answers, and volatile lookups until the resolver answers; both must
//!   answer in bounded time.
//!
//! Modules: `node` (the published tree), `control` (write nodes), `volatile` (per-lookup
//! files), `core` (the filesystem state, no FUSE), `mount` (the fuser adapter and mount
//! lifecycle), `error`.

mod control;
mod core;
mod error;
mod mount;
mod node;
mod volatile;

pub use control::{Completion, ControlSink, Writer};
pub use error::FsError;
pub use mount::{detach, detach_stale, mount, Mount, MountOptions, Notices, Publisher};
pub use node::{Dir, Doc, MapDir, Node, NodeKind, Parts};
pub use volatile::{Resolve, Resolved};
