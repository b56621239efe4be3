//! The filesystem without FUSE: the inode table, lookup, read, readdir listings, poll state,
//! control writes, volatile resolutions and the publish diff. `mount.rs` maps kernel requests
//! onto these calls and sends the kernel notifications a publish returns; everything here is
//! testable unmounted.
//!
//! Invariants:
//! - Inode numbers come from a counter and are never reused (1 is the root), so the kernel
//!   can never confuse an old inode with a new one.
//! - A file inode is one (path, version), or one answer of a volatile name. Its bytes are
//!   rendered once and never change, so the kernel may cache its pages for as long as it
//!   likes, and an open fd always reads one complete version.
//! - The `children` of a current directory inode are exactly the names we track below it:
//!   every name the kernel looked up and has not forgotten. Each child inode matches the node
//!   its name has in the current tree; `publish` restores that after swapping the root.
//!   Volatile names are never tracked: a lookup of one returns its resolver (called by the
//!   adapter without the lock), and each answer becomes a fresh inode that no name leads to.
//! - An inode lives while the kernel holds it (it has not forgotten every lookup), and no
//!   longer: current or not, it is freed when the kernel forgets it (a current name is looked
//!   up again as a new inode; the kernel holds no page of the old one by then). So memory
//!   follows what the kernel caches, and publishes compare only what it holds.
//! - An inode is "current" while reachable from the root through `children`. A non-current
//!   inode stays readable until the kernel forgets it. A volatile answer is never current but
//!   never outdated either (poll gives it no POLLPRI): it was complete when made, and
//!   publishes never touch it. It is created already counted once (the LOOKUP it answers).
//! - Below an open-ended directory (`Dir::open_ended`: names beyond any listing, as many as
//!   readers ask for) at most `OPEN_ENDED_KEEP` names are kept fresh: past that, the least
//!   recently looked up are handed to the adapter to invalidate, so the kernel forgets them
//!   (an open one stays tracked, and current, until closed). The kernel caches dentries until
//!   memory pressure otherwise, and with them our inodes and the cost of every publish.
//! - Poll handles are per inode and bounded (see `Polls`): the kernel never says when a
//!   poller went away.
//! - Listings are shared by every opendir of a directory that has not changed since.
//! - Dentry invalidations are computed under the lock but sent by the caller after it is
//!   released: the kernel takes directory locks for them that a pending lookup may hold.
//!   A lookup counts itself under the same lock that orders it against a publish, and the
//!   kernel applies an invalidation only after a lookup in progress in that directory has
//!   instantiated its dentry, so no stale dentry survives a publish.
//! - The dentry of each answered volatile name is invalidated too (so the next walk looks
//!   the name up once instead of revalidating it first), but only once no volatile lookup is
//!   pending in its directory; see `Core::answered`.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;

use crate::control::{self, ControlSink, ReplyFn, Writer, Writers};
use crate::node::{Body, Dir, Doc, Node, NodeKind, Slice};
use crate::volatile::{Resolve, Resolved};

pub(crate) const ROOT: u64 = 1;
/// d_ino reported in listings for names never looked up (libfuse does the same).
const UNKNOWN_INO: u64 = 0xffff_ffff;
/// Names kept fresh below an open-ended directory; past it, the least recently looked up
/// are invalidated, `OPEN_ENDED_BATCH` at a time (so eviction costs O(1) per lookup).
pub(crate) const OPEN_ENDED_KEEP: usize = 256;
const OPEN_ENDED_BATCH: usize = 64;
/// Poll handles an inode keeps before waking the older ones (see `Polls`).
pub(crate) const POLL_FLUSH_MIN: usize = 64;

/// Attributes of a live inode; the adapter adds owner and permission bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Attr {
    pub ino: u64,
    pub kind: NodeKind,
    pub size: u64,
    /// When this inode was created: for a file, when this version was first looked up.
    pub created: SystemTime,
}

/// What a lookup found.
pub(crate) enum Found {
    /// A tracked inode, counted once more for the kernel.
    Inode(Attr),
    /// A volatile name: pass this to `Core::resolve`, outside any lock.
    Volatile(Resolution),
}

/// A lookup of a volatile name, to be resolved.
pub(crate) struct Resolution {
    parent: u64,
    name: Arc<str>,
    resolver: Arc<dyn Resolve>,
}

/// Answers a LOOKUP of a volatile name: the new inode, or an errno.
pub(crate) type EntryFn = Box<dyn FnOnce(Result<Attr, i32>) + Send>;
/// Called after each answer with the names below the looked-up directory whose dentries
/// the kernel should now drop (often none); the caller sends the invalidations.
pub(crate) type UnhashFn = Box<dyn FnOnce(Vec<Arc<str>>) + Send>;

/// One readdir entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DirEntry {
    pub ino: u64,
    pub kind: NodeKind,
    pub name: String,
}

/// A byte range of an immutable file version.
pub(crate) type Chunk = Slice;

/// What the kernel must be told after a publish.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Published {
    /// Dentries the kernel may hold whose name now leads elsewhere, children before parents.
    pub invals: Vec<Inval>,
    /// Poll handles waiting on inodes that are no longer current.
    pub polls: Vec<u64>,
}

/// Forget `parent`/`name` (which led to `child`); `gone` when the name no longer exists.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Inval {
    pub parent: u64,
    pub name: Arc<str>,
    pub child: u64,
    pub gone: bool,
}

pub(crate) struct Core {
    tree: Mutex<InodeTable>,
    writers: Arc<Writers>,
    /// Directory listings snapshotted at opendir, by file handle, so that offsets stay
    /// meaningful however many readdir calls one listing takes.
    listings: Mutex<HashMap<u64, Arc<[DirEntry]>>>,
    next_fh: AtomicU64,
    requests: AtomicU64,
    /// Per directory: volatile lookups in progress, and names answered since it last had
    /// none (their dentries are dropped once none is in progress).
    resolving: Mutex<HashMap<u64, Resolving>>,
}

/// Present only while `pending > 0`.
#[derive(Default)]
struct Resolving {
    pending: usize,
    answered: Vec<Arc<str>>,
}

/// Every inode the kernel may hold, by number: the filesystem's state behind one lock.
struct InodeTable {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    /// Stamps lookups, for the recency of open-ended names.
    next_stamp: u64,
}

struct Inode {
    /// Lookups the kernel has not forgotten yet.
    nlookup: u64,
    current: bool,
    /// An answer of a volatile name: not current, yet never outdated.
    volatile: bool,
    created: SystemTime,
    /// Where a tracked inode's name is (its directory, the name); unset for volatile answers.
    place: Option<(u64, Arc<str>)>,
    /// When it was last looked up (a `next_stamp`).
    used: u64,
    /// Handed out for invalidation from an open-ended directory, not looked up since.
    evicted: bool,
    /// Poll handles (kernel `kh`) to wake when this inode stops being current.
    polls: Polls,
    kind: Kind,
}

enum Kind {
    File {
        version: u64,
        body: Arc<Body>,
    },
    Dir {
        parent: u64,
        dir: Arc<dyn Dir>,
        children: HashMap<Arc<str>, u64>,
        /// Children not evicted.
        fresh: usize,
        /// The listing opendir shares until the directory or its children change.
        listing: Option<Arc<[DirEntry]>>,
    },
    Control(Arc<dyn ControlSink>),
}

/// The poll handles waiting on one inode. In no-open mode the kernel never says that a
/// poller's file was closed, so handles of gone pollers pile up while the file does not
/// change (an open+poll+close loop, a `watch` reopening its file every second). Past
/// `limit` handles all but the newest are woken and forgotten: the kernel polls a live
/// poller again (at once for poll(2), at the next epoll_wait), which registers anew; a dead
/// handle is dropped by the kernel (a wakeup for a closed file finds nothing). `limit`
/// adapts to how many woken handles came back (live pollers), so live ones are not woken
/// over and over: memory stays within a few times the live pollers plus `POLL_FLUSH_MIN`,
/// and each gone handle costs one wakeup.
#[derive(Default)]
struct Polls {
    handles: HashSet<u64>,
    /// Handles woken and not back yet (recent flushes; trimmed, it is only a count's basis).
    woken: HashSet<u64>,
    /// Woken handles that came back since the last flush.
    back: usize,
    limit: usize,
}

impl Polls {
    /// Registers `kh`; returns the handles to wake now (empty unless past the limit).
    fn add(&mut self, kh: u64) -> Vec<u64> {
        if self.woken.remove(&kh) {
            self.back += 1;
        }
        let limit = self.limit.max(POLL_FLUSH_MIN);
        if !self.handles.insert(kh) || self.handles.len() < limit {
            return Vec::new();
        }
        self.limit = POLL_FLUSH_MIN + 2 * std::mem::take(&mut self.back);
        let mut flushed = std::mem::take(&mut self.handles);
        flushed.remove(&kh);
        self.handles.insert(kh);
        if self.woken.len() > 4 * self.limit {
            self.woken.clear();
        }
        let wake: Vec<u64> = flushed.iter().copied().collect();
        self.woken.extend(flushed);
        wake
    }

    /// Every handle, for a change; the set is left empty.
    fn take(&mut self) -> Vec<u64> {
        let handles = std::mem::take(&mut self.handles);
        *self = Polls::default();
        handles.into_iter().collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.handles.len()
    }
}

impl Inode {
    fn new(kind: Kind, place: Option<(u64, Arc<str>)>) -> Inode {
        Inode {
            nlookup: 0,
            current: true,
            volatile: false,
            created: SystemTime::now(),
            place,
            used: 0,
            evicted: false,
            polls: Polls::default(),
            kind,
        }
    }

    fn kind(&self) -> NodeKind {
        match self.kind {
            Kind::File { .. } => NodeKind::File,
            Kind::Dir { .. } => NodeKind::Dir,
            Kind::Control(_) => NodeKind::Control,
        }
    }

    /// Adopts `node` if this inode can stand for it: same file version, or same kind for
    /// directories and control nodes (whose objects are swapped in place). Otherwise the
    /// name needs a new inode and `node` is handed back.
    fn refresh(&mut self, node: Node) -> Result<(), Node> {
        match (&mut self.kind, node) {
            (Kind::File { version, .. }, Node::File(doc)) if *version == doc.version() => Ok(()),
            (Kind::Dir { dir, listing, .. }, Node::Dir(new)) => {
                *dir = new;
                *listing = None;
                Ok(())
            }
            (Kind::Control(sink), Node::Control(new)) => {
                *sink = new;
                Ok(())
            }
            (_, node) => Err(node),
        }
    }

    /// What `attr` needs, taken under the lock; the size may need a render, done outside.
    fn view(&self, ino: u64) -> AttrSource {
        AttrSource {
            ino,
            kind: self.kind(),
            created: self.created,
            body: match &self.kind {
                Kind::File { body, .. } => Some(Arc::clone(body)),
                _ => None,
            },
        }
    }
}

/// The parts of a directory inode that follow its tracked names.
struct DirMut<'a> {
    children: &'a mut HashMap<Arc<str>, u64>,
    fresh: &'a mut usize,
    listing: &'a mut Option<Arc<[DirEntry]>>,
}

/// What `InodeTable::lookup` found (the attributes are made outside the lock).
enum Hit {
    Inode(AttrSource),
    Volatile(Resolution),
}

/// An inode as a lookup found it: what its attributes are made from, outside the lock.
struct AttrSource {
    ino: u64,
    kind: NodeKind,
    created: SystemTime,
    body: Option<Arc<Body>>,
}

impl AttrSource {
    /// Renders the body if this is its first use (never under the state lock).
    fn attr(self) -> Attr {
        Attr {
            ino: self.ino,
            kind: self.kind,
            size: self.body.map_or(0, |b| b.bytes().len() as u64),
            created: self.created,
        }
    }
}

impl InodeTable {
    fn inode(&self, ino: u64) -> Result<&Inode, i32> {
        self.inodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn children(&self, ino: u64) -> Option<&HashMap<Arc<str>, u64>> {
        match &self.inodes.get(&ino)?.kind {
            Kind::Dir { children, .. } => Some(children),
            _ => None,
        }
    }

    /// What changes in a directory inode as names come and go.
    fn dir_mut(&mut self, ino: u64) -> Option<DirMut<'_>> {
        match &mut self.inodes.get_mut(&ino)?.kind {
            Kind::Dir {
                children,
                fresh,
                listing,
                ..
            } => Some(DirMut {
                children,
                fresh,
                listing,
            }),
            _ => None,
        }
    }

    /// Tracks `ino` as `name` below directory `parent`.
    fn track(&mut self, parent: u64, name: Arc<str>, ino: u64) {
        if let Some(dir) = self.dir_mut(parent) {
            dir.children.insert(name, ino);
            *dir.fresh += 1;
            *dir.listing = None;
        }
    }

    /// Stops tracking `name` below `parent` if it still leads to `ino`.
    fn untrack(&mut self, parent: u64, name: &str, ino: u64) {
        let was_fresh = self.inodes.get(&ino).is_some_and(|i| !i.evicted);
        if let Some(dir) = self.dir_mut(parent) {
            if dir.children.get(name) == Some(&ino) {
                dir.children.remove(name);
                *dir.listing = None;
                if was_fresh {
                    *dir.fresh -= 1;
                }
            }
        }
    }

    /// Below an open-ended directory past `OPEN_ENDED_KEEP` fresh names: marks the least
    /// recently looked up as evicted and returns their names, to invalidate.
    fn evict(&mut self, dir: u64) -> Vec<Arc<str>> {
        let Some(Inode {
            kind: Kind::Dir {
                children, fresh, ..
            },
            ..
        }) = self.inodes.get(&dir)
        else {
            return Vec::new();
        };
        if *fresh <= OPEN_ENDED_KEEP {
            return Vec::new();
        }
        let excess = *fresh - (OPEN_ENDED_KEEP - OPEN_ENDED_BATCH);
        let mut candidates: Vec<(u64, Arc<str>, u64)> = children
            .iter()
            .filter_map(|(name, &ino)| {
                let child = self.inodes.get(&ino)?;
                (!child.evicted).then(|| (child.used, Arc::clone(name), ino))
            })
            .collect();
        let excess = excess.min(candidates.len());
        if excess == 0 {
            return Vec::new();
        }
        candidates.select_nth_unstable_by_key(excess - 1, |c| c.0);
        candidates.truncate(excess);
        let mut names = Vec::with_capacity(excess);
        for (_, name, ino) in candidates {
            self.tracked(ino).evicted = true;
            names.push(name);
        }
        if let Some(dir) = self.dir_mut(dir) {
            *dir.fresh -= names.len();
        }
        names
    }

    /// A child inode found in a `children` map (those always exist).
    fn tracked(&mut self, ino: u64) -> &mut Inode {
        self.inodes
            .get_mut(&ino)
            .expect("tracked children are live inodes")
    }

    /// The directory object a current directory inode serves.
    fn live_dir(&self, ino: u64) -> Result<Arc<dyn Dir>, i32> {
        let inode = self.inode(ino)?;
        match &inode.kind {
            Kind::Dir { dir, .. } if inode.current => Ok(Arc::clone(dir)),
            Kind::Dir { .. } => Err(libc::ENOENT),
            _ => Err(libc::ENOTDIR),
        }
    }

    /// Looks `name` up below `parent`; also returns the names evicted below `parent`.
    fn lookup(&mut self, parent: u64, name: &str) -> Result<(Hit, Vec<Arc<str>>), i32> {
        let dir = self.live_dir(parent)?;
        let node = dir.get(name).ok_or(libc::ENOENT)?;
        let known = self.children(parent).and_then(|c| c.get(name)).copied();
        if let Node::Volatile(resolver) = node {
            // The name was something else until the owner's tree changed without a publish:
            // stop tracking it (the kernel holds no valid dentry for it, as below).
            if let Some(ino) = known {
                self.detach(parent, name.into(), ino, false, &mut Published::default());
            }
            let hit = Hit::Volatile(Resolution {
                parent,
                name: name.into(),
                resolver,
            });
            return Ok((hit, Vec::new()));
        }
        let ino = match known {
            None => self.insert(parent, name, node),
            Some(ino) => match self.tracked(ino).refresh(node) {
                Ok(()) => ino,
                // The owner's tree changed without a publish. The kernel is looking the name
                // up, so it holds no valid dentry for the old inode: no invalidation needed.
                Err(node) => {
                    self.detach(parent, name.into(), ino, false, &mut Published::default());
                    self.insert(parent, name, node)
                }
            },
        };
        self.next_stamp += 1;
        let stamp = self.next_stamp;
        let inode = self.inodes.get_mut(&ino).expect("just found or inserted");
        inode.nlookup += 1;
        inode.used = stamp;
        let view = inode.view(ino);
        if std::mem::take(&mut inode.evicted) {
            if let Some(dir) = self.dir_mut(parent) {
                *dir.fresh += 1;
            }
        }
        let evicted = if dir.open_ended() {
            self.evict(parent)
        } else {
            Vec::new()
        };
        Ok((Hit::Inode(view), evicted))
    }

    /// A fresh file inode for one answer of a volatile name, counted for the LOOKUP it
    /// answers and tracked by no directory.
    fn insert_volatile(&mut self, bytes: Vec<u8>) -> AttrSource {
        let ino = self.next_ino;
        self.next_ino += 1;
        let mut inode = Inode::new(
            Kind::File {
                version: 0,
                body: Arc::new(Body::from(Doc::ready(0, bytes))),
            },
            None,
        );
        inode.nlookup = 1;
        inode.current = false;
        inode.volatile = true;
        let view = inode.view(ino);
        self.inodes.insert(ino, inode);
        view
    }

    fn insert(&mut self, parent: u64, name: &str, node: Node) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        let kind = match node {
            Node::File(doc) => Kind::File {
                version: doc.version(),
                body: Arc::new(Body::from(doc)),
            },
            Node::Dir(dir) => Kind::Dir {
                parent,
                dir,
                children: HashMap::new(),
                fresh: 0,
                listing: None,
            },
            Node::Control(sink) => Kind::Control(sink),
            Node::Volatile(_) => unreachable!("volatile names are never tracked"),
        };
        let name: Arc<str> = name.into();
        let place = Some((parent, Arc::clone(&name)));
        self.inodes.insert(ino, Inode::new(kind, place));
        self.track(parent, name, ino);
        ino
    }

    /// Brings the tracked names below current directory `dir_ino` in line with its (new)
    /// directory object: compares every tracked name, never renders.
    fn sync(&mut self, dir_ino: u64, out: &mut Published) {
        let Some(Inode {
            kind: Kind::Dir { dir, children, .. },
            ..
        }) = self.inodes.get(&dir_ino)
        else {
            return;
        };
        let dir = Arc::clone(dir);
        let tracked: Vec<(Arc<str>, u64)> =
            children.iter().map(|(n, &i)| (Arc::clone(n), i)).collect();
        for (name, ino) in tracked {
            match dir.get(&name) {
                Some(node) => match self.tracked(ino).refresh(node) {
                    Ok(()) => self.sync(ino, out),
                    Err(_) => self.detach(dir_ino, name, ino, false, out),
                },
                None => self.detach(dir_ino, name, ino, true, out),
            }
        }
    }

    /// Takes `ino` (and everything tracked below it) out of the current tree. Inodes the
    /// kernel still holds become non-current and get an invalidation; the others are freed.
    fn detach(&mut self, parent: u64, name: Arc<str>, ino: u64, gone: bool, out: &mut Published) {
        self.untrack(parent, &name, ino);
        let Some(inode) = self.inodes.get_mut(&ino) else {
            return;
        };
        inode.current = false;
        inode.place = None;
        out.polls.append(&mut inode.polls.take());
        let below = match &mut inode.kind {
            Kind::Dir {
                children,
                fresh,
                listing,
                ..
            } => {
                *fresh = 0;
                *listing = None;
                std::mem::take(children)
            }
            _ => HashMap::new(),
        };
        let held = inode.nlookup > 0;
        if !held {
            self.inodes.remove(&ino);
        }
        for (child_name, child) in below {
            self.detach(ino, child_name, child, true, out);
        }
        if held {
            out.invals.push(Inval {
                parent,
                name,
                child: ino,
                gone,
            });
        }
    }

    /// The directory's listing, shared while it does not change.
    fn listing(&mut self, ino: u64) -> Result<Arc<[DirEntry]>, i32> {
        let inode = self.inodes.get_mut(&ino).ok_or(libc::ENOENT)?;
        let current = inode.current;
        let Kind::Dir {
            parent,
            dir,
            children,
            listing,
            ..
        } = &mut inode.kind
        else {
            return Err(libc::ENOTDIR);
        };
        if let Some(shared) = listing {
            return Ok(Arc::clone(shared));
        }
        let dots = [(".", ino), ("..", *parent)];
        let mut entries: Vec<DirEntry> = dots
            .into_iter()
            .map(|(name, ino)| DirEntry {
                ino,
                kind: NodeKind::Dir,
                name: name.to_owned(),
            })
            .collect();
        if current {
            entries.extend(dir.entries().into_iter().map(|(name, kind)| DirEntry {
                ino: children.get(name.as_str()).copied().unwrap_or(UNKNOWN_INO),
                kind,
                name,
            }));
        }
        let entries: Arc<[DirEntry]> = entries.into();
        if current {
            *listing = Some(Arc::clone(&entries));
        }
        Ok(entries)
    }
}

impl Core {
    pub(crate) fn new(root: Arc<dyn Dir>) -> Core {
        let root_inode = Inode::new(
            Kind::Dir {
                parent: ROOT,
                dir: root,
                children: HashMap::new(),
                fresh: 0,
                listing: None,
            },
            None,
        );
        Core {
            tree: Mutex::new(InodeTable {
                inodes: HashMap::from([(ROOT, root_inode)]),
                next_ino: ROOT + 1,
                next_stamp: 0,
            }),
            writers: Arc::default(),
            listings: Mutex::default(),
            next_fh: AtomicU64::new(1),
            requests: AtomicU64::new(0),
            resolving: Mutex::default(),
        }
    }

    /// Counts one FUSE request (for `Mount::requests`).
    pub(crate) fn note_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn inode_count(&self) -> u64 {
        self.tree.lock().inodes.len() as u64
    }

    /// Looks `name` up in the current tree and counts one kernel reference to the result;
    /// for a volatile name, returns its resolver instead (see `resolve`). Also returns the
    /// names below `parent` to invalidate now (evicted from an open-ended directory).
    pub(crate) fn lookup(&self, parent: u64, name: &OsStr) -> Result<(Found, Vec<Arc<str>>), i32> {
        let name = name.to_str().ok_or(libc::ENOENT)?;
        let (found, evicted) = self.tree.lock().lookup(parent, name)?;
        let found = match found {
            Hit::Inode(view) => Found::Inode(view.attr()),
            Hit::Volatile(resolution) => Found::Volatile(resolution),
        };
        Ok((found, evicted))
    }

    /// Asks the resolver for one answer of a volatile name; `reply` answers the LOOKUP when
    /// it completes, possibly later and from another thread. Call without holding any lock.
    /// An answer becomes its inode (counted once for this LOOKUP) before `reply` runs, so the
    /// kernel never hears of an inode that does not exist yet. Then `unhash` gets the names
    /// whose dentries to drop now (see `answered`).
    pub(crate) fn resolve(self: &Arc<Self>, lookup: Resolution, reply: EntryFn, unhash: UnhashFn) {
        let Resolution {
            parent,
            name,
            resolver,
        } = lookup;
        self.resolving.lock().entry(parent).or_default().pending += 1;
        let core = Arc::clone(self);
        resolver.resolve(Resolved::new(Box::new(move |answer| {
            let answer = answer.map(|bytes| core.tree.lock().insert_volatile(bytes).attr());
            // Hand out the names first: their invalidation waits for the directory lock this
            // LOOKUP holds and applies as soon as the kernel has added the answer's dentry,
            // before the looking-up process can walk to the name again.
            unhash(core.answered(parent, answer.is_ok().then_some(name)));
            reply(answer);
        })));
    }

    /// One volatile lookup below `parent` was answered (`name`, unless it failed). Returns the
    /// names whose dentries the kernel should drop now.
    ///
    /// A dentry the kernel keeps for an answered name (entry TTL 0 only makes it expire; the
    /// kernel drops expired dentries only under memory pressure) costs the next walk a second
    /// resolution: it revalidates the dentry with a LOOKUP, sees another inode, drops the
    /// dentry and looks the name up again. Dropping the dentry after each answer avoids that
    /// and lets the kernel forget the answer's inode as soon as its last user is done. But a
    /// dentry invalidation waits for the directory's lock, which every LOOKUP in progress in
    /// that directory holds (shared) until answered, and new lookups there queue behind the
    /// waiting invalidation: sent while another volatile lookup is pending in the directory,
    /// it would hold up all uncached lookups there until that resolver completes. So names
    /// are collected per directory and handed out only when none is pending there.
    fn answered(&self, parent: u64, name: Option<Arc<str>>) -> Vec<Arc<str>> {
        let mut resolving = self.resolving.lock();
        let Some(dir) = resolving.get_mut(&parent) else {
            return Vec::new();
        };
        dir.pending = dir.pending.saturating_sub(1);
        if let Some(name) = name.filter(|n| !dir.answered.contains(n)) {
            dir.answered.push(name);
        }
        if dir.pending > 0 {
            return Vec::new();
        }
        resolving
            .remove(&parent)
            .map(|dir| dir.answered)
            .unwrap_or_default()
    }

    /// Whether the dentry of `parent`/`name`, handed out by `answered`, may be dropped now:
    /// call right before. If a volatile lookup has started there meanwhile, the name goes
    /// back to wait for it. (One that the kernel has begun but not yet sent us can still
    /// make the invalidation wait for its resolver.)
    pub(crate) fn unhash_now(&self, parent: u64, name: &Arc<str>) -> bool {
        let mut resolving = self.resolving.lock();
        let Some(dir) = resolving.get_mut(&parent) else {
            return true;
        };
        if !dir.answered.contains(name) {
            dir.answered.push(Arc::clone(name));
        }
        false
    }

    /// The kernel dropped `n` references. At zero the inode is freed, current or not: the
    /// kernel holds no dentry, page or fd of it (its poll handles are dead), and the next
    /// lookup of a current name makes a new inode.
    pub(crate) fn forget(&self, ino: u64, n: u64) {
        let mut tree = self.tree.lock();
        let Some(inode) = tree.inodes.get_mut(&ino) else {
            return;
        };
        inode.nlookup = inode.nlookup.saturating_sub(n);
        if inode.nlookup > 0 || ino == ROOT {
            return;
        }
        let place = inode.place.take();
        // A directory the kernel forgot holds no dentries below it either; anything still
        // tracked there (never, in practice) goes the usual way.
        let below = match &mut inode.kind {
            Kind::Dir { children, .. } => std::mem::take(children),
            _ => HashMap::new(),
        };
        for (name, child) in below {
            tree.detach(ino, name, child, true, &mut Published::default());
        }
        if let Some((parent, name)) = place {
            tree.untrack(parent, &name, ino);
        }
        tree.inodes.remove(&ino);
    }

    pub(crate) fn getattr(&self, ino: u64) -> Result<Attr, i32> {
        let view = self.tree.lock().inode(ino)?.view(ino);
        Ok(view.attr())
    }

    /// Only a control node's truncation (shell `>` opens with O_TRUNC) is accepted.
    pub(crate) fn setattr(
        &self,
        ino: u64,
        size: Option<u64>,
        owner_or_mode: bool,
    ) -> Result<Attr, i32> {
        let view = self.tree.lock().inode(ino)?.view(ino);
        match view.kind {
            NodeKind::Control if !owner_or_mode && size.is_none_or(|s| s == 0) => Ok(view.attr()),
            _ => Err(libc::EPERM),
        }
    }

    pub(crate) fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Chunk, i32> {
        let body = match &self.tree.lock().inode(ino)?.kind {
            Kind::File { body, .. } => Arc::clone(body),
            Kind::Dir { .. } => return Err(libc::EISDIR),
            Kind::Control(_) => return Err(libc::EACCES),
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        Ok(body
            .bytes()
            .slice(start..start.saturating_add(size as usize)))
    }

    pub(crate) fn opendir(&self, ino: u64) -> Result<u64, i32> {
        let entries = self.tree.lock().listing(ino)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.listings.lock().insert(fh, entries);
        Ok(fh)
    }

    pub(crate) fn readdir(&self, fh: u64) -> Result<Arc<[DirEntry]>, i32> {
        self.listings.lock().get(&fh).cloned().ok_or(libc::EBADF)
    }

    pub(crate) fn releasedir(&self, fh: u64) {
        self.listings.lock().remove(&fh);
    }

    /// poll(2) readiness: files and directories are always readable, control nodes always
    /// writable; POLLPRI once the inode is no longer current (a newer version exists or the
    /// name is gone), never for a volatile answer. With `kh`, the kernel waits: remember it
    /// to wake after a publish. Also returns older handles to wake now (see `Polls`).
    pub(crate) fn poll(&self, ino: u64, kh: Option<u64>) -> Result<(u32, Vec<u64>), i32> {
        let mut tree = self.tree.lock();
        let inode = tree.inodes.get_mut(&ino).ok_or(libc::ENOENT)?;
        let ready = match inode.kind {
            Kind::Control(_) => libc::POLLOUT,
            _ => libc::POLLIN,
        } as u32;
        if inode.volatile {
            // Never changes, never outdated: nothing to wait for.
            return Ok((ready, Vec::new()));
        }
        if !inode.current {
            return Ok((ready | libc::POLLPRI as u32, Vec::new()));
        }
        let wake = kh.map(|kh| inode.polls.add(kh)).unwrap_or_default();
        Ok((ready, wake))
    }

    /// Poll handles an inode holds (for tests).
    #[cfg(test)]
    pub(crate) fn poll_handles(&self, ino: u64) -> usize {
        self.tree
            .lock()
            .inodes
            .get(&ino)
            .map_or(0, |i| i.polls.len())
    }

    /// Hands the complete lines of one WRITE (at `offset` of the writer's file) to the
    /// node's sink; `reply` answers the request, possibly later and from another thread.
    pub(crate) fn write(&self, ino: u64, writer: Writer, offset: u64, data: &[u8], reply: ReplyFn) {
        self.write_at(ino, writer, offset, data, reply, Instant::now());
    }

    fn write_at(
        &self,
        ino: u64,
        writer: Writer,
        offset: u64,
        data: &[u8],
        reply: ReplyFn,
        now: Instant,
    ) {
        let sink = {
            let tree = self.tree.lock();
            match tree.inode(ino) {
                Ok(Inode {
                    kind: Kind::Control(sink),
                    current: true,
                    ..
                }) => Arc::clone(sink),
                // The control node was removed from the tree: its owner no longer listens.
                Ok(Inode {
                    kind: Kind::Control(_),
                    ..
                }) => return reply(Err(libc::ESTALE)),
                Ok(Inode {
                    kind: Kind::Dir { .. },
                    ..
                }) => return reply(Err(libc::EISDIR)),
                Ok(_) => return reply(Err(libc::EACCES)),
                Err(errno) => return reply(Err(errno)),
            }
        };
        let write = control::Write {
            key: (ino, writer.pid),
            offset,
            data,
            now,
        };
        if let Some((lines, done)) = control::prepare(&self.writers, write, reply, |f| {
            sink.fragment_is_complete(f)
        }) {
            sink.submit(writer, lines, done);
        }
    }

    /// Makes `root` the current tree and returns what the kernel must forget. Compares only
    /// tracked names (never renders); the caller sends the notifications without the lock.
    pub(crate) fn publish(&self, root: Arc<dyn Dir>) -> Published {
        let mut out = Published::default();
        let mut tree = self.tree.lock();
        if let Some(root_inode) = tree.inodes.get_mut(&ROOT) {
            root_inode
                .refresh(Node::Dir(root))
                .expect("the root inode is a directory");
        }
        tree.sync(ROOT, &mut out);
        out
    }
}

#[cfg(test)]
mod tests;
