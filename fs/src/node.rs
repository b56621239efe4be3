//! The tree an owner publishes: named nodes that are versioned documents, directories,
//! control (write) nodes or volatile files (resolved anew by each lookup), plus `MapDir`, a
//! ready-made directory, `Parts`, a document made of a small head and a slice of bytes other
//! documents share, and `Body`, the render-once bytes of one document version.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::control::ControlSink;
use crate::volatile::Resolve;

/// One name in a published tree.
#[derive(Clone)]
pub enum Node {
    /// A regular, read-only file: one version of a document.
    File(Doc),
    /// A directory; its listing and lookups follow whatever tree is current.
    Dir(Arc<dyn Dir>),
    /// A write-only node whose written lines go to the sink.
    Control(Arc<dyn ControlSink>),
    /// A read-only file whose bytes the resolver produces anew for every lookup of the name
    /// (see `Resolve`). Listed as `NodeKind::File`.
    Volatile(Arc<dyn Resolve>),
}

impl Node {
    pub fn kind(&self) -> NodeKind {
        match self {
            Node::File(_) | Node::Volatile(_) => NodeKind::File,
            Node::Dir(_) => NodeKind::Dir,
            Node::Control(_) => NodeKind::Control,
        }
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::File(doc) => f.debug_tuple("File").field(doc).finish(),
            Node::Dir(_) => f.write_str("Dir"),
            Node::Control(_) => f.write_str("Control"),
            Node::Volatile(_) => f.write_str("Volatile"),
        }
    }
}

/// What a node is, without its content (for listings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeKind {
    File,
    Dir,
    Control,
}

impl NodeKind {
    /// Permission bits the kernel enforces (`default_permissions`): documents are readable,
    /// directories searchable, control nodes writable, by everyone.
    pub(crate) fn perm(self) -> u16 {
        match self {
            NodeKind::File => 0o444,
            NodeKind::Dir => 0o555,
            NodeKind::Control => 0o222,
        }
    }
}

type Render = Arc<dyn Fn() -> Parts + Send + Sync>;

/// The bytes of a document: `head`, then `shared[range]`. Many documents can show slices of
/// one shared buffer (e.g. every suffix of a log) while each holds only its own head.
#[derive(Clone)]
pub struct Parts {
    pub head: Vec<u8>,
    pub shared: Arc<Vec<u8>>,
    pub range: Range<usize>,
}

impl Parts {
    /// Bytes of the document's own, nothing shared.
    pub fn owned(bytes: Vec<u8>) -> Parts {
        Parts::whole(Arc::new(bytes))
    }

    /// All of `shared`.
    pub fn whole(shared: Arc<Vec<u8>>) -> Parts {
        let range = 0..shared.len();
        Parts {
            head: Vec::new(),
            shared,
            range,
        }
    }

    pub fn len(&self) -> usize {
        self.head.len() + self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The document's bytes, copied out.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        out.extend_from_slice(&self.head);
        out.extend_from_slice(&self.shared[self.range.clone()]);
        out
    }

    /// The bytes in `at` (clamped to the document): borrowed when they lie in one part.
    pub(crate) fn slice(&self, at: Range<usize>) -> Slice {
        let end = at.end.min(self.len());
        let start = at.start.min(end);
        let h = self.head.len();
        if start >= h {
            let (a, b) = (self.range.start + start - h, self.range.start + end - h);
            return Slice::Shared(Arc::clone(&self.shared), a..b);
        }
        let mut out = self.head[start..end.min(h)].to_vec();
        if end > h {
            out.extend_from_slice(&self.shared[self.range.start..self.range.start + end - h]);
        }
        Slice::Owned(out)
    }
}

impl fmt::Debug for Parts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parts")
            .field("head", &self.head.len())
            .field("shared", &self.range)
            .finish()
    }
}

/// A byte range of a document, as a read answers it.
pub(crate) enum Slice {
    Shared(Arc<Vec<u8>>, Range<usize>),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Slice {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Slice::Shared(bytes, range) => &bytes[range.clone()],
            Slice::Owned(bytes) => bytes,
        }
    }
}

/// One version of a file. Same (path, version) must always mean the same bytes — the owner
/// guarantees it; the filesystem relies on it to let the kernel cache pages for good.
#[derive(Clone)]
pub struct Doc {
    version: u64,
    source: Source,
}

#[derive(Clone)]
enum Source {
    Ready(Parts),
    Lazy(Render),
}

impl Doc {
    /// A document rendered lazily: `render` runs on the first lookup of this version, at most
    /// once per (path, version) while that version's inode lives, never during a publish.
    pub fn new(version: u64, render: impl Fn() -> Vec<u8> + Send + Sync + 'static) -> Doc {
        Doc::parts(version, move || Parts::owned(render()))
    }

    /// Like `new`, for a document whose bytes are (partly) shared with others.
    pub fn parts(version: u64, render: impl Fn() -> Parts + Send + Sync + 'static) -> Doc {
        Doc {
            version,
            source: Source::Lazy(Arc::new(render)),
        }
    }

    /// A document whose bytes are already known.
    pub fn ready(version: u64, bytes: Vec<u8>) -> Doc {
        Doc {
            version,
            source: Source::Ready(Parts::owned(bytes)),
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// The document's bytes, rendered now (for owners' tests and tools; the
    /// filesystem itself renders each version once, through its inode).
    pub fn render(&self) -> Vec<u8> {
        match &self.source {
            Source::Ready(parts) => parts.to_vec(),
            Source::Lazy(render) => render().to_vec(),
        }
    }
}

impl fmt::Debug for Doc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Doc");
        s.field("version", &self.version);
        match &self.source {
            Source::Ready(parts) => s.field("len", &parts.len()),
            Source::Lazy(_) => s.field("len", &"lazy"),
        };
        s.finish()
    }
}

/// A directory of a published tree.
///
/// Both methods are called with the filesystem's state lock held, from FUSE request threads
/// and from `Publisher::publish`: they must be cheap, must not block and must not touch the
/// mount. A `Dir` should be an immutable snapshot; changes are announced by publishing.
/// (`get` returning `Node::Volatile` only hands out the resolver: it runs after the lock is
/// released.)
pub trait Dir: Send + Sync + 'static {
    fn get(&self, name: &str) -> Option<Node>;
    /// The readdir listing, in any order.
    fn entries(&self) -> Vec<(String, NodeKind)>;
    /// Whether `get` answers names beyond any listing, as many as are asked for (one per
    /// number, per query...). The filesystem then keeps only the names looked up most
    /// recently (and those still open) and has the kernel forget the others, so that
    /// lookups of a million distinct names cost bounded memory and publishes stay cheap.
    fn open_ended(&self) -> bool {
        false
    }
}

/// A directory held as a sorted map: the simple way to build a tree to publish.
#[derive(Clone, Debug, Default)]
pub struct MapDir(BTreeMap<String, Node>);

impl MapDir {
    pub fn new() -> MapDir {
        MapDir::default()
    }

    /// Builder form of `insert`.
    pub fn with(mut self, name: impl Into<String>, node: Node) -> MapDir {
        self.insert(name, node);
        self
    }

    /// Adds or replaces a name; returns the node it replaced.
    pub fn insert(&mut self, name: impl Into<String>, node: Node) -> Option<Node> {
        self.0.insert(name.into(), node)
    }
}

impl Dir for MapDir {
    fn get(&self, name: &str) -> Option<Node> {
        self.0.get(name).cloned()
    }

    fn entries(&self) -> Vec<(String, NodeKind)> {
        self.0
            .iter()
            .map(|(n, node)| (n.clone(), node.kind()))
            .collect()
    }
}

/// The bytes of one (path, version): rendered at most once, on first use, then immutable.
pub(crate) struct Body {
    bytes: OnceLock<Parts>,
    /// Present until rendered; dropped afterwards so whatever it captured is freed.
    render: Mutex<Option<Render>>,
}

impl Body {
    /// The bytes, rendering them now if this is the first use. Concurrent callers wait for
    /// the one render instead of running their own.
    pub(crate) fn bytes(&self) -> &Parts {
        self.bytes.get_or_init(|| {
            let mut slot = self.render.lock();
            let render = slot
                .as_ref()
                .expect("an unrendered body keeps its renderer");
            let bytes = render();
            *slot = None;
            bytes
        })
    }
}

impl From<Doc> for Body {
    fn from(doc: Doc) -> Body {
        match doc.source {
            Source::Ready(parts) => Body {
                bytes: OnceLock::from(parts),
                render: Mutex::new(None),
            },
            Source::Lazy(render) => Body {
                bytes: OnceLock::new(),
                render: Mutex::new(Some(render)),
            },
        }
    }
}
