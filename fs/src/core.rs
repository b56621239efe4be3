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
//!   every name the kernel looked up and has not forgotten, plus current names it forgot
//!   (kept so a current version keeps its inode number). Each child inode matches the node
//!   its name has in the current tree; `publish` restores that after swapping the root.
//!   Volatile names are never tracked: a lookup of one returns its resolver (called by the
//!   adapter without the lock), and each answer becomes a fresh inode that no name leads to.
//! - An inode is "current" while reachable from the root through `children`. A non-current
//!   inode lives only until the kernel forgets it; it stays readable until then. A volatile
//!   answer is never current but never outdated either (poll gives it no POLLPRI): it was
//!   complete when made, and publishes never touch it. It is created already counted once
//!   (the LOOKUP it answers) and freed when the kernel forgets it.
//! - Dentry invalidations are computed under the lock but sent by the caller after it is
//!   released: the kernel takes directory locks for them that a pending lookup may hold.
//!   A lookup counts itself under the same lock that orders it against a publish, and the
//!   kernel applies an invalidation only after a lookup in progress in that directory has
//!   instantiated its dentry, so no stale dentry survives a publish.
//! - The dentry of each answered volatile name is invalidated too (so the next walk looks
//!   the name up once instead of revalidating it first), but only once no volatile lookup is
//!   pending in its directory; see `Core::answered`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::ops::{Deref, Range};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;

use crate::control::{self, ControlSink, ReplyFn, Writer, Writers};
use crate::node::{Body, Dir, Doc, Node, NodeKind};
use crate::volatile::{Resolve, Resolved};

pub(crate) const ROOT: u64 = 1;
/// d_ino reported in listings for names never looked up (libfuse does the same).
const UNKNOWN_INO: u64 = 0xffff_ffff;

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
pub(crate) struct Entry {
    pub ino: u64,
    pub kind: NodeKind,
    pub name: String,
}

/// A byte range of an immutable file version.
pub(crate) struct Chunk {
    bytes: Arc<Vec<u8>>,
    range: Range<usize>,
}

impl Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[self.range.clone()]
    }
}

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
    tree: Mutex<Tree>,
    writers: Arc<Writers>,
    /// Directory listings snapshotted at opendir, by file handle, so that offsets stay
    /// meaningful however many readdir calls one listing takes.
    listings: Mutex<HashMap<u64, Arc<[Entry]>>>,
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

struct Tree {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
}

struct Inode {
    /// Lookups the kernel has not forgotten yet.
    nlookup: u64,
    current: bool,
    /// An answer of a volatile name: not current, yet never outdated.
    volatile: bool,
    created: SystemTime,
    /// Poll handles (kernel `kh`) to wake when this inode stops being current.
    polls: Vec<u64>,
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
    },
    Control(Arc<dyn ControlSink>),
}

impl Inode {
    fn new(kind: Kind) -> Inode {
        Inode {
            nlookup: 0,
            current: true,
            volatile: false,
            created: SystemTime::now(),
            polls: Vec::new(),
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
            (Kind::Dir { dir, .. }, Node::Dir(new)) => {
                *dir = new;
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
    fn view(&self, ino: u64) -> View {
        View {
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

/// What `Tree::lookup` found (the attributes are made outside the lock).
enum Hit {
    Inode(View),
    Volatile(Resolution),
}

struct View {
    ino: u64,
    kind: NodeKind,
    created: SystemTime,
    body: Option<Arc<Body>>,
}

impl View {
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

impl Tree {
    fn inode(&self, ino: u64) -> Result<&Inode, i32> {
        self.inodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn children(&self, ino: u64) -> Option<&HashMap<Arc<str>, u64>> {
        match &self.inodes.get(&ino)?.kind {
            Kind::Dir { children, .. } => Some(children),
            _ => None,
        }
    }

    fn children_mut(&mut self, ino: u64) -> Option<&mut HashMap<Arc<str>, u64>> {
        match &mut self.inodes.get_mut(&ino)?.kind {
            Kind::Dir { children, .. } => Some(children),
            _ => None,
        }
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

    fn lookup(&mut self, parent: u64, name: &str) -> Result<Hit, i32> {
        let node = self.live_dir(parent)?.get(name).ok_or(libc::ENOENT)?;
        let known = self.children(parent).and_then(|c| c.get(name)).copied();
        if let Node::Volatile(resolver) = node {
            // The name was something else until the owner's tree changed without a publish:
            // stop tracking it (the kernel holds no valid dentry for it, as below).
            if let Some(ino) = known {
                self.detach(parent, name.into(), ino, false, &mut Published::default());
            }
            return Ok(Hit::Volatile(Resolution {
                parent,
                name: name.into(),
                resolver,
            }));
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
        let inode = self.inodes.get_mut(&ino).expect("just found or inserted");
        inode.nlookup += 1;
        Ok(Hit::Inode(inode.view(ino)))
    }

    /// A fresh file inode for one answer of a volatile name, counted for the LOOKUP it
    /// answers and tracked by no directory.
    fn insert_volatile(&mut self, bytes: Vec<u8>) -> View {
        let ino = self.next_ino;
        self.next_ino += 1;
        let mut inode = Inode::new(Kind::File {
            version: 0,
            body: Arc::new(Body::from(Doc::ready(0, bytes))),
        });
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
            },
            Node::Control(sink) => Kind::Control(sink),
            Node::Volatile(_) => unreachable!("volatile names are never tracked"),
        };
        self.inodes.insert(ino, Inode::new(kind));
        if let Some(children) = self.children_mut(parent) {
            children.insert(name.into(), ino);
        }
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
        if let Some(children) = self.children_mut(parent) {
            children.remove(&name);
        }
        let Some(inode) = self.inodes.get_mut(&ino) else {
            return;
        };
        inode.current = false;
        out.polls.append(&mut inode.polls);
        let below = match &mut inode.kind {
            Kind::Dir { children, .. } => std::mem::take(children),
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

    fn listing(&self, ino: u64) -> Result<Vec<Entry>, i32> {
        let inode = self.inode(ino)?;
        let Kind::Dir {
            parent,
            dir,
            children,
        } = &inode.kind
        else {
            return Err(libc::ENOTDIR);
        };
        let dots = [(".", ino), ("..", *parent)];
        let mut entries: Vec<Entry> = dots
            .into_iter()
            .map(|(name, ino)| Entry {
                ino,
                kind: NodeKind::Dir,
                name: name.to_owned(),
            })
            .collect();
        if inode.current {
            entries.extend(dir.entries().into_iter().map(|(name, kind)| Entry {
                ino: children.get(name.as_str()).copied().unwrap_or(UNKNOWN_INO),
                kind,
                name,
            }));
        }
        Ok(entries)
    }
}

impl Core {
    pub(crate) fn new(root: Arc<dyn Dir>) -> Core {
        let root_inode = Inode::new(Kind::Dir {
            parent: ROOT,
            dir: root,
            children: HashMap::new(),
        });
        Core {
            tree: Mutex::new(Tree {
                inodes: HashMap::from([(ROOT, root_inode)]),
                next_ino: ROOT + 1,
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
    /// for a volatile name, returns its resolver instead (see `resolve`).
    pub(crate) fn lookup(&self, parent: u64, name: &OsStr) -> Result<Found, i32> {
        let name = name.to_str().ok_or(libc::ENOENT)?;
        let found = self.tree.lock().lookup(parent, name)?;
        Ok(match found {
            Hit::Inode(view) => Found::Inode(view.attr()),
            Hit::Volatile(resolution) => Found::Volatile(resolution),
        })
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

    /// The kernel dropped `n` references. Non-current inodes are freed at zero; current ones
    /// stay (with their bytes) so the version keeps its inode number until outdated.
    pub(crate) fn forget(&self, ino: u64, n: u64) {
        let mut tree = self.tree.lock();
        let Some(inode) = tree.inodes.get_mut(&ino) else {
            return;
        };
        inode.nlookup = inode.nlookup.saturating_sub(n);
        if inode.nlookup == 0 {
            // No fd can be open on an inode the kernel forgot: its poll handles are dead.
            inode.polls.clear();
            if !inode.current {
                tree.inodes.remove(&ino);
            }
        }
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
        let bytes = Arc::clone(body.bytes());
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let end = start.saturating_add(size as usize).min(bytes.len());
        Ok(Chunk {
            bytes,
            range: start..end,
        })
    }

    pub(crate) fn opendir(&self, ino: u64) -> Result<u64, i32> {
        let entries = self.tree.lock().listing(ino)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.listings.lock().insert(fh, entries.into());
        Ok(fh)
    }

    pub(crate) fn readdir(&self, fh: u64) -> Result<Arc<[Entry]>, i32> {
        self.listings.lock().get(&fh).cloned().ok_or(libc::EBADF)
    }

    pub(crate) fn releasedir(&self, fh: u64) {
        self.listings.lock().remove(&fh);
    }

    /// poll(2) readiness: files and directories are always readable, control nodes always
    /// writable; POLLPRI once the inode is no longer current (a newer version exists or the
    /// name is gone), never for a volatile answer. With `kh`, the kernel waits: remember it
    /// to wake after a publish.
    pub(crate) fn poll(&self, ino: u64, kh: Option<u64>) -> Result<u32, i32> {
        let mut tree = self.tree.lock();
        let inode = tree.inodes.get_mut(&ino).ok_or(libc::ENOENT)?;
        let ready = match inode.kind {
            Kind::Control(_) => libc::POLLOUT,
            _ => libc::POLLIN,
        } as u32;
        if inode.volatile {
            // Never changes, never outdated: nothing to wait for.
            return Ok(ready);
        }
        if !inode.current {
            return Ok(ready | libc::POLLPRI as u32);
        }
        if let Some(kh) = kh.filter(|kh| !inode.polls.contains(kh)) {
            inode.polls.push(kh);
        }
        Ok(ready)
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
