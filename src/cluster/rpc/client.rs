//! One connection to an agent and the [`Client`] handle on it.
//!
//! A request is encoded whole and written by the thread that makes it,
//! without waiting: whatever the socket does not take at once is queued, in
//! order, for the flusher task, so a caller that gives up (timeout, dropped
//! future) can never leave half a request on the wire, and a request made
//! outside the runtime (a FUSE worker's) reaches the agent without waking
//! it. A reader task frames the byte stream and routes each reply by its
//! Seq: to the oneshot of a waiting request, to the callback of a request
//! made with [`Client::event_then`] (called on the reader's thread, or with
//! a timeout by the sweeper task), or to the bounded channel of a
//! subscription. Dropping the last handle (clients and subscriptions each
//! hold one) closes the connection.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::{debug, warn};

use super::codec::{self, Header};
use super::peer::{self, AgentPid};
use super::proto::{self, Coordinate, KeyResponse, Member, QueryParams, QueryRecord, StreamRecord};
use super::{Result, RpcError};

/// Default bound on a fast command, from request to reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on `join`, `tags`, `leave` and the keyring commands, which
/// wait on the cluster (dials, gossip, an internal query).
pub const DEFAULT_SLOW_TIMEOUT: Duration = Duration::from_secs(30);
/// Records a subscriber may leave unread before new ones are dropped.
const RECORD_BUFFER: usize = 1024;

/// For commands without a request body.
const NO_BODY: Option<&()> = None;

/// A cheap handle to one RPC connection; clones share it.
#[derive(Clone)]
pub struct Client {
    handle: Arc<Handle>,
    timeout: Duration,
    slow_timeout: Duration,
}

/// Closes the connection when the last `Client` or subscription lets go.
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// What the handles and both tasks share.
struct Shared {
    addr: SocketAddr,
    /// Our end of the connection (what the agent's log calls this client).
    local: Option<SocketAddr>,
    /// Kept to authenticate the side connections of slow commands.
    auth_key: Option<String>,
    /// The supervised agent every connection (side ones too) must reach.
    agent: Mutex<Option<AgentPid>>,
    next_seq: AtomicU64,
    routes: Mutex<Routes>,
    /// Taken after `routes` when both are held.
    out: Mutex<Out>,
    /// Wakes the flusher when `out.queued` gains bytes.
    flush: Notify,
    /// Wakes the sweeper when `routes.deadlines` gains its first entry.
    sweep: Notify,
    closed: watch::Sender<bool>,
}

/// The write side of the connection. Invariant: `queued` holds the bytes,
/// in order, that went to no `try_write` yet; nothing is written directly
/// while it is not empty, so requests never interleave.
struct Out {
    /// `None` once closed (dropping the last reference hangs up our half;
    /// the flusher holds one only while it waits for room).
    wire: Option<Arc<OwnedWriteHalf>>,
    queued: Vec<u8>,
}

impl Out {
    /// Writes `bytes` now as far as the socket takes them and queues the
    /// rest; `Ok(true)` when the flusher must be woken.
    fn put(&mut self, bytes: &[u8]) -> io::Result<bool> {
        let Some(wire) = &self.wire else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let mut written = 0;
        if self.queued.is_empty() {
            while written < bytes.len() {
                match wire.try_write(&bytes[written..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if written == bytes.len() {
            return Ok(false);
        }
        let wake = self.queued.is_empty();
        self.queued.extend_from_slice(&bytes[written..]);
        Ok(wake)
    }
}

/// Where the reader sends what arrives for each Seq.
struct Routes {
    waiting: HashMap<u64, Waiter>,
    /// Subscriptions past their ack: every header with their Seq is followed
    /// by a record.
    records: HashMap<u64, Sink>,
    /// The `Then` waiters' deadlines; an entry whose Seq no longer waits is
    /// skipped when it comes up.
    deadlines: BTreeSet<(Instant, u64)>,
    /// Set once, under this lock, so no route is added after the map is cleared.
    closed: bool,
}

/// A request waiting for its reply header.
enum Waiter {
    /// One header, then a body when `body` and the header has no error.
    Reply {
        command: &'static str,
        body: bool,
        tx: oneshot::Sender<Result<Vec<u8>>>,
    },
    /// A keyring command: one header and, unless the agent refused it before
    /// running it, the per-node report, which comes with an error too.
    Report {
        command: &'static str,
        tx: oneshot::Sender<Result<(String, Option<Vec<u8>>)>>,
    },
    /// A header without a body, for a callback ([`Client::event_then`]),
    /// within a deadline.
    Then {
        command: &'static str,
        then: Then,
        deadline: Instant,
    },
    /// `stream` or `query`: an ack header, then records for `sink`.
    Ack {
        command: &'static str,
        tx: oneshot::Sender<Result<()>>,
        sink: Sink,
    },
}

/// A verdict callback. Called exactly once: with the reply, with
/// [`RpcError::Timeout`] by the sweeper at its deadline, or, dropped
/// unanswered (the connection closed), with [`RpcError::Closed`].
struct Then {
    f: Option<Box<dyn FnOnce(Result<()>) + Send>>,
    addr: SocketAddr,
}

impl Then {
    fn call(mut self, result: Result<()>) {
        if let Some(f) = self.f.take() {
            f(result);
        }
    }
}

impl Drop for Then {
    fn drop(&mut self) {
        if let Some(f) = self.f.take() {
            f(Err(RpcError::Closed { addr: self.addr }));
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Stream,
    Query,
    Monitor,
}

/// One record for a subscriber, with the count of records dropped for it
/// before this one was queued (so it can tell where it lost some).
type Queued = (u64, Vec<u8>);

/// The sending side of a subscription.
#[derive(Clone)]
struct Sink {
    kind: Kind,
    tx: mpsc::Sender<Queued>,
    dropped: Arc<AtomicU64>,
}

impl Sink {
    /// Never blocks the reader: a subscriber that falls behind loses records
    /// (its owner reconciles from `members` anyway, and the event follower
    /// marks the loss in the journal).
    fn push(&self, seq: u64, record: Vec<u8>) {
        let before = self.dropped.load(Ordering::Relaxed);
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send((before, record)) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // Powers of two: a stuck subscriber does not flood the log.
            if n.is_power_of_two() {
                warn!(seq, dropped = n, kind = ?self.kind, "rpc subscriber falls behind, dropping records");
            }
        }
    }
}

impl Shared {
    /// Registers `waiter` under a fresh Seq and writes the request (see
    /// [`Out`]). On an error the waiter is dropped after the locks are
    /// released (a `Then` is called then, and may send again).
    fn send<B: Serialize>(&self, command: &str, body: Option<&B>, waiter: Waiter) -> Result<u64> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let bytes = codec::encode_request(command, seq, body);
        let mut routes = self.routes.lock();
        if routes.closed {
            drop(routes);
            drop(waiter);
            return Err(self.closed_error());
        }
        let deadline = match &waiter {
            Waiter::Then { deadline, .. } => Some(*deadline),
            _ => None,
        };
        // Registered before it is written, so the reply always finds it.
        routes.waiting.insert(seq, waiter);
        let put = self.out.lock().put(&bytes);
        match put {
            Ok(wake) => {
                if wake {
                    self.flush.notify_one();
                }
            }
            Err(e) => {
                let waiter = routes.waiting.remove(&seq);
                drop(routes);
                debug!(addr = %self.addr, "rpc write failed: {e}");
                self.close();
                drop(waiter);
                return Err(self.closed_error());
            }
        }
        if let Some(at) = deadline {
            // Replies come in order: the answered ones are mostly in front.
            while let Some(&(_, s)) = routes.deadlines.first() {
                if routes.waiting.contains_key(&s) {
                    break;
                }
                routes.deadlines.pop_first();
            }
            let first = routes.deadlines.first().is_none_or(|&(t, _)| at < t);
            routes.deadlines.insert((at, seq));
            if first {
                self.sweep.notify_one();
            }
        }
        Ok(seq)
    }

    /// Fails the `Then` waiters whose deadline is past with a timeout; the
    /// next deadline, if any.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut late = Vec::new();
        let next = {
            let mut routes = self.routes.lock();
            while let Some(&(at, seq)) = routes.deadlines.first() {
                if at > now {
                    break;
                }
                routes.deadlines.pop_first();
                if matches!(routes.waiting.get(&seq), Some(Waiter::Then { .. })) {
                    if let Some(Waiter::Then { command, then, .. }) = routes.waiting.remove(&seq) {
                        late.push((command, then));
                    }
                }
            }
            routes.deadlines.first().map(|&(at, _)| at)
        };
        for (command, then) in late {
            then.call(Err(RpcError::Timeout { command }));
        }
        next
    }

    /// Forgets a subscription; a stream is also stopped at the agent (best
    /// effort). Records the agent had already queued still arrive and are
    /// skipped as stray bodies.
    fn unsubscribe(&self, seq: u64) {
        let kind = {
            let mut routes = self.routes.lock();
            match routes.records.remove(&seq) {
                Some(sink) => Some(sink.kind),
                None => match routes.waiting.remove(&seq) {
                    Some(Waiter::Ack { sink, .. }) => Some(sink.kind),
                    _ => None,
                },
            }
        };
        if matches!(kind, Some(Kind::Stream | Kind::Monitor)) {
            let (tx, _) = oneshot::channel();
            let waiter = Waiter::Reply {
                command: "stop",
                body: false,
                tx,
            };
            // An error means the connection is gone, and the stream with it.
            let _ = self.send("stop", Some(&proto::Stop { stop: seq }), waiter);
        }
    }

    /// Fails every waiting request with `Closed` (their senders drop), ends
    /// every subscription and wakes `closed()`. Idempotent.
    fn close(&self) {
        let gone = {
            let mut routes = self.routes.lock();
            routes.closed = true;
            routes.deadlines.clear();
            (
                std::mem::take(&mut routes.waiting),
                std::mem::take(&mut routes.records),
            )
        };
        // Our half hangs up (once the reader's half is gone too, the socket).
        let wire = self.out.lock().wire.take();
        drop(wire);
        drop(gone);
        self.closed.send_replace(true);
    }

    fn closed_error(&self) -> RpcError {
        RpcError::Closed { addr: self.addr }
    }
}

impl Client {
    /// Connects to the agent's RPC address, performs the handshake and, with
    /// `auth_key`, authenticates. Each step is bounded by [`DEFAULT_TIMEOUT`].
    pub async fn connect(addr: SocketAddr, auth_key: Option<&str>) -> Result<Client> {
        Self::connect_within(addr, auth_key, None, DEFAULT_TIMEOUT).await
    }

    /// [`Client::connect`] to the agent process `agent` names: right after
    /// the handshake (whose reply proves the peer accepted the connection)
    /// and before the key is sent, the connection's server end must be a
    /// socket of that process (see [`super::peer`]); else
    /// [`RpcError::Untrusted`] and nothing is sent.
    pub async fn connect_checked(
        addr: SocketAddr,
        auth_key: Option<&str>,
        agent: Option<&AgentPid>,
    ) -> Result<Client> {
        Self::connect_within(addr, auth_key, agent, DEFAULT_TIMEOUT).await
    }

    pub(crate) async fn connect_within(
        addr: SocketAddr,
        auth_key: Option<&str>,
        agent: Option<&AgentPid>,
        timeout: Duration,
    ) -> Result<Client> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| RpcError::Timeout { command: "connect" })?
            .map_err(|source| RpcError::Io { addr, source })?;
        // Requests are small and often back to back: do not let Nagle hold them.
        stream
            .set_nodelay(true)
            .map_err(|source| RpcError::Io { addr, source })?;
        let ends = (stream.local_addr(), stream.peer_addr());
        let local = ends.0.as_ref().ok().copied();
        let (read, write) = stream.into_split();
        let client = Client::spawn(addr, local, auth_key.map(str::to_owned), read, write)
            .with_timeout(timeout)
            .checked_against(agent);
        client
            .call("handshake", Some(&proto::Handshake { version: 1 }), false)
            .await?;
        if let Some(agent) = agent {
            let (local, peer) = match ends {
                (Ok(l), Ok(p)) => (l, p),
                (Err(source), _) | (_, Err(source)) => return Err(RpcError::Io { addr, source }),
            };
            peer::check(agent, local, peer)?;
        }
        if let Some(key) = auth_key {
            client
                .call("auth", Some(&proto::Auth { auth_key: key }), false)
                .await?;
        }
        Ok(client)
    }

    /// Spawns the connection's tasks over a socket's halves.
    fn spawn<R>(
        addr: SocketAddr,
        local: Option<SocketAddr>,
        auth_key: Option<String>,
        read: R,
        write: OwnedWriteHalf,
    ) -> Client
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared {
            addr,
            local,
            auth_key,
            agent: Mutex::new(None),
            next_seq: AtomicU64::new(0),
            routes: Mutex::new(Routes {
                waiting: HashMap::new(),
                records: HashMap::new(),
                deadlines: BTreeSet::new(),
                closed: false,
            }),
            out: Mutex::new(Out {
                wire: Some(Arc::new(write)),
                queued: Vec::new(),
            }),
            flush: Notify::new(),
            sweep: Notify::new(),
            closed: watch::channel(false).0,
        });
        tokio::spawn(flush_loop(shared.clone()));
        tokio::spawn(sweep_loop(shared.clone()));
        tokio::spawn(read_loop(read, shared.clone()));
        Client {
            handle: Arc::new(Handle(shared)),
            timeout: DEFAULT_TIMEOUT,
            slow_timeout: DEFAULT_SLOW_TIMEOUT,
        }
    }

    /// Remembers `agent` for the side connections (set before any is made).
    fn checked_against(self, agent: Option<&AgentPid>) -> Client {
        if let Some(agent) = agent {
            *self.shared().agent.lock() = Some(agent.clone());
        }
        self
    }

    /// This handle with another bound on fast commands (stream and query acks included).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// This handle with another bound on the slow commands.
    pub fn with_slow_timeout(mut self, timeout: Duration) -> Client {
        self.slow_timeout = timeout;
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared().addr
    }

    /// Our end of the connection, as the agent names this client in its log
    /// (`ipc.client: ADDR`); unknown for a connection not made by `connect`.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared().local
    }

    pub fn is_closed(&self) -> bool {
        *self.shared().closed.borrow()
    }

    /// Resolves once the connection is gone (agent died or restarted, socket
    /// error, protocol error).
    pub async fn closed(&self) {
        wait_closed(&mut self.shared().closed.subscribe()).await;
    }

    fn shared(&self) -> &Shared {
        &self.handle.0
    }

    /// Queues one request; the receiver gets its reply: the raw body when
    /// `body`, else empty.
    fn request<B: Serialize>(
        &self,
        command: &'static str,
        req: Option<&B>,
        body: bool,
    ) -> Result<oneshot::Receiver<Result<Vec<u8>>>> {
        let (tx, rx) = oneshot::channel();
        self.shared()
            .send(command, req, Waiter::Reply { command, body, tx })?;
        Ok(rx)
    }

    async fn reply(
        &self,
        command: &'static str,
        rx: oneshot::Receiver<Result<Vec<u8>>>,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        // On timeout the route stays: the late reply is still consumed in
        // order, then dropped.
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(RpcError::Timeout { command }),
            Ok(Err(_)) => Err(self.shared().closed_error()),
            Ok(Ok(reply)) => reply,
        }
    }

    async fn call<B: Serialize>(
        &self,
        command: &'static str,
        req: Option<&B>,
        body: bool,
    ) -> Result<Vec<u8>> {
        let rx = self.request(command, req, body)?;
        self.reply(command, rx, self.timeout).await
    }

    async fn fetch<B: Serialize, T: DeserializeOwned>(
        &self,
        command: &'static str,
        req: Option<&B>,
    ) -> Result<T> {
        let body = self.call(command, req, true).await?;
        decode(command, &body)
    }

    /// A fresh connection for a command that keeps the agent busy for
    /// seconds: the agent serves one connection's requests in order, so it
    /// would stall everything queued behind it here.
    async fn side_connection(&self) -> Result<Client> {
        let shared = self.shared();
        let agent = shared.agent.lock().clone();
        let side = Client::connect_within(
            shared.addr,
            shared.auth_key.as_deref(),
            agent.as_ref(),
            self.timeout,
        )
        .await?;
        Ok(side.with_timeout(self.slow_timeout))
    }

    /// Every member the agent knows, left and failed ones included until reaped.
    pub async fn members(&self) -> Result<Vec<Member>> {
        let resp: proto::MembersResponse = self.fetch("members", NO_BODY).await?;
        Ok(resp.members)
    }

    /// Members whose tags, status and name match anchored Go regular
    /// expressions (`None`: any). An invalid expression makes the agent drop
    /// the connection without a reply.
    pub async fn members_filtered(
        &self,
        tags: &BTreeMap<String, String>,
        status: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<Member>> {
        let req = proto::MembersFiltered {
            tags,
            status: status.unwrap_or(""),
            name: name.unwrap_or(""),
        };
        let resp: proto::MembersResponse = self.fetch("members-filtered", Some(&req)).await?;
        Ok(resp.members)
    }

    /// Subscribes to events: `"*"`, or a comma-separated list such as
    /// `"member-join,user:deploy,query"`. Resolves once the agent acked, so
    /// every event after this point is delivered (subscribe, then snapshot).
    pub async fn stream(&self, filter: &str) -> Result<Subscription> {
        let (seq, rx, dropped) = self
            .subscribe("stream", &proto::Stream { filter }, Kind::Stream)
            .await?;
        Ok(Subscription {
            client: self.clone(),
            seq,
            rx,
            dropped,
            seen: 0,
        })
    }

    /// Subscribes to the agent's log at `level` (`"INFO"`, …): the agent
    /// first replays its recent lines (up to 512), then sends each new one.
    /// One per connection (the agent refuses a second). Lines are dropped
    /// by the agent when this subscriber lags (its 512-line buffer), and
    /// here past [`RECORD_BUFFER`]: a log line is a hint, never a record.
    pub async fn monitor(&self, level: &str) -> Result<LogSubscription> {
        let (seq, rx, dropped) = self
            .subscribe(
                "monitor",
                &proto::Monitor { log_level: level },
                Kind::Monitor,
            )
            .await?;
        Ok(LogSubscription {
            client: self.clone(),
            seq,
            rx,
            dropped,
        })
    }

    /// Starts a query; its acks and responses arrive on the subscription,
    /// which ends at the query's timeout.
    pub async fn query(&self, params: QueryParams) -> Result<QuerySubscription> {
        let req = proto::Query::from(&params);
        let (seq, rx, dropped) = self.subscribe("query", &req, Kind::Query).await?;
        Ok(QuerySubscription {
            client: self.clone(),
            seq,
            rx,
            dropped,
        })
    }

    async fn subscribe<B: Serialize>(
        &self,
        command: &'static str,
        req: &B,
        kind: Kind,
    ) -> Result<(u64, mpsc::Receiver<Queued>, Arc<AtomicU64>)> {
        let (records, rx) = mpsc::channel(RECORD_BUFFER);
        let dropped = Arc::new(AtomicU64::new(0));
        let sink = Sink {
            kind,
            tx: records,
            dropped: dropped.clone(),
        };
        let (tx, ack) = oneshot::channel();
        let seq = self
            .shared()
            .send(command, Some(req), Waiter::Ack { command, tx, sink })?;
        // On timeout the route stays; a late ack finds no one and unsubscribes.
        match tokio::time::timeout(self.timeout, ack).await {
            Err(_) => Err(RpcError::Timeout { command }),
            Ok(Err(_)) => Err(self.shared().closed_error()),
            Ok(Ok(ack)) => ack.map(|()| (seq, rx, dropped)),
        }
    }

    /// Sends a user event. `coalesce: false` reaches other agents in about
    /// one gossip tick; coalesced events wait ~1 s and same-name bursts collapse.
    pub async fn event(&self, name: &str, payload: &[u8], coalesce: bool) -> Result<()> {
        let req = proto::Event {
            name,
            payload,
            coalesce,
        };
        self.call("event", Some(&req), false).await.map(drop)
    }

    /// Tells connections apart: two handles on one connection give the same.
    pub fn id(&self) -> usize {
        Arc::as_ptr(&self.handle.0) as usize
    }

    /// A blocking connection to the same agent, checked as this one was
    /// (see [`super::direct`]), made within `within`.
    pub fn direct(&self, within: Duration) -> Result<super::Direct> {
        let shared = self.shared();
        let agent = shared.agent.lock().clone();
        super::Direct::connect(
            shared.addr,
            shared.auth_key.as_deref(),
            agent.as_ref(),
            within,
        )
    }

    /// Sends a user event without waiting: the request is written from the
    /// calling thread, which need not be in the runtime, and `then` gets
    /// the verdict, exactly once: the agent's answer or `Closed` on the
    /// connection's reader, or `Timeout` from its sweeper once `within` is
    /// up. `then` must not block (it holds up the connection's replies).
    pub fn event_then(
        &self,
        name: &str,
        payload: &[u8],
        coalesce: bool,
        within: Duration,
        then: impl FnOnce(Result<()>) + Send + 'static,
    ) {
        let req = proto::Event {
            name,
            payload,
            coalesce,
        };
        let shared = self.shared();
        let waiter = Waiter::Then {
            command: "event",
            then: Then {
                f: Some(Box::new(then)),
                addr: shared.addr,
            },
            deadline: Instant::now() + within,
        };
        // An error has already called `then` (with `Closed`).
        let _ = shared.send("event", Some(&req), waiter);
    }

    /// Answers the query record `id` of one of this connection's streams.
    pub async fn respond(&self, id: u64, payload: &[u8]) -> Result<()> {
        self.call("respond", Some(&proto::Respond { id, payload }), false)
            .await
            .map(drop)
    }

    /// Joins the agents at `addrs` (`host:port`); returns how many it
    /// reached. `replay`: also deliver past user events. On its own connection.
    pub async fn join(&self, addrs: &[String], replay: bool) -> Result<u32> {
        let req = proto::Join {
            existing: addrs,
            replay,
        };
        let resp: proto::JoinResponse = self
            .side_connection()
            .await?
            .fetch("join", Some(&req))
            .await?;
        Ok(resp.num)
    }

    /// Sets `set` and removes `delete` from this agent's tags. On its own
    /// connection: the agent takes ~1.5 s.
    pub async fn tags(&self, set: &BTreeMap<String, String>, delete: &[String]) -> Result<()> {
        let req = proto::Tags {
            tags: set,
            delete_tags: delete,
        };
        self.side_connection()
            .await?
            .call("tags", Some(&req), false)
            .await
            .map(drop)
    }

    /// Leaves the cluster gracefully; the agent then shuts down.
    pub async fn leave(&self) -> Result<()> {
        // Closed already: an error. Closed once the request is out: the
        // agent shutting down before its reply got out.
        let rx = self.request("leave", NO_BODY, false)?;
        match self.reply("leave", rx, self.slow_timeout).await {
            Ok(_) | Err(RpcError::Closed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Marks a failed node as left; `prune` also forgets it at once.
    pub async fn force_leave(&self, node: &str, prune: bool) -> Result<()> {
        self.call(
            "force-leave",
            Some(&proto::ForceLeave { node, prune }),
            false,
        )
        .await
        .map(drop)
    }

    /// Section (`agent`, `runtime`, `serf`, `tags`, …) → key → value.
    pub async fn stats(&self) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
        let resp: proto::StatsResponse = self.fetch("stats", NO_BODY).await?;
        Ok(resp
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect())
    }

    /// The agent's cached coordinate for `node`; `None` when it has none.
    pub async fn get_coordinate(&self, node: &str) -> Result<Option<Coordinate>> {
        let resp: proto::CoordinateResponse = self
            .fetch("get-coordinate", Some(&proto::CoordinateRequest { node }))
            .await?;
        Ok(resp.ok.then_some(resp.coord))
    }

    /// Installs `key` (base64) in every member's keyring.
    pub async fn install_key(&self, key: &str) -> Result<KeyResponse> {
        self.keyring("install-key", Some(&proto::Key { key })).await
    }

    /// Makes `key` the primary encryption key of every member.
    pub async fn use_key(&self, key: &str) -> Result<KeyResponse> {
        self.keyring("use-key", Some(&proto::Key { key })).await
    }

    /// Removes `key` from every member's keyring (not the primary).
    pub async fn remove_key(&self, key: &str) -> Result<KeyResponse> {
        self.keyring("remove-key", Some(&proto::Key { key })).await
    }

    /// Every key in use in the cluster and how many members have it. An
    /// agent without encryption answers with an error.
    pub async fn list_keys(&self) -> Result<KeyResponse> {
        self.keyring("list-keys", NO_BODY).await
    }

    /// A keyring command (`list-keys`, `install-key`, `use-key`,
    /// `remove-key`) as `serfnode keys` runs it: the agent's error (empty
    /// when none) and its per-node report, which the agent sends with most
    /// errors too ([`Client::list_keys`] and the others drop it with the
    /// error). Bounded by the slow timeout.
    pub async fn keyring_report(
        &self,
        command: &'static str,
        key: Option<&str>,
    ) -> Result<(String, Option<KeyResponse>)> {
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter::Report { command, tx };
        match key {
            Some(key) => self
                .shared()
                .send(command, Some(&proto::Key { key }), waiter)?,
            None => self.shared().send(command, NO_BODY, waiter)?,
        };
        let (error, body) = match tokio::time::timeout(self.slow_timeout, rx).await {
            Err(_) => return Err(RpcError::Timeout { command }),
            Ok(Err(_)) => return Err(self.shared().closed_error()),
            Ok(Ok(reply)) => reply?,
        };
        let report = body.map(|b| decode(command, &b)).transpose()?;
        Ok((error, report))
    }

    /// The keyring commands run an internal query across the cluster and
    /// wait for it: on their own connection, like `join`.
    async fn keyring<B: Serialize>(
        &self,
        command: &'static str,
        req: Option<&B>,
    ) -> Result<KeyResponse> {
        self.side_connection().await?.fetch(command, req).await
    }
}

pub(super) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    rmp_serde::from_slice(bytes).map_err(|e| RpcError::Decode(format!("{what}: {e}")))
}

/// Events from a [`Client::stream`]. Dropping it stops the stream at the agent.
pub struct Subscription {
    client: Client,
    seq: u64,
    rx: mpsc::Receiver<Queued>,
    dropped: Arc<AtomicU64>,
    /// Drops accounted for by the records received so far.
    seen: u64,
}

impl Subscription {
    /// The next record; `None` once the connection closed. Cancel-safe.
    pub async fn recv(&mut self) -> Option<StreamRecord> {
        self.next().await.map(|(_, record)| record)
    }

    /// The next record and how many records were dropped just before it
    /// because this subscriber fell behind; `None` once the connection
    /// closed. Cancel-safe.
    pub async fn next(&mut self) -> Option<(u64, StreamRecord)> {
        loop {
            let (before, body) = self.rx.recv().await?;
            let lost = before - self.seen;
            let record = decode::<proto::WireRecord>("stream record", &body)
                .map(proto::WireRecord::into_record);
            match record {
                Ok(Ok(record)) => {
                    self.seen = before;
                    return Some((lost, record));
                }
                Ok(Err(event)) => debug!(event, "skipping a stream record of unknown kind"),
                Err(e) => warn!("skipping a stream record: {e}"),
            }
        }
    }

    /// Records dropped after the last one received (e.g. before the
    /// connection closed).
    pub fn dropped_since_last(&self) -> u64 {
        self.dropped() - self.seen
    }

    /// Records lost so far because this subscriber fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.client.shared().unsubscribe(self.seq);
    }
}

/// The agent's log lines, from a [`Client::monitor`]. Dropping it stops
/// the monitor at the agent.
pub struct LogSubscription {
    client: Client,
    seq: u64,
    rx: mpsc::Receiver<Queued>,
    dropped: Arc<AtomicU64>,
}

impl LogSubscription {
    /// The next log line (one call of the agent's logger, which may span
    /// lines), or why a record could not be decoded; `None` once the
    /// connection closed. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Result<String>> {
        let (_, body) = self.rx.recv().await?;
        Some(decode::<proto::LogRecord>("log record", &body).map(|r| r.log))
    }

    /// A line already queued, without waiting; `None` when none is (or the
    /// connection closed: [`LogSubscription::recv`] tells).
    pub fn try_recv(&mut self) -> Option<Result<String>> {
        let (_, body) = self.rx.try_recv().ok()?;
        Some(decode::<proto::LogRecord>("log record", &body).map(|r| r.log))
    }

    /// Lines lost so far on serfnode's side because this subscriber fell
    /// behind (the agent's own drops are not counted here).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for LogSubscription {
    fn drop(&mut self) {
        self.client.shared().unsubscribe(self.seq);
    }
}

/// Progress of a [`Client::query`].
pub struct QuerySubscription {
    client: Client,
    seq: u64,
    rx: mpsc::Receiver<Queued>,
    dropped: Arc<AtomicU64>,
}

impl QuerySubscription {
    /// The next ack or response, then `Done`; `None` after that or once the
    /// connection closed. Cancel-safe.
    pub async fn recv(&mut self) -> Option<QueryRecord> {
        loop {
            let (_, body) = self.rx.recv().await?;
            match decode::<proto::WireQueryRecord>("query record", &body)
                .map(proto::WireQueryRecord::into_record)
            {
                // The agent can relay a response without a sender: useless.
                Ok(Ok(QueryRecord::Response { from, .. })) if from.is_empty() => {}
                Ok(Ok(record)) => return Some(record),
                Ok(Err(kind)) => debug!(kind, "skipping a query record of unknown type"),
                Err(e) => warn!("skipping a query record: {e}"),
            }
        }
    }

    /// Records lost so far because this subscriber fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for QuerySubscription {
    fn drop(&mut self) {
        self.client.shared().unsubscribe(self.seq);
    }
}

async fn wait_closed(closed: &mut watch::Receiver<bool>) {
    // Err: the sender, in `Shared`, is gone, and so is the connection.
    let _ = closed.wait_for(|closed| *closed).await;
}

/// Writes what the socket did not take at once (see [`Out`]).
async fn flush_loop(shared: Arc<Shared>) {
    let mut closed = shared.closed.subscribe();
    let why = 'conn: loop {
        tokio::select! {
            () = wait_closed(&mut closed) => return,
            () = shared.flush.notified() => {}
        }
        loop {
            // Ok(None): all written; Ok(Some(wire)): wait for room on it.
            let step = {
                let mut out = shared.out.lock();
                let Some(wire) = out.wire.clone() else { return };
                if out.queued.is_empty() {
                    break;
                }
                match wire.try_write(&out.queued) {
                    Ok(0) => Err(io::Error::from(io::ErrorKind::WriteZero)),
                    Ok(n) => {
                        out.queued.drain(..n);
                        Ok(None)
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Some(wire)),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
                    Err(e) => Err(e),
                }
            };
            match step {
                Ok(None) => {}
                Ok(Some(wire)) => tokio::select! {
                    () = wait_closed(&mut closed) => return,
                    r = wire.writable() => if let Err(e) = r { break 'conn e },
                },
                Err(e) => break 'conn e,
            }
        }
    };
    debug!(addr = %shared.addr, "rpc write failed: {why}");
    shared.close();
}

/// Times out `Then` waiters (see [`Client::event_then`]): asleep until the
/// first deadline, woken when an earlier one is set.
async fn sweep_loop(shared: Arc<Shared>) {
    let mut closed = shared.closed.subscribe();
    loop {
        let next = shared.expire(Instant::now());
        let due = next.unwrap_or_else(Instant::now);
        tokio::select! {
            () = wait_closed(&mut closed) => return,
            () = shared.sweep.notified() => {}
            () = tokio::time::sleep_until(due.into()), if next.is_some() => {}
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(mut read: R, shared: Arc<Shared>) {
    let mut closed = shared.closed.subscribe();
    let mut reader = Reader {
        shared: &shared,
        pending_body: None,
    };
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut scanner = codec::Scanner::default();
    let why = 'conn: loop {
        let mut start = 0;
        loop {
            match scanner.scan(&buf[start..]) {
                Ok(Some(len)) => {
                    reader.on_frame(&buf[start..start + len]);
                    start += len;
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(addr = %shared.addr, "rpc reply undecodable, dropping the connection: {e}");
                    break 'conn "undecodable reply".to_owned();
                }
            }
        }
        buf.drain(..start);
        // A full `members` reply grows the buffer to megabytes; between
        // those rare reads it holds a few small records.
        if buf.is_empty() && buf.capacity() > 1 << 20 {
            buf = Vec::with_capacity(16 * 1024);
        }
        tokio::select! {
            () = wait_closed(&mut closed) => break "closed by the client".to_owned(),
            n = read.read_buf(&mut buf) => match n {
                Ok(0) => break "closed by the agent".to_owned(),
                Ok(_) => {}
                Err(e) => break e.to_string(),
            },
        }
    };
    debug!(addr = %shared.addr, "rpc connection ends: {why}");
    shared.close();
}

/// A body the next frame must be.
enum Body {
    Reply {
        command: &'static str,
        tx: oneshot::Sender<Result<Vec<u8>>>,
    },
    Report {
        command: &'static str,
        error: String,
        tx: oneshot::Sender<Result<(String, Option<Vec<u8>>)>>,
    },
    Record {
        seq: u64,
        sink: Sink,
    },
}

/// Routes frames by Seq. Invariant: after a header, the next frame is its
/// body when the route says one follows; any other non-header frame is a
/// stray body (of a stopped stream, or an error reply that still carries one)
/// and is skipped, which keeps the reader in step with the agent.
struct Reader<'a> {
    shared: &'a Shared,
    pending_body: Option<Body>,
}

impl Reader<'_> {
    fn on_frame(&mut self, frame: &[u8]) {
        let header = codec::maybe_header(frame)
            .then(|| codec::as_header(&codec::value_of(frame)))
            .flatten();
        match (self.pending_body.take(), header) {
            (Some(body), None) => self.on_body(body, frame),
            (pending, Some(header)) => {
                let without =
                    |command| RpcError::Decode(format!("{command}: reply without its body"));
                match pending {
                    Some(Body::Reply { command, tx }) => {
                        let _ = tx.send(Err(without(command)));
                    }
                    Some(Body::Report { command, tx, .. }) => {
                        let _ = tx.send(Err(without(command)));
                    }
                    _ => {}
                }
                self.on_header(header);
            }
            (None, None) => debug!(addr = %self.shared.addr, "skipping a stray reply body"),
        }
    }

    fn on_body(&mut self, body: Body, frame: &[u8]) {
        match body {
            Body::Reply { tx, .. } => {
                let _ = tx.send(Ok(frame.to_vec()));
            }
            Body::Report { error, tx, .. } => {
                let _ = tx.send(Ok((error, Some(frame.to_vec()))));
            }
            Body::Record { seq, sink } => {
                sink.push(seq, frame.to_vec());
                // Nothing follows a query's `done`: closing the channel ends
                // the subscription even if `done` itself was dropped.
                if sink.kind == Kind::Query
                    && codec::str_field(&codec::value_of(frame), "Type") == Some(proto::QUERY_DONE)
                {
                    self.shared.routes.lock().records.remove(&seq);
                }
            }
        }
    }

    fn on_header(&mut self, Header { seq, error }: Header) {
        let mut routes = self.shared.routes.lock();
        if let Some(sink) = routes.records.get(&seq) {
            self.pending_body = Some(Body::Record {
                seq,
                sink: sink.clone(),
            });
            return;
        }
        // Unknown Seq: a record of a stopped stream, or a duplicate reply (see
        // "Authentication required"); a body that follows is skipped as stray.
        let Some(waiter) = routes.waiting.remove(&seq) else {
            return;
        };
        match waiter {
            Waiter::Reply { command, body, tx } => {
                drop(routes);
                if !error.is_empty() {
                    let _ = tx.send(Err(RpcError::Agent {
                        command,
                        message: error,
                    }));
                } else if body {
                    self.pending_body = Some(Body::Reply { command, tx });
                } else {
                    let _ = tx.send(Ok(Vec::new()));
                }
            }
            Waiter::Then { command, then, .. } => {
                drop(routes);
                // Called without the lock: it may send the next request.
                then.call(if error.is_empty() {
                    Ok(())
                } else {
                    Err(RpcError::Agent {
                        command,
                        message: error,
                    })
                });
            }
            Waiter::Report { command, tx } => {
                drop(routes);
                // Refusals before the command ran come without a report.
                if error == "Authentication required"
                    || error.starts_with("Unsupported command")
                    || error == "Handshake required"
                {
                    let _ = tx.send(Ok((error, None)));
                } else {
                    self.pending_body = Some(Body::Report { command, error, tx });
                }
            }
            Waiter::Ack { command, tx, sink } => {
                if error.is_empty() {
                    routes.records.insert(seq, sink);
                }
                drop(routes);
                let ack = if error.is_empty() {
                    Ok(())
                } else {
                    Err(RpcError::Agent {
                        command,
                        message: error,
                    })
                };
                if tx.send(ack).is_err() {
                    // The subscriber gave up waiting for this ack.
                    self.shared.unsubscribe(seq);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The connection task against a scripted wire ([`Script`]) on an
    //! in-memory pipe, replaying recorded bodies.

    use super::*;
    use crate::cluster::rpc::MemberStatus;
    use rmpv::Value;
    use tokio::io::AsyncWriteExt;

    const MEMBERS: &[u8] = include_bytes!("testdata/members.bin");
    const RECORD_USER: &[u8] = include_bytes!("testdata/record_user.bin");
    const RECORD_JOIN: &[u8] = include_bytes!("testdata/record_member_join.bin");
    const RECORD_QUERY: &[u8] = include_bytes!("testdata/record_query.bin");

    /// A client on a loopback socket whose other end is the script's.
    async fn pair() -> (Client, Script) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (ours, (theirs, _)) = (ours.unwrap(), theirs.unwrap());
        // Byte-by-byte replies go out as they are written.
        theirs.set_nodelay(true).unwrap();
        let (read, write) = ours.into_split();
        (
            Client::spawn(addr, None, None, read, write),
            Script {
                io: theirs,
                buf: Vec::new(),
            },
        )
    }

    fn encode(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, value).unwrap();
        out
    }

    fn header(seq: u64, error: &str) -> Vec<u8> {
        encode(&Value::Map(vec![
            ("Error".into(), error.into()),
            ("Seq".into(), seq.into()),
        ]))
    }

    fn query_record(kind: &str, from: &str, payload: &[u8]) -> Vec<u8> {
        encode(&Value::Map(vec![
            ("From".into(), from.into()),
            ("Payload".into(), Value::Binary(payload.to_vec())),
            ("Type".into(), kind.into()),
        ]))
    }

    /// The agent's side of the pipe, scripted byte by byte by each test:
    /// replies cut at any byte, stray records, error headers. Not a second
    /// fake agent: the one fake agent with cluster behaviour (members, the
    /// stream, monitor, over TCP) is the test kit's `FakeAgent`; this is the
    /// wire under the client, which no agent can be made to misbehave on.
    struct Script {
        io: TcpStream,
        buf: Vec<u8>,
    }

    impl Script {
        /// Answers a `list-keys` as an agent without encryption does: an
        /// error header, and the per-node report all the same.
        async fn list_keys_failed_with_report(&mut self) {
            let (cmd, seq, _) = self.request().await;
            assert_eq!(cmd, "list-keys");
            let body = include_bytes!("testdata/keys_unencrypted.bin");
            self.reply(seq, "4/4 nodes reported failure", Some(body))
                .await;
        }

        async fn frame(&mut self) -> Value {
            loop {
                let mut rest = &self.buf[..];
                if let Ok(value) = rmpv::decode::read_value(&mut rest) {
                    self.buf.drain(..self.buf.len() - rest.len());
                    return value;
                }
                assert_ne!(
                    self.io.read_buf(&mut self.buf).await.unwrap(),
                    0,
                    "client hung up"
                );
            }
        }

        /// The next request: command, Seq and body.
        async fn request(&mut self) -> (String, u64, Option<Value>) {
            let header = self.frame().await;
            let command = header["Command"].as_str().unwrap().to_owned();
            let seq = header["Seq"].as_u64().unwrap();
            let has_body = !matches!(
                command.as_str(),
                "members" | "leave" | "list-keys" | "stats"
            );
            let body = match has_body {
                true => Some(self.frame().await),
                false => None,
            };
            (command, seq, body)
        }

        async fn reply(&mut self, seq: u64, error: &str, body: Option<&[u8]>) {
            let mut bytes = header(seq, error);
            bytes.extend_from_slice(body.unwrap_or_default());
            self.io.write_all(&bytes).await.unwrap();
        }

        /// Writes one byte at a time, letting the client read each.
        async fn trickle(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.io.write_all(&[*b]).await.unwrap();
                tokio::task::yield_now().await;
            }
        }

        async fn subscribe(&mut self, command: &str) -> u64 {
            let (cmd, seq, _) = self.request().await;
            assert_eq!(cmd, command);
            self.reply(seq, "", None).await;
            seq
        }

        /// Serves one `members` request.
        async fn members(&mut self) {
            let (cmd, seq, _) = self.request().await;
            assert_eq!(cmd, "members");
            self.reply(seq, "", Some(MEMBERS)).await;
        }
    }

    async fn stream(client: &Client, agent: &mut Script) -> (Subscription, u64) {
        let (sub, seq) = tokio::join!(client.stream("*"), agent.subscribe("stream"));
        (sub.unwrap(), seq)
    }

    #[tokio::test]
    async fn a_reply_fed_byte_by_byte_decodes_whole() {
        let (client, mut agent) = pair().await;
        let serve = async {
            let (cmd, seq, body) = agent.request().await;
            assert_eq!((cmd.as_str(), body), ("members", None));
            let mut bytes = header(seq, "");
            bytes.extend_from_slice(MEMBERS);
            agent.trickle(&bytes).await;
        };
        let (members, ()) = tokio::join!(client.members(), serve);
        let members = members.unwrap();
        assert_eq!(members.len(), 4);
        assert_eq!(members[3].status, MemberStatus::Left);
    }

    #[tokio::test]
    async fn records_of_a_stopped_stream_are_skipped() {
        let (client, mut agent) = pair().await;
        let (mut sub, seq) = stream(&client, &mut agent).await;
        agent.reply(seq, "", Some(RECORD_USER)).await;
        assert!(matches!(sub.recv().await, Some(StreamRecord::User { .. })));

        drop(sub);
        let (cmd, stop_seq, body) = agent.request().await;
        assert_eq!(cmd, "stop");
        assert_eq!(body.unwrap()["Stop"].as_u64(), Some(seq));
        // Records the agent had queued still come, around the stop's ack.
        agent.reply(seq, "", Some(RECORD_JOIN)).await;
        agent.reply(stop_seq, "", None).await;
        agent.reply(seq, "", Some(RECORD_QUERY)).await;
        // The reader stays in step.
        let (members, ()) = tokio::join!(client.members(), agent.members());
        assert_eq!(members.unwrap().len(), 4);
    }

    #[tokio::test]
    async fn a_keyring_report_comes_with_its_error_and_a_refusal_without_one() {
        let (client, mut agent) = pair().await;
        let serve = async {
            agent.list_keys_failed_with_report().await;
            let (cmd, seq, _) = agent.request().await;
            assert_eq!(cmd, "use-key");
            agent.reply(seq, "Authentication required", None).await;
            agent.members().await;
        };
        let asks = async {
            let listed = client.keyring_report("list-keys", None).await.unwrap();
            let used = client.keyring_report("use-key", Some("k")).await.unwrap();
            (listed, used, client.members().await)
        };
        let (((error, report), used, members), ()) = tokio::join!(asks, serve);
        assert_eq!(error, "4/4 nodes reported failure");
        assert_eq!(report.unwrap().num_err, 4);
        assert_eq!(used, ("Authentication required".to_string(), None));
        assert_eq!(members.unwrap().len(), 4);
    }

    /// The agent refused `command`, and the members asked after it still came.
    fn refused_then_members<T: std::fmt::Debug>(
        res: Result<T>,
        command: &str,
        members: Result<Vec<Member>>,
    ) {
        assert!(
            matches!(&res, Err(RpcError::Agent { command: c, .. }) if *c == command),
            "{res:?}"
        );
        assert_eq!(members.unwrap().len(), 4);
    }

    #[tokio::test]
    async fn agent_errors_with_and_without_a_body() {
        let (client, mut agent) = pair().await;
        let limit = "user event exceeds configured limit of 512 bytes before encoding";
        let serve = async {
            let (cmd, seq, body) = agent.request().await;
            assert_eq!(cmd, "event");
            assert_eq!(body.unwrap()["Payload"], Value::Binary(vec![b'x'; 600]));
            agent.reply(seq, limit, None).await;
        };
        let (res, ()) = tokio::join!(client.event("big", &[b'x'; 600], false), serve);
        let err = res.unwrap_err();
        assert!(matches!(&err, RpcError::Agent { command: "event", message } if message == limit));
        assert_eq!(err.to_string(), format!("event: {limit}"));

        // Keyring errors still carry a body; it must not be taken for a reply.
        let serve = async {
            agent.list_keys_failed_with_report().await;
            agent.members().await;
        };
        let (keys, members, ()) = tokio::join!(
            client.fetch::<_, KeyResponse>("list-keys", NO_BODY),
            client.members(),
            serve
        );
        refused_then_members(keys, "list-keys", members);

        // "Authentication required" comes without a body even for commands that have one.
        let serve = async {
            let (cmd, seq, _) = agent.request().await;
            assert_eq!(cmd, "members-filtered");
            agent.reply(seq, "Authentication required", None).await;
            agent.members().await;
        };
        let tags = BTreeMap::new();
        let (filtered, members, ()) = tokio::join!(
            client.members_filtered(&tags, None, None),
            client.members(),
            serve
        );
        refused_then_members(filtered, "members-filtered", members);
    }

    #[tokio::test]
    async fn a_slow_subscriber_loses_records_not_the_connection() {
        let (client, mut agent) = pair().await;
        let (mut sub, seq) = stream(&client, &mut agent).await;
        for _ in 0..RECORD_BUFFER + 5 {
            agent.reply(seq, "", Some(RECORD_USER)).await;
        }
        let (members, ()) = tokio::join!(client.members(), agent.members());
        assert_eq!(members.unwrap().len(), 4);
        assert_eq!(sub.dropped(), 5);
        // The queued records come first, then the loss shows before the
        // first record queued after it.
        for _ in 0..RECORD_BUFFER {
            assert!(matches!(sub.next().await, Some((0, _))));
        }
        assert_eq!(sub.dropped_since_last(), 5);
        agent.reply(seq, "", Some(RECORD_USER)).await;
        assert!(matches!(sub.next().await, Some((5, _))));
        assert_eq!(sub.dropped_since_last(), 0);
    }

    #[tokio::test]
    async fn everything_ends_when_the_agent_goes_away() {
        let (client, mut agent) = pair().await;
        let (mut sub, _) = stream(&client, &mut agent).await;
        let pending = client.members();
        let hang_up = async {
            agent.request().await;
            drop(agent);
        };
        let (pending, ()) = tokio::join!(pending, hang_up);
        assert!(matches!(pending, Err(RpcError::Closed { .. })));
        client.closed().await;
        assert!(client.is_closed());
        assert_eq!(sub.recv().await, None);
        let err = client.stats().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("rpc connection to {} closed", client.addr())
        );
    }

    #[tokio::test]
    async fn dropping_the_last_handle_hangs_up() {
        let (client, mut agent) = pair().await;
        let (mut sub, seq) = stream(&client, &mut agent).await;
        drop(client);
        // The subscription alone keeps the connection.
        agent.reply(seq, "", Some(RECORD_USER)).await;
        assert!(sub.recv().await.is_some());
        drop(sub);
        // The agent sees the end (maybe after a best-effort stop).
        let mut rest = Vec::new();
        agent.io.read_to_end(&mut rest).await.unwrap();
    }

    type Verdicts = mpsc::UnboundedReceiver<(usize, Result<()>)>;
    type Callback = Box<dyn FnOnce(Result<()>) + Send>;

    /// Collects `event_then` verdicts in call order.
    fn verdicts() -> (impl Fn(usize) -> Callback, Verdicts) {
        let (tx, rx) = mpsc::unbounded_channel();
        let make = move |i: usize| -> Callback {
            let tx = tx.clone();
            Box::new(move |r| tx.send((i, r)).unwrap())
        };
        (make, rx)
    }

    #[tokio::test]
    async fn an_event_then_gets_exactly_one_verdict() {
        let (client, mut agent) = pair().await;
        let (then, mut got) = verdicts();
        // Made on a thread outside the runtime, as a FUSE worker makes them.
        let c = client.clone();
        let long = Duration::from_secs(30);
        let then0 = then(0);
        let then1 = then(1);
        std::thread::spawn(move || {
            c.event_then("a", b"1", false, long, then0);
            c.event_then("b", b"2", false, long, then1);
        })
        .join()
        .unwrap();
        let (cmd, s0, body) = agent.request().await;
        assert_eq!(cmd, "event");
        assert_eq!(body.unwrap()["Name"].as_str(), Some("a"));
        let (_, s1, _) = agent.request().await;
        agent.reply(s0, "", None).await;
        agent.reply(s1, "user event exceeds limit", None).await;
        assert!(matches!(got.recv().await, Some((0, Ok(())))));
        assert!(matches!(
            got.recv().await,
            Some((
                1,
                Err(RpcError::Agent {
                    command: "event",
                    ..
                })
            ))
        ));

        // No answer within its bound: a timeout, and the late reply is
        // consumed without a second verdict.
        client.event_then("c", b"3", false, Duration::from_millis(50), then(2));
        let (_, s2, _) = agent.request().await;
        assert!(matches!(
            got.recv().await,
            Some((2, Err(RpcError::Timeout { command: "event" })))
        ));
        agent.reply(s2, "", None).await;

        // Pending when the agent goes away, and made after: closed.
        client.event_then("d", b"4", false, long, then(3));
        agent.request().await;
        drop(agent);
        assert!(matches!(
            got.recv().await,
            Some((3, Err(RpcError::Closed { .. })))
        ));
        client.closed().await;
        client.event_then("e", b"5", false, long, then(4));
        assert!(matches!(
            got.recv().await,
            Some((4, Err(RpcError::Closed { .. })))
        ));
        drop(then);
        assert!(got.recv().await.is_none(), "one verdict each");
    }

    #[tokio::test]
    async fn what_the_socket_does_not_take_at_once_follows_in_order() {
        let (client, mut agent) = pair().await;
        // Far more than the socket buffers while the agent reads nothing.
        let payload = vec![b'x'; 64 * 1024];
        let (then, mut got) = verdicts();
        for i in 0..64 {
            client.event_then(
                &format!("e{i}"),
                &payload,
                false,
                Duration::from_secs(30),
                then(i),
            );
        }
        for i in 0..64 {
            let (cmd, seq, body) = agent.request().await;
            assert_eq!(cmd, "event");
            let body = body.unwrap();
            assert_eq!(body["Name"].as_str(), Some(format!("e{i}").as_str()));
            assert_eq!(
                body["Payload"].as_slice().map(<[u8]>::len),
                Some(payload.len())
            );
            agent.reply(seq, "", None).await;
        }
        for i in 0..64 {
            assert_eq!(
                got.recv().await.map(|(k, r)| (k, r.is_ok())),
                Some((i, true))
            );
        }
    }

    #[tokio::test]
    async fn a_late_reply_is_consumed_in_order() {
        let (client, mut agent) = pair().await;
        let hasty = client.clone().with_timeout(Duration::from_millis(20));
        assert!(matches!(
            hasty.members().await,
            Err(RpcError::Timeout { command: "members" })
        ));
        let serve = async {
            agent.members().await;
            let (cmd, seq, _) = agent.request().await;
            assert_eq!(cmd, "stats");
            agent
                .reply(seq, "", Some(include_bytes!("testdata/stats.bin")))
                .await;
        };
        let (stats, ()) = tokio::join!(client.stats(), serve);
        assert_eq!(stats.unwrap()["agent"]["name"], "alpha");
    }

    #[tokio::test]
    async fn a_query_ends_after_done() {
        let (client, mut agent) = pair().await;
        let params = QueryParams {
            name: "uptime".into(),
            request_ack: true,
            timeout: Some(Duration::from_secs(2)),
            ..QueryParams::default()
        };
        let serve = async {
            let (cmd, seq, body) = agent.request().await;
            assert_eq!(cmd, "query");
            let body = body.unwrap();
            assert_eq!(body["Timeout"].as_i64(), Some(2_000_000_000));
            assert_eq!(body["RequestAck"], Value::Boolean(true));
            agent.reply(seq, "", None).await;
            seq
        };
        let (query, seq) = tokio::join!(client.query(params), serve);
        let mut query = query.unwrap();
        agent
            .reply(seq, "", Some(include_bytes!("testdata/query_ack.bin")))
            .await;
        agent
            .reply(seq, "", Some(&query_record("response", "", b"?")))
            .await;
        agent
            .reply(seq, "", Some(include_bytes!("testdata/query_response.bin")))
            .await;
        agent
            .reply(seq, "", Some(include_bytes!("testdata/query_done.bin")))
            .await;
        assert_eq!(
            query.recv().await,
            Some(QueryRecord::Ack {
                from: "charlie".into()
            })
        );
        assert_eq!(
            query.recv().await,
            Some(QueryRecord::Response {
                from: "alpha".into(),
                payload: b"up 3 days".to_vec()
            })
        );
        assert_eq!(query.recv().await, Some(QueryRecord::Done));
        assert_eq!(query.recv().await, None);
    }

    #[tokio::test]
    async fn a_refused_stream_is_an_agent_error() {
        let (client, mut agent) = pair().await;
        let serve = async {
            let (_, seq, body) = agent.request().await;
            assert_eq!(body.unwrap()["Type"].as_str(), Some("bogus"));
            agent.reply(seq, "Invalid event filter", None).await;
        };
        let (sub, ()) = tokio::join!(client.stream("bogus"), serve);
        assert_eq!(
            sub.err().unwrap().to_string(),
            "stream: Invalid event filter"
        );
    }
}
