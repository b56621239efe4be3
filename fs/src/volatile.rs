//! Volatile files: names whose content is produced anew, asynchronously, by every lookup
//! (e.g. the answers of a cluster query). The owner puts a `Node::Volatile(resolver)` in its
//! tree; each LOOKUP of that name hands the resolver a `Resolved`, and the LOOKUP is answered
//! when the resolver completes it, from any thread, without holding a FUSE worker meanwhile.
//!
//! Each answer is a fresh, immutable, read-only inode outside the published tree (publishes
//! never touch it; poll never raises POLLPRI on it); it lives until the kernel forgets it.
//! An fd keeps reading the answer it opened. Every path walk that reaches the name resolves
//! it: `cat` once, `stat` then `cat` twice, `ls -l` of the directory once per volatile name.
//!
//! What the kernel does with such names (measured on 6.18):
//! - Entry TTL 0 alone does not make the kernel forget the name: FUSE drops expired dentries
//!   when their last user goes only on virtiofs (`delete_stale`), so the dentry of the last
//!   answer stays cached. The next walk then revalidates it with a LOOKUP (a resolution),
//!   sees another inode, discards that answer, and looks the name up again (a second
//!   resolution): every `cat` after the first ran the resolver twice, and each name kept
//!   its last answer's inode until then. So after each answer the name's dentry is also
//!   invalidated; the answer's inode is then forgotten as soon as its last user is done, and
//!   the next walk resolves once. A walk that races with that invalidation (one started
//!   right after the previous answer, e.g. `stat` then `open`) may still resolve twice:
//!   a few percent of back-to-back `cat`s here, up to half on a CPU-starved host.
//! - The invalidation waits for the directory's lock, which every lookup in progress in the
//!   directory holds, and lookups that come later queue behind it. So invalidations for a
//!   directory are held back while a volatile lookup is pending there (see
//!   `Core::answered`); meanwhile, walks to names answered there may resolve twice. A lookup
//!   the kernel has begun but not yet handed to us cannot be seen, so an invalidation sent
//!   just then still waits for its resolver (rare; bounded by the resolver). Publishes are
//!   affected alike: `Publisher::publish` invalidations in a directory wait for the volatile
//!   lookups pending there, and hold up that directory's uncached lookups meanwhile. So
//!   keep volatile names apart from names that publishes change.
//! - Without FUSE_PARALLEL_DIROPS the kernel serializes the LOOKUPs of a directory: one
//!   pending resolution would hold up every uncached name beside it. The mount asks for it.
//! - The answer's inode never changes, so its attributes keep the long TTL and the page
//!   cache is fine (each answer is a new inode).

use std::fmt;

/// A file produced per lookup: each lookup of its name asks the resolver anew (the kernel
/// is told not to cache the name: entry TTL 0) and the LOOKUP is answered when the
/// resolver completes. The resolver must complete in bounded time: the looking-up process
/// cannot be interrupted meanwhile (fuser ignores FUSE_INTERRUPT).
///
/// `resolve` runs on a FUSE worker thread, outside the filesystem's locks: it must return
/// promptly (start the work elsewhere, e.g. a tokio task, and complete `done` from there; or
/// complete it at once if the answer is cheap) and must not publish to the mount.
///
/// Every path walk to the name resolves it: `stat` then `cat` twice, `ls -l` of the
/// directory once per volatile name. A walk that closely follows the previous answer (or
/// one made while another volatile lookup of the same directory is pending) may resolve
/// twice, the first answer unread. Each answer is its own file: an fd keeps reading the
/// answer it opened, and poll(2) never raises POLLPRI on it.
pub trait Resolve: Send + Sync + 'static {
    fn resolve(&self, done: Resolved);
}

/// Answers one lookup: the file's bytes or an errno.
pub(crate) type AnswerFn = Box<dyn FnOnce(Result<Vec<u8>, i32>) + Send>;

/// The pending answer to one lookup of a volatile name; dropping it unanswered answers EIO.
pub struct Resolved {
    answer: Option<AnswerFn>,
}

impl Resolved {
    pub(crate) fn new(answer: AnswerFn) -> Resolved {
        Resolved {
            answer: Some(answer),
        }
    }

    /// The name resolves to a read-only file with these bytes (a fresh inode, immutable).
    pub fn file(mut self, bytes: Vec<u8>) {
        self.answer(Ok(bytes));
    }

    /// The lookup fails with errno (e.g. ENOENT, EACCES, EAGAIN). A non-positive errno
    /// becomes EIO.
    pub fn fail(mut self, errno: i32) {
        let errno = if errno > 0 { errno } else { libc::EIO };
        self.answer(Err(errno));
    }

    fn answer(&mut self, result: Result<Vec<u8>, i32>) {
        if let Some(answer) = self.answer.take() {
            answer(result);
        }
    }
}

impl Drop for Resolved {
    fn drop(&mut self) {
        self.answer(Err(libc::EIO));
    }
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolved").finish_non_exhaustive()
    }
}
