//! The replica link between a parent's daemon and its children's mounts: the
//! parent streams its view (members, agent state, container info) to each
//! child over a unix socket, and a child forwards the events written to its
//! write node and gets back, per write, how many were raised and the errno.
//!
//! Children thus need no Serf access and no Docker socket, and when the
//! parent's daemon restarts a child keeps serving the last view, marked
//! stale, instead of failing reads ("Transport endpoint is not connected").
//!
//! The parent also sends its event journal (the entries it held when the
//! child connected, marked `backlog`, then each new one), which the child
//! mirrors as its own `events` files and runs its own handlers from, and
//! asks the cluster the queries the child's `query/` files ask.
//!
//! Wire: one JSON object per line, `{"type": ...}`. The child speaks first
//! (`hello`); the parent sends a `view` at once and after every change
//! (only the latest when the child lags), `journal` entries, an `outcome`
//! per `events` and `answers` per `query`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::backoff::{sleep_or_shutdown, Backoff};
use crate::cluster::membership::{Containers, Mirror, Snapshot, View};
use crate::cluster::rpc::Member;
use crate::containers::grants::{Allow, Grants};
use crate::event::Event;
use crate::event::Origin;
use crate::surface::journal::{Entry, Journal};
use crate::surface::query::{Answers, Ask, MAX_WAIT};
use crate::surface::upstream::{Bucket, Upstream, DEFAULT_EVENT_LIMIT, RAISE_TIMEOUT, UNKNOWN};

/// The socket's file name in the share directory.
pub const SOCKET: &str = "replica.sock";

/// Bound on one line from the parent: a view of tens of thousands of
/// members fits.
const MAX_FRAME: u64 = 256 << 20;

/// Until a connection has proved which child it is, it gets this little:
/// its hello must fit in [`MAX_HELLO`] bytes and arrive within
/// [`HELLO_DEADLINE`], and at most [`MAX_PENDING`] connections wait for
/// theirs (a newer one pushes out the oldest, so a real child, which sends
/// its hello at once, gets through a flood of silent ones).
pub const MAX_HELLO: usize = 4096;
pub const HELLO_DEADLINE: Duration = Duration::from_secs(2);
pub const MAX_PENDING: usize = 64;

/// Bound on a frame from a child after its hello. One write(2) reaches the
/// write node in WRITEs of at most 1 MiB (the kernel's largest), plus a
/// 64 KiB partial line; each event becomes at most about 3.5 times its line
/// on the wire (escaping, field names).
pub const MAX_CHILD_FRAME: usize = 4 << 20;

/// Connections served as one child: a newer one (a reconnect) closes the
/// oldest beyond this.
pub const MAX_PER_CHILD: usize = 2;

/// Connections served in all; only reachable without grants (a bare
/// `--share`, where any name is taken).
pub const MAX_SERVED: usize = 256;

/// Requests of one connection answered at once; beyond, its next frame is
/// not read until one is done.
const MAX_IN_FLIGHT: usize = 64;

/// Queries each child may ask per second, in bursts of as many, unless
/// `--child-query-rate` says otherwise: every query runs a handler on every
/// member it reaches.
pub const DEFAULT_CHILD_QUERY_RATE: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("replica socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("replica link: {0}")]
    Link(#[from] std::io::Error),
    #[error("replica link: bad frame: {0}")]
    Frame(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToParent {
    Hello {
        child: String,
        /// The token the parent gave this child's container.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    Events {
        id: u64,
        pid: u32,
        events: Vec<WireEvent>,
    },
    Query {
        id: u64,
        pid: u32,
        ask: Ask,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToChild {
    View(Box<WireView>),
    Outcome {
        id: u64,
        raised: usize,
        errno: Option<i32>,
    },
    Journal {
        entries: Vec<Entry>,
        /// The entries the parent held when the child connected: history,
        /// which the child's handlers do not run for.
        backlog: bool,
    },
    Answers {
        id: u64,
        result: Result<Answers, i32>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEvent {
    pub name: String,
    /// Compact JSON, as the write node parsed it.
    pub payload: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WireView {
    pub local: Option<String>,
    pub agent_error: Option<String>,
    pub members: Vec<WireMember>,
    pub parent: Option<Value>,
    pub me: Option<Value>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WireMember {
    pub name: String,
    pub addr: IpAddr,
    pub port: u16,
    pub tags: std::collections::BTreeMap<String, String>,
    pub status: String,
    pub protocol: [u8; 3],
    pub delegate: [u8; 3],
}

impl WireView {
    /// What child `child` is told of `snap`: the parent's container info and
    /// the child's own (which the parent's Docker side records per child).
    /// A child with `show_secrets` gets the versions made for it.
    pub fn of(snap: &Snapshot, child: &str) -> WireView {
        let shown = snap.containers.shown.get(child);
        WireView {
            local: snap.local.clone(),
            agent_error: (!snap.agent.connected).then(|| {
                snap.agent
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "parent not following its agent yet".into())
            }),
            members: snap
                .members
                .values()
                .map(|e| WireMember::from(&*e.member))
                .collect(),
            parent: shown.map_or_else(|| snap.containers.me.clone(), |s| s.parent.clone()),
            me: shown.map_or_else(
                || snap.containers.children.get(child).cloned(),
                |s| s.me.clone(),
            ),
        }
    }

    fn into_mirror(self) -> Mirror {
        Mirror {
            members: self.members.into_iter().map(Member::from).collect(),
            local: self.local,
            agent_error: self.agent_error,
            containers: Containers {
                me: self.me,
                parent: self.parent,
                ..Containers::default()
            },
        }
    }
}

impl From<&Member> for WireMember {
    fn from(m: &Member) -> WireMember {
        WireMember {
            name: m.name.clone(),
            addr: m.addr,
            port: m.port,
            tags: m.tags.clone(),
            status: m.status.as_str().to_owned(),
            protocol: m.protocol,
            delegate: m.delegate,
        }
    }
}

impl From<WireMember> for Member {
    fn from(w: WireMember) -> Member {
        Member {
            name: w.name,
            addr: w.addr,
            port: w.port,
            tags: w.tags,
            status: w.status.into(),
            protocol: w.protocol,
            delegate: w.delegate,
        }
    }
}

async fn read_frame<T: DeserializeOwned>(
    r: &mut BufReader<OwnedReadHalf>,
    buf: &mut Vec<u8>,
) -> Result<Option<T>, ReplicaError> {
    read_frame_within(r, buf, MAX_FRAME as usize).await
}

/// The next line, at most `limit` bytes with its newline, as a `T`; `None`
/// at a clean end. Never holds more than `limit` bytes of it.
async fn read_frame_within<T: DeserializeOwned, R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> Result<Option<T>, ReplicaError> {
    buf.clear();
    let n = (&mut *r).take(limit as u64).read_until(b'\n', buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(ReplicaError::Frame(if n >= limit {
            format!("line over {limit} bytes")
        } else {
            "line cut short".to_owned()
        }));
    }
    serde_json::from_slice(buf)
        .map(Some)
        .map_err(|e| ReplicaError::Frame(e.to_string()))
}

/// A connection's hello, as the parent reads it: the first line, within
/// [`MAX_HELLO`].
async fn read_hello<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<(String, Option<String>), ReplicaError> {
    match read_frame_within::<ToParent, _>(r, buf, MAX_HELLO).await? {
        Some(ToParent::Hello { child, token }) => Ok((child, token)),
        Some(_) => Err(ReplicaError::Frame("expected hello".into())),
        None => Err(ReplicaError::Frame("closed before its hello".into())),
    }
}

/// A child's next request after its hello, within [`MAX_CHILD_FRAME`];
/// `None` at a clean end. A second hello is an error.
async fn read_request<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<ToParent>, ReplicaError> {
    let msg = read_frame_within::<ToParent, _>(r, buf, MAX_CHILD_FRAME).await;
    // A big frame's buffer is not kept for the connection's lifetime.
    if buf.capacity() > 64 << 10 {
        *buf = Vec::new();
    }
    match msg? {
        Some(ToParent::Hello { .. }) => Err(ReplicaError::Frame("second hello".into())),
        other => Ok(other),
    }
}

async fn write_frame(w: &mut OwnedWriteHalf, msg: &impl Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).expect("wire types serialize");
    line.push(b'\n');
    w.write_all(&line).await
}

/// Binds the parent's socket at `path`, replacing a stale one left by an
/// earlier run.
pub fn bind(path: &Path) -> Result<UnixListener, ReplicaError> {
    let io = |source| ReplicaError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    UnixListener::bind(path).map_err(io)
}

/// The parent's side: serves every child that connects until `stop`.
/// `query_rate`: queries each child may ask per second (0: no limit).
pub async fn serve<U: Upstream>(
    listener: UnixListener,
    view: View,
    journal: Journal,
    upstream: Arc<U>,
    grants: Option<Grants>,
    query_rate: u32,
    stop: CancellationToken,
) {
    let server = Arc::new(Server {
        view,
        journal,
        upstream,
        grants,
        slots: Arc::new(Slots::default()),
        paces: Paces::new(query_rate),
        refusals: Refusals::default(),
    });
    // Out of descriptors (EMFILE), accept fails at once for as long as the
    // backlog holds connections: retrying without a pause spins a core.
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    let mut failing = false;
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    if !failing {
                        tracing::warn!("replica: accept: {e}; retrying with backoff");
                        failing = true;
                    }
                    if sleep_or_shutdown(backoff.next_delay(), &stop).await {
                        return;
                    }
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        if failing {
            tracing::info!("replica: accepting connections again");
            failing = false;
            backoff.reset();
        }
        let slot = server.slots.admit();
        let (server, stop) = (server.clone(), stop.clone());
        tokio::spawn(async move {
            let closed = slot.closed.clone();
            tokio::select! {
                r = serve_child(stream, &server, slot, &stop) => if let Err(e) = r {
                    tracing::warn!("replica: {e}");
                },
                // Pushed out by newer connections, or replaced by this
                // child's reconnect.
                _ = closed.cancelled() => {}
            }
        });
    }
}

/// What every connection of the parent's socket shares.
struct Server<U> {
    view: View,
    journal: Journal,
    upstream: Arc<U>,
    grants: Option<Grants>,
    slots: Arc<Slots>,
    paces: Paces,
    refusals: Refusals,
}

/// Who holds a connection: waiting for its hello, or served as a child.
#[derive(Default)]
struct Slots(parking_lot::Mutex<SlotTable>);

#[derive(Default)]
struct SlotTable {
    next: u64,
    pending: std::collections::VecDeque<(u64, CancellationToken)>,
    served: HashMap<String, std::collections::VecDeque<(u64, CancellationToken)>>,
    served_total: usize,
}

/// One connection's place in [`Slots`]; closing `closed` ends its task.
/// Leaves the table when dropped.
struct Slot {
    slots: Arc<Slots>,
    id: u64,
    child: Option<String>,
    closed: CancellationToken,
}

impl Slots {
    /// A new connection, waiting for its hello; the oldest waiting one is
    /// closed if there are too many.
    fn admit(self: &Arc<Self>) -> Slot {
        let closed = CancellationToken::new();
        let mut t = self.0.lock();
        t.next += 1;
        let id = t.next;
        t.pending.push_back((id, closed.clone()));
        if t.pending.len() > MAX_PENDING {
            if let Some((_, oldest)) = t.pending.pop_front() {
                oldest.cancel();
            }
        }
        Slot {
            slots: self.clone(),
            id,
            child: None,
            closed,
        }
    }
}

impl Slot {
    /// The connection proved it is `child`: served as that child, closing
    /// its oldest connection beyond [`MAX_PER_CHILD`]. False when the
    /// parent serves [`MAX_SERVED`] connections already.
    fn serve_as(&mut self, child: &str) -> bool {
        let mut t = self.slots.0.lock();
        if t.served_total >= MAX_SERVED {
            return false;
        }
        t.pending.retain(|(id, _)| *id != self.id);
        t.served_total += 1;
        let list = t.served.entry(child.to_owned()).or_default();
        list.push_back((self.id, self.closed.clone()));
        if list.len() > MAX_PER_CHILD {
            if let Some((_, oldest)) = list.pop_front() {
                oldest.cancel();
            }
        }
        self.child = Some(child.to_owned());
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.slots.0.lock();
        let id = self.id;
        match &self.child {
            None => t.pending.retain(|(i, _)| *i != id),
            Some(child) => {
                t.served_total -= 1;
                if let Some(list) = t.served.get_mut(child) {
                    list.retain(|(i, _)| *i != id);
                    if list.is_empty() {
                        t.served.remove(child);
                    }
                }
            }
        }
    }
}

/// Connections refused before their hello was accepted, logged at most
/// every [`Refusals::EVERY`] (a flood of them must not flood the log).
#[derive(Default)]
struct Refusals(parking_lot::Mutex<(u64, Option<std::time::Instant>)>);

impl Refusals {
    const EVERY: Duration = Duration::from_secs(10);

    fn note(&self, why: &str) {
        let mut r = self.0.lock();
        r.0 += 1;
        let due = r.1.is_none_or(|at| at.elapsed() >= Self::EVERY);
        if due {
            tracing::warn!(
                "replica: refused {} connection(s) since the last report; the latest: {why}",
                r.0
            );
            *r = (0, Some(std::time::Instant::now()));
        } else {
            tracing::debug!("replica: refused a connection: {why}");
        }
    }
}

/// Each child's query rate: one token bucket per child name, kept across
/// its reconnects.
struct Paces {
    rate: u32,
    buckets: parking_lot::Mutex<HashMap<String, (Bucket, bool)>>,
}

impl Paces {
    fn new(rate: u32) -> Paces {
        Paces {
            rate,
            buckets: Default::default(),
        }
    }

    /// Whether `child` may ask one more query now.
    fn take(&self, child: &str) -> bool {
        if self.rate == 0 {
            return true;
        }
        let mut buckets = self.buckets.lock();
        let (bucket, refusing) = buckets
            .entry(child.to_owned())
            .or_insert_with(|| (Bucket::new(self.rate), false));
        let ok = bucket.take();
        if !ok && !*refusing {
            tracing::info!(
                "replica: child {child} asks more than {} queries a second: EAGAIN until it slows down",
                self.rate
            );
        }
        *refusing = !ok;
        ok
    }
}

async fn serve_child<U: Upstream>(
    stream: UnixStream,
    server: &Server<U>,
    mut slot: Slot,
    stop: &CancellationToken,
) -> Result<(), ReplicaError> {
    let (r, mut w) = stream.into_split();
    // Nothing beyond a hello's worth is read before the hello is checked.
    let mut r = BufReader::with_capacity(MAX_HELLO, r);
    let mut buf = Vec::new();
    let hello = tokio::time::timeout(HELLO_DEADLINE, read_hello(&mut r, &mut buf)).await;
    let (child, token) = match hello {
        Ok(Ok(hello)) => hello,
        Ok(Err(e)) => {
            server.refusals.note(&e.to_string());
            return Ok(());
        }
        Err(_) => {
            server
                .refusals
                .note(&format!("no hello within {HELLO_DEADLINE:?}"));
            return Ok(());
        }
    };
    // Without grants (a bare --share) every child may do everything.
    let allow = match &server.grants {
        None => Allow::default(),
        Some(g) => match g.check(&child, token.as_deref()) {
            Some(allow) => allow,
            None => {
                server.refusals.note(&format!(
                    "a connection claiming to be child {child}: wrong or missing token"
                ));
                return Ok(());
            }
        },
    };
    if !slot.serve_as(&child) {
        server.refusals.note(&format!(
            "child {child}: {MAX_SERVED} connections served already"
        ));
        return Ok(());
    }
    let allow = Arc::new(allow);
    tracing::info!(child = %child, "replica: child connected");

    let (outcomes, mut outcomes_rx) = mpsc::channel::<ToChild>(64);
    let mut snaps = server.view.subscribe();
    let mut entries = server.journal.subscribe();
    let name = child.clone();
    let writer = async move {
        let snap = snaps.borrow_and_update().clone();
        write_frame(&mut w, &ToChild::View(Box::new(WireView::of(&snap, &name)))).await?;
        let held = entries.borrow_and_update().entries_since(0);
        let mut sent = held.last().map_or(0, |e| e.seq);
        let backlog = ToChild::Journal {
            entries: held,
            backlog: true,
        };
        write_frame(&mut w, &backlog).await?;
        loop {
            tokio::select! {
                changed = snaps.changed() => {
                    if changed.is_err() { return Ok(()) }
                    let snap = snaps.borrow_and_update().clone();
                    write_frame(&mut w, &ToChild::View(Box::new(WireView::of(&snap, &name)))).await?;
                }
                changed = entries.changed() => {
                    if changed.is_err() { return Ok(()) }
                    let new = entries.borrow_and_update().entries_since(sent);
                    if let Some(last) = new.last() {
                        sent = last.seq;
                        write_frame(&mut w, &ToChild::Journal { entries: new, backlog: false }).await?;
                    }
                }
                out = outcomes_rx.recv() => match out {
                    Some(out) => write_frame(&mut w, &out).await?,
                    None => return Ok(()),
                },
            }
        }
    };
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let reader = async {
        while let Some(msg) = read_request(&mut r, &mut buf).await? {
            let permit = in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            let (raise, outcomes) = (server.upstream.clone(), outcomes.clone());
            match msg {
                ToParent::Events { id, pid, events } => {
                    let origin = Origin {
                        pid,
                        child: Some(child.clone()),
                    };
                    let allow = allow.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        let (raised, errno) =
                            raise_from_child(&*raise, &origin, &allow, events).await;
                        let _ = outcomes.send(ToChild::Outcome { id, raised, errno }).await;
                    });
                }
                ToParent::Query { id, pid, ask } => {
                    let origin = Origin {
                        pid,
                        child: Some(child.clone()),
                    };
                    // Paced first: refusals count too, so a child asking
                    // what it may not ask cannot flood the log either.
                    let verdict = if !server.paces.take(&child) {
                        Err(libc::EAGAIN)
                    } else if !allow.query(&ask.name) {
                        tracing::warn!("replica: {origin}: may not ask query {:?}", ask.name);
                        Err(libc::EACCES)
                    } else {
                        Ok(())
                    };
                    tokio::spawn(async move {
                        let _permit = permit;
                        let result = match verdict {
                            Ok(()) => raise.ask(&origin, ask).await,
                            Err(errno) => Err(errno),
                        };
                        let _ = outcomes.send(ToChild::Answers { id, result }).await;
                    });
                }
                ToParent::Hello { .. } => unreachable!("read_request refuses a second hello"),
            }
        }
        Ok::<_, ReplicaError>(())
    };
    let res = tokio::select! {
        r = writer => r.map_err(ReplicaError::Link),
        r = reader => r.map_err(|e| match e {
            ReplicaError::Frame(why) => ReplicaError::Frame(format!("child {child}: {why}")),
            e => e,
        }),
        _ = stop.cancelled() => Ok(()),
    };
    tracing::info!(child = %child, "replica: child disconnected");
    res
}

/// Children are not trusted: every event is checked again here before it
/// reaches the agent.
async fn raise_from_child<U: Upstream>(
    upstream: &U,
    origin: &Origin,
    allow: &Allow,
    events: Vec<WireEvent>,
) -> (usize, Option<i32>) {
    let mut valid = Vec::with_capacity(events.len());
    let mut bad = None;
    for e in events {
        let event = Event {
            name: e.name,
            payload: e.payload.into_bytes(),
        };
        if let Err(err) = event.check(DEFAULT_EVENT_LIMIT) {
            tracing::warn!("replica: {origin}: refused event: {err}");
            bad = Some(err.errno());
            break;
        }
        if !allow.event(&event.name) {
            tracing::warn!("replica: {origin}: may not raise event {:?}", event.name);
            bad = Some(libc::EACCES);
            break;
        }
        valid.push(event);
    }
    let n = valid.len();
    if n > 0 {
        if let Err((k, errno)) = upstream.raise(origin, valid).await {
            return (k, Some(errno));
        }
    }
    (n, bad)
}

/// How long a child's write waits for its parent's verdict: longer than the
/// parent waits for its agent ([`RAISE_TIMEOUT`]), so that the child hears
/// the parent's verdict, "unknown" included, rather than guessing.
pub const CHILD_RAISE_WAIT: Duration = Duration::from_secs(RAISE_TIMEOUT.as_secs() + 2);

/// How long a child's query read waits for its parent: past the parent's
/// own bound ([`MAX_WAIT`]).
pub const CHILD_QUERY_WAIT: Duration = Duration::from_secs(MAX_WAIT.as_secs() + 1);

/// What a child's mount asks of the parent, and where the answer goes.
pub enum Request {
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
pub struct Handoff(Arc<std::sync::atomic::AtomicU8>);

const QUEUED: u8 = 0;
const SENT: u8 = 1;
const WITHDRAWN: u8 = 2;

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
pub struct ParentLink {
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
pub struct ChildSide {
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
async fn link(
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

#[doc(hidden)]
pub mod fuzz {
    //! Hooks for the property tests in `tests/fuzz.rs`: the parent's
    //! reading of a connection exactly as [`serve`](super::serve) runs it,
    //! on bytes instead of a socket. Not an API.

    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, BufReader, ReadBuf};

    use super::{read_hello, read_request, ToParent, MAX_HELLO};

    /// Yields its pieces one read at a time, as a socket may.
    struct Pieces(VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if let Some(front) = self.0.front_mut() {
                let n = front.len().min(buf.remaining());
                buf.put_slice(&front[..n]);
                front.drain(..n);
                if front.is_empty() {
                    self.0.pop_front();
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// What the parent makes of a connection that sends `pieces`: its
    /// hello (as [`ToParent::Hello`]), then each request, up to the first
    /// refusal (an `Err` naming why, after which the parent hangs up) or
    /// the end. No time passes here: the hello's deadline is not fuzzed.
    pub fn server_reads(pieces: &[&[u8]]) -> Vec<Result<ToParent, String>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let source = Pieces(pieces.iter().map(|p| p.to_vec()).collect());
            let mut r = BufReader::with_capacity(MAX_HELLO, source);
            let mut buf = Vec::new();
            let mut got = Vec::new();
            match read_hello(&mut r, &mut buf).await {
                Ok((child, token)) => got.push(Ok(ToParent::Hello { child, token })),
                Err(e) => {
                    got.push(Err(e.to_string()));
                    return got;
                }
            }
            loop {
                match read_request(&mut r, &mut buf).await {
                    Ok(Some(msg)) => got.push(Ok(msg)),
                    Ok(None) => return got,
                    Err(e) => {
                        got.push(Err(e.to_string()));
                        return got;
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::rpc::MemberStatus;

    #[test]
    fn a_view_survives_the_wire() {
        let view = View::new();
        view.reconcile(vec![Member {
            name: "n1".into(),
            addr: "10.0.0.1".parse().unwrap(),
            port: 7946,
            tags: [("role".to_string(), "web".to_string())].into(),
            status: MemberStatus::Failed,
            protocol: [1, 5, 5],
            delegate: [2, 5, 4],
        }]);
        view.set_local("n1");
        view.set_containers(Containers {
            me: Some(serde_json::json!({"Id": "parent"})),
            parent: None,
            children: [("web".to_string(), serde_json::json!({"Id": "child"}))].into(),
            ..Containers::default()
        });
        let wire = serde_json::to_string(&ToChild::View(Box::new(WireView::of(
            &view.snapshot(),
            "web",
        ))))
        .unwrap();
        let ToChild::View(back) = serde_json::from_str(&wire).unwrap() else {
            panic!()
        };
        let copy = View::new();
        assert!(copy.mirror(back.into_mirror()));
        let (a, b) = (view.snapshot(), copy.snapshot());
        assert_eq!(b.generation, 1, "one generation for the whole mirror");
        assert_eq!(a.members["n1"].member, b.members["n1"].member);
        assert_eq!(b.local.as_deref(), Some("n1"));
        assert_eq!(b.containers.me, Some(serde_json::json!({"Id": "child"})));
        assert_eq!(
            b.containers.parent,
            Some(serde_json::json!({"Id": "parent"}))
        );
        assert!(!b.agent.connected, "the parent was not following an agent");
    }

    #[test]
    fn frames_are_tagged_lines() {
        let msg = ToParent::Events {
            id: 7,
            pid: 42,
            events: vec![WireEvent {
                name: "deploy".into(),
                payload: "{\"v\":2}".into(),
            }],
        };
        let text = serde_json::to_string(&msg).unwrap();
        assert_eq!(
            text,
            r#"{"type":"events","id":7,"pid":42,"events":[{"name":"deploy","payload":"{\"v\":2}"}]}"#
        );
    }

    /// Raises and answers everything, recording what reached it.
    #[derive(Default)]
    struct Recorder(parking_lot::Mutex<Vec<(Option<String>, String)>>);

    impl Upstream for Recorder {
        async fn raise(&self, origin: &Origin, events: Vec<Event>) -> Result<(), (usize, i32)> {
            let mut seen = self.0.lock();
            for e in events {
                seen.push((origin.child.clone(), e.name));
            }
            Ok(())
        }

        async fn ask(&self, origin: &Origin, ask: Ask) -> Result<Answers, i32> {
            self.0
                .lock()
                .push((origin.child.clone(), format!("?{}", ask.name)));
            Ok(Answers {
                query: ask.name,
                payload: ask.payload,
                responses: Default::default(),
                missing: vec![],
                complete: true,
                elapsed_ms: 0,
            })
        }
    }

    async fn frame(w: &mut OwnedWriteHalf, msg: &ToParent) {
        write_frame(w, msg).await.unwrap();
    }

    /// Reads frames until one that `pick` accepts; None if the link closed.
    async fn until<T>(
        r: &mut BufReader<OwnedReadHalf>,
        mut pick: impl FnMut(ToChild) -> Option<T>,
    ) -> Option<T> {
        let mut buf = Vec::new();
        loop {
            let msg = read_frame::<ToChild>(r, &mut buf).await.ok()??;
            if let Some(t) = pick(msg) {
                return Some(t);
            }
        }
    }

    #[tokio::test]
    async fn children_are_known_by_their_token_and_held_to_their_allow_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET);
        let grants = Grants::default();
        grants.set(
            "web",
            crate::containers::grants::Grant {
                token: "secret".into(),
                allow: Allow {
                    events: Some(vec!["deploy".into()]),
                    queries: Some(vec![]),
                },
            },
        );
        let recorder = Arc::new(Recorder::default());
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            bind(&path).unwrap(),
            View::new(),
            Journal::new(8),
            recorder.clone(),
            Some(grants),
            0,
            stop.clone(),
        ));
        let hello = |token: Option<&str>| ToParent::Hello {
            child: "web".into(),
            token: token.map(String::from),
        };

        // A wrong or missing token: the parent hangs up before any view.
        for token in [None, Some("guess")] {
            let (r, mut w) = UnixStream::connect(&path).await.unwrap().into_split();
            frame(&mut w, &hello(token)).await;
            let mut r = BufReader::new(r);
            assert!(
                until(&mut r, |_| Some(())).await.is_none(),
                "{token:?} served"
            );
        }

        // The right token: served, and held to its allow list.
        let (r, mut w) = UnixStream::connect(&path).await.unwrap().into_split();
        let mut r = BufReader::new(r);
        frame(&mut w, &hello(Some("secret"))).await;
        let events = |id, names: &[&str]| ToParent::Events {
            id,
            pid: 1,
            events: names
                .iter()
                .map(|n| WireEvent {
                    name: n.to_string(),
                    payload: "1".into(),
                })
                .collect(),
        };
        frame(&mut w, &events(1, &["deploy", "other", "deploy"])).await;
        let outcome = until(&mut r, |m| match m {
            ToChild::Outcome {
                id: 1,
                raised,
                errno,
            } => Some((raised, errno)),
            _ => None,
        })
        .await;
        assert_eq!(outcome, Some((1, Some(libc::EACCES))));
        frame(&mut w, &events(2, &["container"])).await;
        let outcome = until(&mut r, |m| match m {
            ToChild::Outcome {
                id: 2,
                raised,
                errno,
            } => Some((raised, errno)),
            _ => None,
        })
        .await;
        assert_eq!(
            outcome,
            Some((0, Some(libc::EACCES))),
            "a child forging container events"
        );
        let ask = Ask::from_file("where", "web").unwrap();
        frame(&mut w, &ToParent::Query { id: 3, pid: 1, ask }).await;
        let answer = until(&mut r, |m| match m {
            ToChild::Answers { id: 3, result } => Some(result.map(|_| ())),
            _ => None,
        })
        .await;
        assert_eq!(answer, Some(Err(libc::EACCES)));
        assert_eq!(
            *recorder.0.lock(),
            [(Some("web".to_string()), "deploy".to_string())],
            "only the allowed event got through"
        );
        stop.cancel();
        server.await.unwrap();
    }

    /// A parent serving `web` (token `secret`, default allow) with `rate`
    /// queries a second per child.
    fn parent(
        rate: u32,
    ) -> (
        tempfile::TempDir,
        PathBuf,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET);
        let grants = Grants::default();
        grants.set(
            "web",
            crate::containers::grants::Grant {
                token: "secret".into(),
                allow: Allow::default(),
            },
        );
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            bind(&path).unwrap(),
            View::new(),
            Journal::new(8),
            Arc::new(Recorder::default()),
            Some(grants),
            rate,
            stop.clone(),
        ));
        (dir, path, stop, server)
    }

    /// A connection that said hello as `web` and got its first view.
    async fn child(path: &Path) -> (BufReader<OwnedReadHalf>, OwnedWriteHalf) {
        let (r, mut w) = UnixStream::connect(path).await.unwrap().into_split();
        let mut r = BufReader::new(r);
        let hello = ToParent::Hello {
            child: "web".into(),
            token: Some("secret".into()),
        };
        frame(&mut w, &hello).await;
        assert!(
            until(&mut r, |m| matches!(m, ToChild::View(_)).then_some(()))
                .await
                .is_some(),
            "not served"
        );
        (r, w)
    }

    /// Whether the parent hung up on `r` within `within`.
    async fn hung_up(r: &mut (impl AsyncReadExt + Unpin), within: Duration) -> bool {
        let mut sink = vec![0u8; 1 << 16];
        tokio::time::timeout(within, async {
            loop {
                match r.read(&mut sink).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    #[tokio::test]
    async fn nothing_is_buffered_before_a_hello_and_silent_connections_make_way() {
        let (_dir, path, stop, server) = parent(0);
        // A hello over MAX_HELLO: refused after reading at most that much.
        let (mut r, mut w) = UnixStream::connect(&path).await.unwrap().into_split();
        let big = format!(
            "{{\"type\":\"hello\",\"child\":\"{}\"}}\n",
            "x".repeat(MAX_HELLO)
        );
        let _ = w.write_all(big.as_bytes()).await;
        assert!(hung_up(&mut r, Duration::from_secs(1)).await, "big hello");
        // No newline ever: refused at MAX_HELLO bytes, not read on.
        let (mut r, mut w) = UnixStream::connect(&path).await.unwrap().into_split();
        let writer = tokio::spawn(async move {
            let chunk = vec![b'x'; 1 << 16];
            let mut sent = 0usize;
            while w.write_all(&chunk).await.is_ok() {
                sent += chunk.len();
            }
            sent
        });
        assert!(
            hung_up(&mut r, Duration::from_secs(1)).await,
            "endless line"
        );
        let sent = writer.await.unwrap();
        assert!(sent < 8 << 20, "{sent} bytes taken before the hang-up");
        // Silent: hung up at the deadline.
        let (mut r, _w) = UnixStream::connect(&path).await.unwrap().into_split();
        assert!(!hung_up(&mut r, HELLO_DEADLINE / 2).await, "too early");
        assert!(hung_up(&mut r, HELLO_DEADLINE).await, "at the deadline");
        // More silent ones than may wait: the oldest make way, and a child
        // saying hello is served meanwhile.
        let mut silent = Vec::new();
        for _ in 0..MAX_PENDING + 8 {
            silent.push(UnixStream::connect(&path).await.unwrap());
        }
        let _served = child(&path).await;
        let mut closed = 0;
        for s in &mut silent[..8] {
            closed += usize::from(hung_up(s, Duration::from_millis(500)).await);
        }
        assert_eq!(closed, 8, "the 8 oldest of {} pushed out", silent.len());
        stop.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn frames_are_bounded_and_a_reconnect_replaces_the_oldest_link() {
        let (_dir, path, stop, server) = parent(0);
        let (mut r, mut w) = child(&path).await;
        let line = vec![b'x'; MAX_CHILD_FRAME + 1];
        let _ = w.write_all(&line).await;
        assert!(
            hung_up(&mut r, Duration::from_secs(2)).await,
            "a frame over the bound"
        );
        let mut links = Vec::new();
        for _ in 0..MAX_PER_CHILD + 1 {
            links.push(child(&path).await);
        }
        assert!(
            hung_up(&mut links[0].0, Duration::from_secs(1)).await,
            "the oldest link of the child closed"
        );
        for (r, _) in &mut links[1..] {
            assert!(!hung_up(r, Duration::from_millis(200)).await);
        }
        stop.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn queries_are_paced_per_child_and_reserved_names_refused() {
        let (_dir, path, stop, server) = parent(3);
        let (mut r, mut w) = child(&path).await;
        let mut results = Vec::new();
        for (id, name) in [(1, "member-join"), (2, "where"), (3, "where"), (4, "where")] {
            let ask = Ask::from_file(name, "web").unwrap();
            frame(&mut w, &ToParent::Query { id, pid: 1, ask }).await;
            let got = until(&mut r, |m| match m {
                ToChild::Answers { id: got, result } if got == id => Some(result.map(|_| ())),
                _ => None,
            })
            .await;
            results.push(got);
        }
        assert_eq!(
            results,
            [
                Some(Err(libc::EACCES)),
                Some(Ok(())),
                Some(Ok(())),
                Some(Err(libc::EAGAIN))
            ],
            "a burst of 3, the refused one included"
        );
        // A reconnect does not refill the bucket.
        drop((r, w));
        let (mut r, mut w) = child(&path).await;
        let ask = Ask::from_file("where", "web").unwrap();
        frame(&mut w, &ToParent::Query { id: 5, pid: 1, ask }).await;
        let got = until(&mut r, |m| match m {
            ToChild::Answers { id: 5, result } => Some(result.map(|_| ())),
            _ => None,
        })
        .await;
        assert_eq!(got, Some(Err(libc::EAGAIN)));
        stop.cancel();
        server.await.unwrap();
    }
}
