//! Control (write) nodes: turning WRITE requests into lines for a `ControlSink`, buffering
//! partial lines per writer, and turning the sink's verdict into the write(2) result.
//!
//! In no-open mode every write arrives with file handle 0, so a writer is identified by
//! (inode, pid of the writing thread). A write(2) blocks its thread until answered, so one
//! writer never has two writes in flight and its buffer needs no ordering beyond that.
//!
//! No-open files are written through the page cache, and the kernel splits one write(2) into
//! several WRITEs at page boundaries: a line may start in one WRITE and end in the next, and
//! if a later WRITE fails the write(2) returns the bytes the earlier ones accepted. So a
//! rejected line that began in an earlier WRITE may have had its head reported as written;
//! the writer then retries from its tail. That retry is recognised (same writer, same offset,
//! same leading bytes) and gets the line's errno instead of being taken as a new line.
//!
//! Control nodes are mode 0222 and READ answers EACCES, so other users cannot read them.
//! Root bypasses modes, and the kernel answers its reads of the size-0 file with EOF itself.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A trailing partial line longer than this is refused with EMSGSIZE.
pub(crate) const MAX_FRAGMENT: usize = 64 * 1024;
/// A writer's partial line is dropped after this long without a write (no-open mode never
/// tells us about close, so this is the only bound on abandoned fragments).
pub(crate) const FRAGMENT_IDLE: Duration = Duration::from_secs(60);

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
    /// Length of this WRITE.
    len: u32,
    /// For each submitted line: bytes of this WRITE up to and including its end.
    ends: Vec<u32>,
    writers: Arc<Writers>,
    key: WriterKey,
    at: Instant,
    /// The trailing partial line, buffered only if every line is accepted.
    partial: Vec<u8>,
    /// If line 1 began in an earlier WRITE: this WRITE's offset and its bytes of line 1.
    joined: Option<(u64, Vec<u8>)>,
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

    /// `accepted` leading lines were accepted (acted on), then `errno` for the rest.
    ///
    /// With `accepted == 0` the write fails with `errno`. Otherwise it is a short write that
    /// ends after line `accepted`; the writer retries the rest and then gets `errno`.
    /// Nothing of this write stays buffered. A non-positive `errno` becomes EIO.
    pub fn fail(mut self, accepted: usize, errno: i32) {
        let errno = if errno > 0 { errno } else { libc::EIO };
        let result = match accepted {
            0 => {
                if let Some((offset, tail)) = self.joined.take() {
                    let rejected = Pending::Rejected {
                        offset,
                        tail,
                        errno,
                    };
                    self.writers.put(self.key, rejected, self.at);
                }
                Err(errno)
            }
            k if k < self.ends.len() => Ok(self.ends[k - 1]),
            _ => return self.accept_all(),
        };
        self.answer(result);
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

/// What a writer left behind: a partial line, or a rejected line whose tail may be retried.
enum Pending {
    Partial(Vec<u8>),
    Rejected {
        offset: u64,
        tail: Vec<u8>,
        errno: i32,
    },
}

/// Per-writer state of all control nodes.
#[derive(Default)]
pub(crate) struct Writers(Mutex<HashMap<WriterKey, (Pending, Instant)>>);

impl Writers {
    /// Removes and returns the writer's state; drops everyone's idle state on the way.
    fn take(&self, key: WriterKey, now: Instant) -> Option<Pending> {
        let mut map = self.0.lock();
        map.retain(|_, (_, at)| now.duration_since(*at) < FRAGMENT_IDLE);
        map.remove(&key).map(|(pending, _)| pending)
    }

    fn put(&self, key: WriterKey, pending: Pending, at: Instant) {
        self.0.lock().insert(key, (pending, at));
    }
}

/// One WRITE to a control node, as the kernel sent it.
pub(crate) struct Write<'a> {
    pub key: WriterKey,
    pub offset: u64,
    pub data: &'a [u8],
    pub now: Instant,
}

/// Splits the WRITE, prefixed with the writer's buffered partial line, into complete lines
/// and returns them with the completion for the sink. Writes with no complete line, retries
/// of a rejected line and oversized fragments are answered here and yield `None`.
/// `is_complete` decides whether a trailing fragment is submitted now or buffered.
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
    let prefix = match writers.take(key, now) {
        Some(Pending::Partial(bytes)) => bytes,
        Some(Pending::Rejected {
            offset: at,
            tail,
            errno,
        }) if at == offset && data.starts_with(&tail) => {
            reply(Err(errno));
            return None;
        }
        _ => Vec::new(),
    };
    let joined = !prefix.is_empty();
    let len = u32::try_from(data.len()).expect("a FUSE write is far below 4 GiB");
    let mut lines = Vec::new();
    let mut ends = Vec::new();
    let mut pending = prefix;
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

    if pending.len() > MAX_FRAGMENT {
        if joined {
            let rejected = Pending::Rejected {
                offset,
                tail: data.to_vec(),
                errno: libc::EMSGSIZE,
            };
            writers.put(key, rejected, now);
        }
        reply(Err(libc::EMSGSIZE));
        return None;
    }
    if !pending.is_empty() && is_complete(&pending) {
        lines.push(std::mem::take(&mut pending));
        ends.push(len);
    }
    let done = Completion {
        reply: Some(reply),
        len,
        joined: (joined && !ends.is_empty()).then(|| (offset, data[..ends[0] as usize].to_vec())),
        ends,
        writers: Arc::clone(writers),
        key,
        at: now,
        partial: pending,
    };
    if lines.is_empty() {
        done.accept_all();
        return None;
    }
    Some((lines, done))
}
