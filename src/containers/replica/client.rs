//! The child's side of the replica link: [`follow`] mirrors the parent's
//! view and journal, reconnecting with backoff, and [`ParentLink`], a
//! child's upstream, carries its write node's events and its queries to the
//! parent.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::backoff::{sleep_or_shutdown, Backoff};
use crate::cluster::membership::View;
use crate::event::Event;
use crate::event::Origin;
use crate::surface::journal::Journal;
use crate::surface::query::{Answers, Ask, MAX_WAIT};
use crate::surface::upstream::{Upstream, RAISE_TIMEOUT, UNKNOWN};

use super::wire::*;

/// How long a child's write waits for its parent's verdict: longer than the
/// parent waits for its agent ([`RAISE_TIMEOUT`]), so that the child hears
/// the parent's verdict, "unknown" included, rather than guessing.
pub(crate) const CHILD_RAISE_WAIT: Duration = Duration::from_secs(RAISE_TIMEOUT.as_secs() + 2);

/// How long a child's query read waits for its parent: past the parent's
/// own bound ([`MAX_WAIT`]).
pub(crate) const CHILD_QUERY_WAIT: Duration = Duration::from_secs(MAX_WAIT.as_secs() + 1);

/// What a child's mount asks of the parent, and where the answer goes.
pub(crate) enum Request {
    /// A write: the writer's pid, its events; the answer is (events raised,
    /// errno).
    Events {
        pid: u32,
        events: Vec<WireEvent>,
        reply: oneshot::Sender<(usize, Option<i32>)>,
        handoff: Handoff,
    },
    /// A query file's read.
    Query {
        pid: u32,
        ask: Ask,
        reply: oneshot::Sender<Result<Answers, i32>>,
    },
}

impl Request {
    /// Answers "try again": never sent (the link is down).
    fn unavailable(self) {
        match self {
            Request::Events { reply, .. } => {
                let _ = reply.send((0, Some(libc::EAGAIN)));
            }
            Request::Query { reply, .. } => {
                let _ = reply.send(Err(libc::EAGAIN));
            }
        }
    }

    /// Answers a request that was sent on a link lost before its verdict:
    /// the parent may have raised the events ([`UNKNOWN`]); a query is simply
    /// asked again by the next read.
    fn unanswered(self) {
        match self {
            Request::Events { reply, .. } => {
                let _ = reply.send((0, Some(UNKNOWN)));
            }
            Request::Query { reply, .. } => {
                let _ = reply.send(Err(libc::EAGAIN));
            }
        }
    }
}

/// Who decides a write request's fate first: the link, sending it to the
/// parent, or the writer, giving up on it. Only a request the writer gave up
/// on before it was sent is certainly not raised.
#[derive(Clone, Default)]
pub(crate) struct Handoff(Arc<std::sync::atomic::AtomicU8>);

pub(super) const QUEUED: u8 = 0;
pub(super) const SENT: u8 = 1;
pub(super) const WITHDRAWN: u8 = 2;

impl Handoff {
    /// The link is about to send the request: false if it was withdrawn.
    fn send(&self) -> bool {
        self.swap_from_queued(SENT)
    }

    /// The writer gives up: true if the request was never sent (and now
    /// never will be).
    fn withdraw(&self) -> bool {
        self.swap_from_queued(WITHDRAWN)
    }

    fn swap_from_queued(&self, to: u8) -> bool {
        use std::sync::atomic::Ordering;
        self.0
            .compare_exchange(QUEUED, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// The child's side of the write node: events go to the parent's daemon.
pub(crate) struct ParentLink {
    requests: mpsc::Sender<Request>,
}

impl ParentLink {
    pub fn new(requests: mpsc::Sender<Request>) -> ParentLink {
        ParentLink { requests }
    }
}

impl Upstream for ParentLink {
    /// Within [`CHILD_RAISE_WAIT`]. Without a verdict: EAGAIN if the request
    /// never left this process, [`UNKNOWN`] once it was sent.
    async fn raise(&self, origin: &Origin, events: Vec<Event>) -> Result<(), (usize, i32)> {
        let n = events.len();
        let wire = events
            .into_iter()
            .map(|e| WireEvent {
                name: e.name,
                payload: String::from_utf8(e.payload).expect("payloads are json text"),
            })
            .collect();
        let (tx, rx) = oneshot::channel();
        let handoff = Handoff::default();
        let asked = async {
            let req = Request::Events {
                pid: origin.pid,
                events: wire,
                reply: tx,
                handoff: handoff.clone(),
            };
            self.requests.send(req).await.ok()?;
            rx.await.ok()
        };
        match tokio::time::timeout(CHILD_RAISE_WAIT, asked).await {
            Ok(Some((raised, None))) if raised == n => Ok(()),
            Ok(Some((raised, errno))) => Err((raised, errno.unwrap_or(libc::EIO))),
            _ if handoff.withdraw() => {
                tracing::warn!("write node: {origin}: parent serfnode unreachable; not sent");
                Err((0, libc::EAGAIN))
            }
            _ => {
                tracing::warn!(
                    "write node: {origin}: parent serfnode gave no verdict within {CHILD_RAISE_WAIT:?}; the events may yet be raised (ETIMEDOUT)"
                );
                Err((0, UNKNOWN))
            }
        }
    }

    async fn ask(&self, origin: &Origin, ask: Ask) -> Result<Answers, i32> {
        let name = ask.name.clone();
        let (tx, rx) = oneshot::channel();
        let asked = async {
            let req = Request::Query {
                pid: origin.pid,
                ask,
                reply: tx,
            };
            self.requests.send(req).await.ok()?;
            rx.await.ok()
        };
        match tokio::time::timeout(CHILD_QUERY_WAIT, asked).await {
            Ok(Some(result)) => result,
            _ => {
                tracing::warn!("query {name}: {origin}: parent serfnode unreachable");
                Err(libc::EAGAIN)
            }
        }
    }
}

/// Where a child keeps what the parent sends besides the view.
#[derive(Clone)]
pub(crate) struct ChildSide {
    pub journal: Journal,
    /// The seq of the last backlog entry of the first link: the child's
    /// handlers run for entries after it.
    pub start: Arc<std::sync::OnceLock<u64>>,
    /// The token the parent gave this child (its `SERFNODE_CHILD_TOKEN`).
    pub token: Option<String>,
}

/// The child's side of the link: mirrors the parent's view into `view` and
/// carries write-node events, reconnecting with backoff until `stop`. While
/// the parent is unreachable the view stays, marked stale.
pub async fn follow(
    socket: PathBuf,
    child: String,
    view: View,
    side: ChildSide,
    mut requests: mpsc::Receiver<Request>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    let mut reported = false;
    loop {
        let err = match UnixStream::connect(&socket).await {
            Ok(stream) => {
                backoff.reset();
                reported = false;
                match link(stream, &child, &view, &side, &mut requests, &stop).await {
                    Ok(()) => return,
                    Err(e) => e,
                }
            }
            Err(source) => ReplicaError::Io {
                path: socket.clone(),
                source,
            },
        };
        view.set_disconnected(&format!("parent serfnode unreachable: {err}"));
        if !reported {
            tracing::warn!("{err}; serving the last view as stale");
            reported = true;
        }
        // Writes meanwhile fail fast instead of waiting out their timeout.
        while let Ok(req) = requests.try_recv() {
            req.unavailable();
        }
        if sleep_or_shutdown(backoff.next_delay(), &stop).await {
            return;
        }
    }
}

/// One connection; `Ok` only at `stop`.
pub(super) async fn link(
    stream: UnixStream,
    child: &str,
    view: &View,
    side: &ChildSide,
    requests: &mut mpsc::Receiver<Request>,
    stop: &CancellationToken,
) -> Result<(), ReplicaError> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    write_frame(
        &mut w,
        &ToParent::Hello {
            child: child.into(),
            token: side.token.clone(),
        },
    )
    .await?;
    let mut pending: HashMap<u64, Request> = HashMap::new();
    let mut next_id = 0u64;
    let res = loop {
        tokio::select! {
            frame = read_frame::<ToChild>(&mut r, &mut buf) => match frame {
                Ok(Some(ToChild::View(v))) => {
                    view.mirror(v.into_mirror());
                }
                Ok(Some(ToChild::Outcome { id, raised, errno })) => {
                    if let Some(Request::Events { reply, .. }) = pending.remove(&id) {
                        let _ = reply.send((raised, errno));
                    }
                }
                Ok(Some(ToChild::Answers { id, result })) => {
                    if let Some(Request::Query { reply, .. }) = pending.remove(&id) {
                        let _ = reply.send(result);
                    }
                }
                Ok(Some(ToChild::Journal { entries, backlog })) => {
                    let last = entries.last().map(|e| e.seq);
                    side.journal.mirror(entries, backlog);
                    if backlog {
                        let start = last.map_or(0, |s| side.journal.mirrored_seq(s));
                        side.start.get_or_init(|| start);
                    }
                }
                Ok(None) => break Err(ReplicaError::Link(std::io::ErrorKind::UnexpectedEof.into())),
                Err(e) => break Err(e),
            },
            req = requests.recv() => {
                let Some(req) = req else { break Ok(()) };
                if let Request::Events { handoff, .. } = &req {
                    if !handoff.send() {
                        // The writer gave up on it and was told it was not sent.
                        continue;
                    }
                }
                next_id += 1;
                let id = next_id;
                let frame = match req {
                    Request::Events { pid, ref events, .. } => ToParent::Events { id, pid, events: events.clone() },
                    Request::Query { pid, ref ask, .. } => ToParent::Query { id, pid, ask: ask.clone() },
                };
                pending.insert(id, req);
                if let Err(e) = write_frame(&mut w, &frame).await {
                    break Err(e.into());
                }
            }
            _ = stop.cancelled() => break Ok(()),
        }
    };
    // Writes in flight on a lost link may or may not have been raised: the
    // writer is told so (ETIMEDOUT), never to simply try again.
    for (_, req) in pending.drain() {
        req.unanswered();
    }
    res
}
