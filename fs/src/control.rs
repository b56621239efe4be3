//! Control (write) nodes: turning WRITE requests into lines for a `ControlSink`, buffering
//! partial lines per writer, and turning the sink's verdict into the write(2) result.
//!
//! In no-open mode every write arrives with file handle 0, so a writer is identified by
//! (inode, pid of the writing thread). A write(2) blocks its thread until answered, so one
//! writer never has two writes in flight and its buffer needs no ordering beyond that.
//!
//! The rule for refusals: a refused WRITE leaves the writer's pending bytes exactly as they
//! were, so retrying the same bytes gives the same outcome until they are accepted. A writer
//! that buffered the head of a line (`["b",2`, accepted: the writer was told it was written)
//! and whose end (`]\n`) was refused gets the whole line again when it retries the end. A
//! retry is recognised as the same writer writing at the same offset with the same leading
//! bytes; anything else means the writer gave up on the refused line, whose head is then
//! dropped, and the new bytes stand alone.
//!
//! No-open files are written through the page cache, and the kernel splits one write(2) into
//! several WRITEs: the part up to the first page boundary when it starts inside a page, then
//! the rest. If a later WRITE fails, the write(2) returns the bytes the earlier ones accepted:
//! the writer never sees that WRITE's errno, only a short count, and retries from there. That
//! retry is a retry of the refused WRITE (same offset, same bytes), so it rejoins the head the
//! first part buffered and is tried again: same outcome, or accepted.
//!
//! Outcomes the sink cannot know (`Completion::unknown`: the line may have been acted on, e.g.
//! the agent did not answer in time) must not be tried again by an automatic retry of a short
//! count the writer was given instead of the errno: that retry gets the errno once, untried.
//! Whether the writer saw the errno itself is known from the offset: a WRITE that is not the
//! first of its write(2) starts on a page boundary past 0.
//!
//! Bounds: a partial line longer than `MAX_FRAGMENT` is refused with EMSGSIZE; all writers of
//! a mount together keep at most `MAX_WRITERS` states and `MAX_PENDING` bytes (past that a
//! partial line is not taken: EAGAIN, or a short count covering the complete lines before it);
//! a writer's state is dropped after `FRAGMENT_IDLE` without a write.
//!
//! Control nodes are mode 0222 and READ answers EACCES, so other users cannot read them.
//! Root bypasses modes, and the kernel answers its reads of the size-0 file with EOF itself.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::debug;

/// A trailing partial line longer than this is refused with EMSGSIZE.
pub(crate) const MAX_FRAGMENT: usize = 64 * 1024;
/// A writer's partial line is dropped after this long without a write (no-open mode never
/// tells us about close, so this is the only bound on abandoned fragments).
pub(crate) const FRAGMENT_IDLE: Duration = Duration::from_secs(60);
/// Writers (of all control nodes of a mount) that may have state at once.
pub(crate) const MAX_WRITERS: usize = 4096;
/// Bytes all writers' states may hold together.
pub(crate) const MAX_PENDING: usize = 16 << 20;
/// How many leading bytes of a refused WRITE are kept to recognise its retry.
const RETRY_MATCH: usize = 4096;
/// The kernel splits writes at page boundaries (4 KiB on every platform FUSE runs here).
const PAGE: u64 = 4096;

/// Who wrote, as the kernel reports it for the WRITE request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Writer {
    /// The writing thread's id (the process id for single-threaded writers).
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Receives what is written to a control node.
pub trait ControlSink: Send + Sync + 'static {
    /// Complete lines (newline stripped, empty lines skipped) from one write(2), in order.
    /// The sink must call `done` exactly once, possibly from another thread, within bounded
    /// time: it is a FUSE request held open, and the writer cannot be interrupted meanwhile.
    fn submit(&self, writer: Writer, lines: Vec<Vec<u8>>, done: Completion);

    /// A trailing fragment without '\n' at the end of a write: return true if it is already a
    /// whole line (e.g. a complete JSON value) so it is submitted now instead of buffered.
    fn fragment_is_complete(&self, _fragment: &[u8]) -> bool {
        false
    }
}

/// Answers the WRITE request: `Ok(bytes accepted)` or `Err(errno)`.
pub(crate) type ReplyFn = Box<dyn FnOnce(Result<u32, i32>) + Send>;

/// Identifies one writer of one control node.
pub(crate) type WriterKey = (u64, u32);

/// The pending answer to one write(2) on a control node. Dropping it unanswered answers EIO.
pub struct Completion {
    reply: Option<ReplyFn>,
    /// Bytes this WRITE answers for when every line is accepted.
    len: u32,
    /// For each submitted line: bytes of this WRITE up to and including its end.
    ends: Vec<u32>,
    writers: Arc<Writers>,
    key: WriterKey,
    at: Instant,
    offset: u64,
    /// The leading bytes of this WRITE from the end of each possible accepted prefix on
    /// (enough to recognise a retry): the first `RETRY_MATCH` bytes after each line end.
    data: Vec<u8>,
    /// The writer's partial line before this WRITE (the head of line 1), put back if line 1
    /// is refused.
    head: Vec<u8>,
    /// The trailing partial line, buffered only if every line is accepted.
    partial: Vec<u8>,
}

impl Completion {
    /// Every line was accepted: the write succeeds in full.
    pub fn accept_all(mut self) {
        if !self.partial.is_empty() {
            let partial = Pending::Partial(std::mem::take(&mut self.partial));
            self.writers.put(self.key, partial, self.at);
        }
        self.answer(Ok(self.len));
    }

    /// `accepted` leading lines were accepted (acted on); the next one was certainly not, and
    /// fails with `errno`; the rest were not tried.
    ///
    /// With `accepted == 0` the write fails with `errno` and the writer's pending bytes stay as
    /// they were before it. Otherwise it is a short write that ends after line `accepted`; the
    /// writer retries the rest and meets the line's outcome again. A non-positive `errno`
    /// becomes EIO.
    pub fn fail(self, accepted: usize, errno: i32) {
        self.refuse(accepted, errno, false);
    }

    /// Like `fail`, but line `accepted + 1` may have been acted on: its outcome is unknown
    /// (e.g. the sink's own upstream did not answer in time). A writer that did not see
    /// `errno` itself (it got a short count) gets it on its retry, without the line being
    /// tried again; only a retry after that tries it again.
    pub fn unknown(self, accepted: usize, errno: i32) {
        self.refuse(accepted, errno, true);
    }

    fn refuse(mut self, accepted: usize, errno: i32, unknown: bool) {
        let errno = if errno > 0 { errno } else { libc::EIO };
        if accepted >= self.ends.len() {
            return self.accept_all();
        }
        let result = if accepted > 0 {
            // A short count: the writer's retry of the rest comes next, unseen errno and all.
            let from = self.ends[accepted - 1];
            if unknown {
                let refused = Pending::Refused {
                    head: Vec::new(),
                    offset: self.offset + u64::from(from),
                    data: self.data_from(from),
                    once: Some(errno),
                };
                self.writers.put(self.key, refused, self.at);
            }
            Ok(from)
        } else {
            // May be a later piece of its write(2): then the writer sees a short count.
            let unseen = self.offset > 0 && self.offset.is_multiple_of(PAGE);
            let once = (unknown && unseen).then_some(errno);
            if !self.head.is_empty() || once.is_some() {
                let refused = Pending::Refused {
                    head: std::mem::take(&mut self.head),
                    offset: self.offset,
                    data: self.data_from(0),
                    once,
                };
                self.writers.put(self.key, refused, self.at);
            }
            Err(errno)
        };
        self.answer(result);
    }

    /// The first `RETRY_MATCH` bytes of this WRITE from byte `from` on.
    fn data_from(&self, from: u32) -> Vec<u8> {
        let from = (from as usize).min(self.data.len());
        let to = from.saturating_add(RETRY_MATCH).min(self.data.len());
        self.data[from..to].to_vec()
    }

    fn answer(&mut self, result: Result<u32, i32>) {
        if let Some(reply) = self.reply.take() {
            reply(result);
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.answer(Err(libc::EIO));
    }
}

impl fmt::Debug for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("len", &self.len)
            .field("lines", &self.ends.len())
            .finish_non_exhaustive()
    }
}

/// What a writer left behind.
enum Pending {
    /// The head of an unfinished line, accepted (the writer was told it was written).
    Partial(Vec<u8>),
    /// A WRITE at `offset` starting with `data` was refused; `head` is the writer's partial
    /// line as it was before it. With `once`, the retry gets that errno without a try.
    Refused {
        head: Vec<u8>,
        offset: u64,
        data: Vec<u8>,
        once: Option<i32>,
    },
}

impl Pending {
    fn size(&self) -> usize {
        match self {
            Pending::Partial(bytes) => bytes.len(),
            Pending::Refused { head, data, .. } => head.len() + data.len(),
        }
    }
}

/// Per-writer state of all control nodes of a mount, bounded (see the module doc).
#[derive(Default)]
pub(crate) struct Writers(Mutex<Table>);

#[derive(Default)]
struct Table {
    map: HashMap<WriterKey, (Pending, Instant)>,
    /// Sum of the states' sizes.
    bytes: usize,
    /// When idle states were last dropped.
    swept: Option<Instant>,
}

impl Table {
    /// Drops idle states, at most every quarter of `FRAGMENT_IDLE` unless `force`d.
    fn sweep(&mut self, now: Instant, force: bool) {
        let due = self
            .swept
            .is_none_or(|at| now.duration_since(at) >= FRAGMENT_IDLE / 4);
        if !(due || force) {
            return;
        }
        self.swept = Some(now);
        let mut freed = 0;
        self.map.retain(|_, (pending, at)| {
            let keep = now.duration_since(*at) < FRAGMENT_IDLE;
            if !keep {
                freed += pending.size();
            }
            keep
        });
        self.bytes -= freed;
    }

    fn has_room(&self, bytes: usize) -> bool {
        self.map.len() < MAX_WRITERS && self.bytes + bytes <= MAX_PENDING
    }
}

impl Writers {
    /// Removes and returns the writer's state (none once idle for `FRAGMENT_IDLE`).
    fn take(&self, key: WriterKey, now: Instant) -> Option<Pending> {
        let mut table = self.0.lock();
        table.sweep(now, false);
        let (pending, at) = table.map.remove(&key)?;
        table.bytes -= pending.size();
        (now.duration_since(at) < FRAGMENT_IDLE).then_some(pending)
    }

    /// Whether a new state of `bytes` fits (after dropping idle ones if needed).
    fn has_room(&self, bytes: usize, now: Instant) -> bool {
        let mut table = self.0.lock();
        if table.has_room(bytes) {
            return true;
        }
        table.sweep(now, true);
        table.has_room(bytes)
    }

    /// Stores the writer's state. A refusal puts back what the writer had (its own room), so
    /// only new partial lines are checked against the bounds, by `has_room`, beforehand.
    fn put(&self, key: WriterKey, pending: Pending, at: Instant) {
        let mut table = self.0.lock();
        table.bytes += pending.size();
        if let Some((old, _)) = table.map.insert(key, (pending, at)) {
            table.bytes -= old.size();
        }
    }

    /// States held (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.lock().map.len()
    }
}

/// One WRITE to a control node, as the kernel sent it.
pub(crate) struct Write<'a> {
    pub key: WriterKey,
    pub offset: u64,
    pub data: &'a [u8],
    pub now: Instant,
}

/// Whether `data` retries a refused WRITE whose leading bytes were `seen`.
fn retries(seen: &[u8], data: &[u8]) -> bool {
    let n = seen.len().min(data.len());
    seen[..n] == data[..n]
}

/// Splits the WRITE, prefixed with the writer's buffered partial line, into complete lines
/// and returns them with the completion for the sink. Writes with no complete line, retries
/// answered from an unknown outcome, and refused fragments are answered here and yield
/// `None`. `is_complete` decides whether a trailing fragment is submitted now or buffered.
pub(crate) fn prepare(
    writers: &Arc<Writers>,
    write: Write<'_>,
    reply: ReplyFn,
    is_complete: impl FnOnce(&[u8]) -> bool,
) -> Option<(Vec<Vec<u8>>, Completion)> {
    let Write {
        key,
        offset,
        data,
        now,
    } = write;
    let head = match writers.take(key, now) {
        Some(Pending::Partial(bytes)) => bytes,
        Some(Pending::Refused {
            head,
            offset: at,
            data: seen,
            once,
        }) if at == offset && retries(&seen, data) => {
            if let Some(errno) = once {
                // The writer has not seen this errno (it got a short count) and the line may
                // have been acted on: tell it before anything is tried again.
                if !head.is_empty() {
                    let refused = Pending::Refused {
                        head,
                        offset,
                        data: seen,
                        once: None,
                    };
                    writers.put(key, refused, now);
                }
                reply(Err(errno));
                return None;
            }
            head
        }
        Some(Pending::Refused { head, .. }) => {
            if !head.is_empty() {
                debug!(
                    writer = key.1,
                    "control node: the writer moved on from a refused line; its {} byte head is dropped",
                    head.len()
                );
            }
            Vec::new()
        }
        None => Vec::new(),
    };
    let mut len = u32::try_from(data.len()).expect("a FUSE write is far below 4 GiB");
    let mut lines = Vec::new();
    let mut ends = Vec::new();
    let mut pending = head.clone();
    let mut start = 0;
    while let Some(pos) = data[start..].iter().position(|&b| b == b'\n') {
        let end = start + pos;
        pending.extend_from_slice(&data[start..end]);
        let line = std::mem::take(&mut pending);
        if !line.is_empty() {
            lines.push(line);
            ends.push(end as u32 + 1);
        }
        start = end + 1;
    }
    pending.extend_from_slice(&data[start..]);

    if !pending.is_empty() {
        let fits = pending.len() <= MAX_FRAGMENT;
        if fits && is_complete(&pending) {
            lines.push(std::mem::take(&mut pending));
            ends.push(len);
        } else {
            let refused = if !fits {
                Some(libc::EMSGSIZE)
            } else if !writers.has_room(pending.len(), now) {
                Some(libc::EAGAIN)
            } else {
                None
            };
            if let Some(errno) = refused {
                if lines.is_empty() {
                    if !head.is_empty() {
                        let refused = Pending::Refused {
                            head,
                            offset,
                            data: data[..data.len().min(RETRY_MATCH)].to_vec(),
                            once: None,
                        };
                        writers.put(key, refused, now);
                    }
                    reply(Err(errno));
                    return None;
                }
                // Take the complete lines only; the writer sends the rest again and meets
                // the error then.
                pending.clear();
                len = *ends.last().expect("lines have ends");
            }
        }
    }
    // Enough of the WRITE to recognise a retry from the end of any accepted prefix.
    let keep = ends
        .iter()
        .rev()
        .nth(1)
        .map_or(0, |&e| e as usize)
        .saturating_add(RETRY_MATCH)
        .min(data.len());
    let done = Completion {
        reply: Some(reply),
        len,
        data: data[..keep].to_vec(),
        ends,
        writers: Arc::clone(writers),
        key,
        at: now,
        offset,
        head,
        partial: pending,
    };
    if lines.is_empty() {
        done.accept_all();
        return None;
    }
    Some((lines, done))
}
