//! The `fuser` adapter and the mount's lifecycle: maps kernel requests onto `Core`, sends the
//! notifications a publish asks for, and mounts, unmounts and detaches stale mounts.
//!
//! Fast path: `init` announces FUSE_NO_OPEN_SUPPORT and `open`/`flush` answer ENOSYS, so after
//! the first open the kernel sends neither OPEN, FLUSH nor RELEASE for files on this
//! connection, and opens files with keep-cache. With day-long entry and attribute TTLs (an
//! inode's attributes never change), an open+read+close of a file read before costs no
//! request at all: the page cache serves it. Directories keep OPENDIR: in no-opendir mode the
//! kernel would cache listings, which change with every publish.
//!
//! Volatile names: the LOOKUP handler hands the resolver a `Resolved` carrying the reply and
//! returns at once, freeing the worker; the reply goes out (entry TTL 0, attribute TTL long:
//! the answer's inode never changes) from whichever thread completes it.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, Notifier, OpenFlags, PollEvents,
    PollFlags, PollHandle, PollNotifier, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyPoll, ReplyStatfs, ReplyWrite, Request, Session, SessionACL,
    TimeOrNow, WriteFlags,
};
use tracing::{debug, warn};

use crate::control::Writer;
use crate::core::{Attr, Core, EntryFn, Found, Published, UnhashFn};
use crate::error::FsError;
use crate::node::{Dir, NodeKind};

/// Entry and attribute TTL. An inode's attributes never change (a new version is a new
/// inode), and changed names are invalidated explicitly, so the kernel may cache for long.
const TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How long `unmount` waits for the session to end after detaching.
const UNMOUNT_WAIT: Duration = Duration::from_secs(2);

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Let users other than the mounting one in (`allow_other`).
    pub allow_other: bool,
    /// FUSE worker threads; more than one keeps reads flowing while a request is slow.
    pub threads: usize,
    /// The mount's source name, as shown in /proc/mounts.
    pub fs_name: String,
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            allow_other: false,
            threads: 2,
            fs_name: "serfnode".to_owned(),
        }
    }
}

/// A mounted filesystem. Dropping it unmounts like `unmount`, logging any error.
pub struct Mount {
    path: PathBuf,
    session: Option<BackgroundSession>,
    publisher: Publisher,
}

/// Publishes new trees to a mount. Cheap to clone; usable from any thread except a FUSE
/// handler (the kernel notifications it sends wait for directory locks a request may hold).
#[derive(Clone)]
pub struct Publisher {
    core: Arc<Core>,
    notifier: Notifier,
}

/// Mounts `root` at `path`, first detaching a dead FUSE mount left there by a crashed run.
pub fn mount(path: &Path, root: Arc<dyn Dir>, opts: &MountOptions) -> Result<Mount, FsError> {
    detach_stale(path)?;
    let failed = |error| FsError::Mount {
        path: path.to_path_buf(),
        error,
    };
    let path = path.canonicalize().map_err(failed)?;
    let core = Arc::new(Core::new(root));
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName(opts.fs_name.clone()),
        MountOption::DefaultPermissions,
    ];
    cfg.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    cfg.n_threads = Some(opts.threads.max(1));
    let (notices, notices_rx) = mpsc::channel();
    let fs = Fs {
        core: Arc::clone(&core),
        notices,
        // SAFETY: geteuid/getegid cannot fail and touch no memory.
        uid: unsafe { libc::geteuid() },
        gid: unsafe { libc::getegid() },
    };
    let session = Session::new(fs, &path, &cfg).map_err(failed)?;
    let notifier = session.notifier();
    let (notice_sender, notice_core) = (notifier.clone(), Arc::clone(&core));
    thread::Builder::new()
        .name("serfnode-notify".to_owned())
        .spawn(move || send_notices(&notice_core, &notice_sender, &notices_rx))
        .map_err(failed)?;
    let session = session.spawn().map_err(failed)?;
    Ok(Mount {
        path,
        session: Some(session),
        publisher: Publisher { core, notifier },
    })
}

/// Detaches a dead FUSE mount (stat gives ENOTCONN: its server died) at `path` and returns
/// true. A live FUSE mount there is `FsError::Busy`; anything else is `Ok(false)`.
pub fn detach_stale(path: &Path) -> Result<bool, FsError> {
    // statfs, not stat: the kernel answers stat of a mount root from its
    // attribute cache (valid for a day here) even after the daemon died,
    // while statfs always asks the daemon.
    match statfs(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            detach(path).map_err(|error| FsError::Detach {
                path: path.to_path_buf(),
                error,
            })?;
            Ok(true)
        }
        Ok(()) if fuse_mounted_at(path) => Err(FsError::Busy {
            path: path.to_path_buf(),
        }),
        _ => Ok(false),
    }
}

fn statfs(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is NUL-terminated and outlives the call; `buf` is written
    // by the kernel only.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut buf) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Mount {
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// The mount point (canonical).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// FUSE requests answered so far; a file read before costs none (page cache).
    pub fn requests(&self) -> u64 {
        self.publisher.core.requests()
    }

    /// Detaches the mount (lazily: it vanishes from the namespace at once, even if files are
    /// open) and waits up to 2 s for the session to end. If files are still open (or volatile
    /// lookups pending) then, the session keeps serving them until they close (or resolve)
    /// and this returns a timeout error.
    pub fn unmount(mut self) -> Result<(), FsError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), FsError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let failed = |error| FsError::Unmount {
            path: self.path.clone(),
            error,
        };
        match detach(&self.path) {
            Ok(()) => {}
            // Not mounted any more: someone unmounted it for us.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => {
                self.session = Some(session);
                return Err(failed(e));
            }
        }
        let deadline = Instant::now() + UNMOUNT_WAIT;
        while !session.guard.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        if !session.guard.is_finished() {
            // Dropping the session would make fuser umount(2) the path once more, which by
            // now may belong to another mount (or the one below ours): leak it instead. Its
            // threads end when the last open file closes and the kernel ends the connection.
            std::mem::forget(session);
            return Err(failed(io::Error::new(
                io::ErrorKind::TimedOut,
                "files still open after detach; the session serves them until they close",
            )));
        }
        // The connection is gone; fuser's own unmount attempt and result add nothing.
        if let Err(e) = session.join() {
            debug!(path = %self.path.display(), "fuse session ended: {e}");
        }
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            warn!("{e}");
        }
    }
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Makes `root` the current tree. Returns once the kernel has dropped every dentry that
    /// now leads elsewhere (so the next open sees the new version) and pollers of outdated
    /// inodes have been woken. Open fds keep reading the version they opened. Dropping a
    /// dentry waits for the lookups in progress in its directory, volatile ones included:
    /// a publish may take as long as a resolver pending there.
    pub fn publish(&self, root: Arc<dyn Dir>) {
        self.switch(root).send();
    }

    /// Makes `root` the current tree and returns what the kernel is still to be told. The
    /// switch itself never blocks on the kernel (a lock and a walk of the names the kernel
    /// holds, no rendering), so an async task may call it and hand only a non-empty
    /// [`Notices::send`] to a blocking thread. Until it is sent, the kernel may still serve
    /// the names that changed from its caches.
    pub fn switch(&self, root: Arc<dyn Dir>) -> Notices {
        Notices {
            published: self.core.publish(root),
            notifier: self.notifier.clone(),
        }
    }
}

/// What a [`Publisher::switch`] left for the kernel: dentries to drop, pollers to wake.
#[must_use = "the kernel keeps serving changed names from its caches until these are sent"]
pub struct Notices {
    published: Published,
    notifier: Notifier,
}

impl Notices {
    /// Nothing to tell the kernel: it held no name that changed and nobody polled one.
    pub fn is_empty(&self) -> bool {
        self.published.invals.is_empty() && self.published.polls.is_empty()
    }

    /// Tells the kernel. Blocks: each notice is a write to /dev/fuse, and dropping a dentry
    /// waits for the lookups in progress in its directory.
    pub fn send(self) {
        for inval in &self.published.invals {
            let name = OsStr::new(&*inval.name);
            let parent = INodeNo(inval.parent);
            let sent = if inval.gone {
                // Also tells inotify watchers of the old inode IN_DELETE_SELF.
                self.notifier.delete(parent, INodeNo(inval.child), name)
            } else {
                self.notifier.inval_entry(parent, name)
            };
            // Failing is harmless: the kernel no longer had that dentry (ENOENT is already
            // ignored by fuser), or a deleted directory still had busy children.
            if let Err(e) = sent {
                debug!(?inval, "invalidation not applied: {e}");
            }
        }
        for kh in self.published.polls {
            if let Err(e) = self.notifier.poll(PollHandle(kh)) {
                debug!(kh, "poll wakeup not delivered: {e}");
            }
        }
    }
}

impl std::fmt::Debug for Notices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notices")
            .field("invals", &self.published.invals.len())
            .field("polls", &self.published.polls.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

/// What a request handler asks the kernel to be told, after its reply.
enum Notice {
    /// Names below a directory whose dentries the kernel should drop: answered volatile
    /// names, or names evicted from an open-ended directory.
    Unhash(INodeNo, Vec<Arc<str>>),
    /// Poll handles to wake (older ones of an inode, see `core::Polls`).
    Wake(Vec<u64>),
}

/// Sends the notices request handlers ask for until the session ends: drops dentries (of
/// answered volatile names, see `Core::answered` for why and when, and of names evicted from
/// open-ended directories) and wakes poll handles. Its own thread: a dentry invalidation
/// waits for the directory's lock, which lookups waiting for a FUSE worker or for a resolver
/// (maybe one running on the thread that answered) may hold.
fn send_notices(core: &Core, notifier: &Notifier, notices: &Receiver<Notice>) {
    for notice in notices {
        match notice {
            Notice::Unhash(parent, names) => {
                for name in names.iter().filter(|name| core.unhash_now(parent.0, name)) {
                    // Fails harmlessly when the kernel has no such dentry any more.
                    if let Err(e) = notifier.inval_entry(parent, OsStr::new(&**name)) {
                        debug!(%name, "dentry not dropped: {e}");
                    }
                }
            }
            Notice::Wake(handles) => {
                for kh in handles {
                    // A handle whose file was closed is unknown to the kernel: ignored.
                    if let Err(e) = notifier.poll(PollHandle(kh)) {
                        debug!(kh, "poll wakeup not delivered: {e}");
                    }
                }
            }
        }
    }
}

/// umount2(MNT_DETACH): fuser 0.18's own unmount is not lazy and fails while files are open.
/// Public for owners that must let go of a mount without its `Mount` (e.g. exiting at once).
pub fn detach(path: &Path) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether /proc/self/mountinfo lists a FUSE filesystem mounted exactly at `path`.
fn fuse_mounted_at(path: &Path) -> bool {
    let (Ok(path), Ok(info)) = (
        path.canonicalize(),
        std::fs::read_to_string("/proc/self/mountinfo"),
    ) else {
        return false;
    };
    // "id parent major:minor root mount-point options [optional...] - fstype source ..."
    info.lines().any(|line| {
        let Some((mount, fs)) = line.split_once(" - ") else {
            return false;
        };
        fs.starts_with("fuse")
            && mount
                .split(' ')
                .nth(4)
                .is_some_and(|point| unescape(point) == path.as_os_str().as_bytes())
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, etc.).
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// The `fuser::Filesystem`: every method counts the request, asks `Core` and replies.
struct Fs {
    core: Arc<Core>,
    /// To the thread that sends the kernel notifications requests ask for.
    notices: Sender<Notice>,
    uid: u32,
    gid: u32,
}

impl Fs {
    fn attr(&self, attr: &Attr) -> FileAttr {
        file_attr(attr, self.uid, self.gid)
    }

    /// Hands `notice` to the notifying thread (gone only with the session, and the kernel
    /// connection with it).
    fn notify(&self, notice: Notice) {
        let _ = self.notices.send(notice);
    }
}

/// The kernel's view of an inode: owned by the mounting user, with its kind's permission bits.
fn file_attr(attr: &Attr, uid: u32, gid: u32) -> FileAttr {
    let (kind, nlink) = match attr.kind {
        NodeKind::Dir => (FileType::Directory, 2),
        NodeKind::File | NodeKind::Control => (FileType::RegularFile, 1),
    };
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.created,
        mtime: attr.created,
        ctime: attr.created,
        crtime: attr.created,
        kind,
        perm: attr.kind.perm(),
        nlink,
        uid,
        gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn errno(code: i32) -> Errno {
    Errno::from_i32(code)
}

impl fuser::Filesystem for Fs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        config
            .add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT)
            .map_err(|_| io::Error::other("the kernel lacks FUSE_NO_OPEN_SUPPORT"))?;
        // Without it the kernel serializes LOOKUPs per directory (a FUSE mutex on the parent
        // inode): one pending volatile lookup would hold up every uncached name beside it.
        config
            .add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS)
            .map_err(|_| io::Error::other("the kernel lacks FUSE_PARALLEL_DIROPS"))
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.core.note_request();
        let found = self.core.lookup(parent.0, name).map(|(found, evicted)| {
            if !evicted.is_empty() {
                self.notify(Notice::Unhash(parent, evicted));
            }
            found
        });
        match found {
            Ok(Found::Inode(attr)) => reply.entry(&TTL, &self.attr(&attr), Generation(0)),
            Ok(Found::Volatile(resolution)) => {
                let (uid, gid) = (self.uid, self.gid);
                let reply: EntryFn = Box::new(move |answer| match answer {
                    // Entry TTL 0: the next walk to the name must look it up (resolve) again.
                    Ok(attr) => reply.entry_with_ttls(
                        &TTL,
                        &Duration::ZERO,
                        &file_attr(&attr, uid, gid),
                        Generation(0),
                    ),
                    Err(e) => reply.error(errno(e)),
                });
                let notices = self.notices.clone();
                let unhash: UnhashFn = Box::new(move |names| {
                    if !names.is_empty() {
                        // Fails only once the session is gone, and then there is no dentry.
                        let _ = notices.send(Notice::Unhash(parent, names));
                    }
                });
                self.core.resolve(resolution, reply, unhash);
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.note_request();
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.core.note_request();
        match self.core.getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &self.attr(&attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.core.note_request();
        let owner_or_mode = mode.is_some() || uid.is_some() || gid.is_some();
        match self.core.setattr(ino.0, size, owner_or_mode) {
            Ok(attr) => reply.attr(&TTL, &self.attr(&attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// ENOSYS switches the whole connection to no-open mode (see the module doc).
    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.core.note_request();
        reply.error(Errno::ENOSYS);
    }

    /// ENOSYS stops FLUSH on close for the whole connection; nothing is written back.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.core.note_request();
        reply.error(Errno::ENOSYS);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.core.note_request();
        match self.core.read(ino.0, offset, size) {
            Ok(chunk) => reply.data(&chunk),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.core.note_request();
        let writer = Writer {
            pid: req.pid(),
            uid: req.uid(),
            gid: req.gid(),
        };
        self.core.write(
            ino.0,
            writer,
            offset,
            data,
            Box::new(move |result| match result {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(e)),
            }),
        );
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.core.note_request();
        match self.core.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.core.note_request();
        let entries = match self.core.readdir(fh.0) {
            Ok(entries) => entries,
            Err(e) => return reply.error(errno(e)),
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, entry) in entries.iter().enumerate().skip(start) {
            let kind = match entry.kind {
                NodeKind::Dir => FileType::Directory,
                NodeKind::File | NodeKind::Control => FileType::RegularFile,
            };
            // The offset of an entry is where the next readdir continues.
            if reply.add(INodeNo(entry.ino), i as u64 + 1, kind, &entry.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.core.note_request();
        self.core.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.core.note_request();
        reply.statfs(0, 0, 0, self.core.inode_count(), 0, 4096, 255, 4096);
    }

    fn poll(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        ph: PollNotifier,
        _events: PollEvents,
        flags: PollFlags,
        reply: ReplyPoll,
    ) {
        self.core.note_request();
        let kh = flags
            .contains(PollFlags::FUSE_POLL_SCHEDULE_NOTIFY)
            .then(|| ph.handle().0);
        match self.core.poll(ino.0, kh) {
            Ok((ready, wake)) => {
                reply.poll(PollEvents::from_bits_truncate(ready));
                if !wake.is_empty() {
                    self.notify(Notice::Wake(wake));
                }
            }
            Err(e) => reply.error(errno(e)),
        }
    }
}
