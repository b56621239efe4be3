//! The upstream: where a surface's writes and queries go. One trait,
//! [`Upstream`] (raise events, ask a query), with one mapping of failures to
//! the errno the writer or reader gets ([`errno_of`]). A parent's upstream
//! is its local agent ([`AgentUpstream`]); a child's is the parent's daemon
//! over the replica link (`containers::replica::ParentLink`).
//!
//! Every errno but one means "not raised": retrying is safe. [`UNKNOWN`]
//! (ETIMEDOUT) means the agent (or, in a child, the parent) took the request
//! and gave no verdict in time: the event may yet be raised, and the journal
//! says whether it was. A write waits at most [`RAISE_TIMEOUT`] in a parent,
//! so that a child, which waits longer, hears its parent's verdict.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use tokio::sync::watch;

use crate::cluster::membership::View;
use crate::cluster::rpc::{Client, Direct, Outcome, RpcError};
use crate::event::{self, Event, Origin, Raiser};
use crate::surface::query::{self, Answers, Ask, MAX_WAIT};

/// User events raised per second by default, in bursts of as many: the
/// burst and the second after it are half of Serf's event buffer (512
/// Lamport times), so that what is in flight at once stays inside the
/// window in which receivers accept events even when gossip drains at half
/// the rate (256, the whole window in that time, lost events on a loaded
/// machine: `hostile::every_event_of_a_thousand_writers_reaches_another_member`).
pub(crate) const DEFAULT_EVENT_RATE: u32 = 128;

/// Serf's default `UserEventSizeLimit`: name + payload, before encoding.
pub const DEFAULT_EVENT_LIMIT: usize = 512;

/// The errno of a write whose events may have been raised (the request was
/// sent and no verdict came): the writer checks the journal before retrying.
pub(crate) const UNKNOWN: i32 = libc::ETIMEDOUT;

/// How long a write waits for the local agent in all (the FUSE request is
/// held open meanwhile, and fuser ignores interrupts).
pub(crate) const RAISE_TIMEOUT: Duration = Duration::from_secs(5);

/// Of [`RAISE_TIMEOUT`], how long a write or a query waits for a lost agent
/// connection to come back (nothing is sent meanwhile).
pub(crate) const CONNECT_WAIT: Duration = Duration::from_secs(3);

/// Serf applies the same limit again to the encoded gossip message, whose
/// framing (type, field names, Lamport time) takes at most this much: so
/// the name plus the enveloped payload may use the rest.
pub(crate) const WIRE_OVERHEAD: usize = 40;

/// Of [`MAX_WAIT`], what is left for the agent beyond the query's timeout.
const AGENT_SLACK: Duration = Duration::from_secs(1);

/// Where a surface's events and questions go: the agent (in a parent) or
/// the parent's daemon (in a child).
pub(crate) trait Upstream: Send + Sync + 'static {
    /// Raises `events` in order. `Err((k, errno))`: the first `k` were
    /// raised, then the next failed with `errno` and the rest were not tried.
    fn raise(
        &self,
        origin: &Origin,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<(), (usize, i32)>> + Send;

    /// Asks the cluster; `Err` is the errno the reader gets.
    fn ask(&self, origin: &Origin, ask: Ask) -> impl Future<Output = Result<Answers, i32>> + Send;

    /// Starts raising `events` on the calling thread when that needs no
    /// waiting, and `done` gets what [`Upstream::raise`] would return, later
    /// and from another thread; else gives both back, to be raised with
    /// [`Upstream::raise`].
    fn raise_now(
        &self,
        _origin: &Origin,
        events: Vec<Event>,
        done: Verdict,
    ) -> Option<(Vec<Event>, Verdict)> {
        Some((events, done))
    }
}

/// Where a write's outcome goes: what [`Upstream::raise`] returns.
pub(crate) type Verdict = Box<dyn FnOnce(Result<(), (usize, i32)>) + Send>;

impl<U: Upstream> Upstream for Arc<U> {
    fn raise(
        &self,
        origin: &Origin,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<(), (usize, i32)>> + Send {
        (**self).raise(origin, events)
    }

    fn ask(&self, origin: &Origin, ask: Ask) -> impl Future<Output = Result<Answers, i32>> + Send {
        (**self).ask(origin, ask)
    }

    fn raise_now(
        &self,
        origin: &Origin,
        events: Vec<Event>,
        done: Verdict,
    ) -> Option<(Vec<Event>, Verdict)> {
        (**self).raise_now(origin, events, done)
    }
}

/// The errno a write or a query read gets for a failed agent request — the
/// one mapping of [`RpcError`] to errno. The agent's refusals are certain:
/// EMSGSIZE over Serf's size limits (its message says "exceeds"), EIO for
/// any other. Anything else (the connection closed, a timeout, a garbled
/// reply) is `unanswered`: [`UNKNOWN`] for an event request that went out
/// (it may yet be raised), EAGAIN for a query (asking again is harmless).
pub(crate) fn errno_of(e: &RpcError, unanswered: i32) -> i32 {
    match e {
        RpcError::Agent { message, .. } if message.contains("exceeds") => libc::EMSGSIZE,
        RpcError::Agent { .. } => libc::EIO,
        _ => unanswered,
    }
}

/// The parent's upstream: raises events on and asks queries of the local agent through whichever RPC connection is
/// current, waiting (bounded) through a reconnect, each in the envelope that
/// names this node and the writing child.
pub(crate) struct AgentUpstream {
    clients: watch::Receiver<Option<Client>>,
    view: View,
    pace: Option<Arc<parking_lot::Mutex<Bucket>>>,
    /// Where a direct link's slow verdict is awaited.
    runtime: tokio::runtime::Handle,
}

impl AgentUpstream {
    /// `rate`: events per second, in bursts of as many (0: no limit).
    /// Made on the runtime, whose handle it keeps.
    pub fn new(clients: watch::Receiver<Option<Client>>, view: View, rate: u32) -> AgentUpstream {
        AgentUpstream {
            clients,
            view,
            runtime: tokio::runtime::Handle::current(),
            pace: (rate > 0).then(|| Arc::new(parking_lot::Mutex::new(Bucket::new(rate)))),
        }
    }

    /// The view events are raised from (the envelope's node name).
    pub fn view(&self) -> &View {
        &self.view
    }

    /// The live agent connection, waiting up to [`CONNECT_WAIT`] through a
    /// reconnect.
    pub async fn client(&self) -> Option<Client> {
        let mut rx = self.clients.clone();
        let wait = async {
            rx.wait_for(|c| c.as_ref().is_some_and(|c| !c.is_closed()))
                .await
                .ok()
                .and_then(|c| c.clone())
        };
        tokio::time::timeout(CONNECT_WAIT, wait)
            .await
            .ok()
            .flatten()
    }
}

impl AgentUpstream {
    /// Raises `events` in order on `client`, each request sent from the
    /// calling thread or from the reader that took the previous verdict; `done`
    /// gets the outcome before `deadline` (and the sweeper's fraction of a second).
    fn chain(
        &self,
        client: Client,
        origin: &Origin,
        events: Vec<Event>,
        deadline: StdInstant,
        done: Verdict,
    ) {
        self.new_chain(client, origin, events, deadline)
            .step(0, done);
    }

    /// A write's events, in their envelopes, ready to go out on `client`.
    fn new_chain(
        &self,
        client: Client,
        origin: &Origin,
        events: Vec<Event>,
        deadline: StdInstant,
    ) -> Chain {
        let (wires, bad) = self.envelopes(origin, &events);
        Chain {
            client,
            origin: origin.clone(),
            events,
            wires,
            bad,
            pace: self.pace.clone(),
            deadline,
        }
    }

    /// Every envelope up to the first bad event, and that one's errno: made
    /// before anything is sent, the outcome is the same as making each in
    /// turn.
    fn envelopes(&self, origin: &Origin, events: &[Event]) -> (Vec<Vec<u8>>, Option<i32>) {
        let from = Raiser {
            node: self.view.snapshot().local.clone().unwrap_or_default(),
            child: origin.child.clone(),
        };
        let mut wires = Vec::with_capacity(events.len());
        for event in events {
            match envelope(origin, &from, event) {
                Ok(wire) => wires.push(wire),
                Err(errno) => return (wires, Some(errno)),
            }
        }
        (wires, None)
    }

    /// [`Upstream::raise_now`] on a thread outside the runtime: each event
    /// on this thread's own [`Direct`] link, the verdict read here and the
    /// write answered from here (no hand-over between threads). Past
    /// [`DIRECT_WAIT`] a pending verdict is awaited on the runtime and the
    /// rest go through the callback chain on `client`, as does everything
    /// when the link cannot be had.
    fn raise_direct(&self, client: Client, origin: &Origin, events: Vec<Event>, done: Verdict) {
        let deadline = StdInstant::now() + RAISE_TIMEOUT;
        let chain = self.new_chain(client, origin, events, deadline);
        let Some(mut link) = link_for(&chain.client) else {
            return chain.step(0, done);
        };
        // The worker's time on this write, verdicts included.
        let budget = StdInstant::now() + DIRECT_WAIT;
        for i in 0..chain.wires.len() {
            let now = StdInstant::now();
            if now >= budget {
                // A long write goes on from the runtime; the worker serves others.
                keep_link(&chain.client, link);
                return chain.step(i, done);
            }
            if let Err(errno) = chain.may_send(i, now) {
                keep_link(&chain.client, link);
                return done(Err((i, errno)));
            }
            let name = &chain.events[i].name;
            match link.event(name, &chain.wires[i], false, budget - now) {
                Outcome::Done(l) => {
                    tracing::debug!(%name, "event raised for {}", chain.origin);
                    link = l;
                }
                Outcome::Pending(pending) => {
                    // The rest, from the runtime.
                    self.runtime.spawn(async move {
                        // The link stays with the runtime's thread: dropped.
                        let (_, res) = pending.finish(chain.deadline).await;
                        match res {
                            Ok(()) => chain.step(i + 1, done),
                            Err(e) => {
                                let errno = chain.verdict_error(i, &e);
                                done(Err((i, errno)));
                            }
                        }
                    });
                    return;
                }
                Outcome::NotSent(e) => {
                    tracing::debug!(
                        "write node: direct link to {}: {e}; on the shared connection",
                        chain.client.addr()
                    );
                    return chain.step(i, done);
                }
                Outcome::Failed(e, back) => {
                    let errno = chain.verdict_error(i, &e);
                    // A refusal gives the link back; a lost one is gone.
                    if let Some(l) = back {
                        keep_link(&chain.client, l);
                    }
                    return done(Err((i, errno)));
                }
            }
        }
        keep_link(&chain.client, link);
        done(match chain.bad {
            None => Ok(()),
            Some(errno) => Err((chain.wires.len(), errno)),
        });
    }
}

/// How long a FUSE worker spends on one write's events, verdicts included,
/// before the rest (and a verdict not yet come) move to the runtime: the
/// mount's other workers serve reads meanwhile.
const DIRECT_WAIT: Duration = Duration::from_millis(10);

/// Bound on making a direct link (connect, handshake, the peer check, auth).
const LINK_WITHIN: Duration = Duration::from_millis(200);

/// After a direct link could not be made, how long a thread uses the shared
/// connection before it tries again.
const LINK_RETRY: Duration = Duration::from_secs(1);

/// A thread's direct link: made beside one followed connection (its id) and
/// kept while that one is followed, or when making one last failed.
enum Link {
    Up { beside: usize, direct: Direct },
    Failed { at: StdInstant },
}

thread_local! {
    static LINK: std::cell::RefCell<Option<Link>> = const { std::cell::RefCell::new(None) };
}

/// This thread's link to the agent `client` reaches, made now if it has
/// none beside `client` (None: it cannot be had, or failed less than
/// [`LINK_RETRY`] ago).
fn link_for(client: &Client) -> Option<Direct> {
    match LINK.take() {
        Some(Link::Up { beside, direct }) if beside == client.id() => return Some(direct),
        Some(Link::Failed { at }) if at.elapsed() < LINK_RETRY => {
            LINK.set(Some(Link::Failed { at }));
            return None;
        }
        _ => {}
    }
    match client.direct(LINK_WITHIN) {
        Ok(direct) => Some(direct),
        Err(e) => {
            tracing::info!(
                "write node: no direct link to {}: {e}; events go through the shared connection",
                client.addr()
            );
            LINK.set(Some(Link::Failed {
                at: StdInstant::now(),
            }));
            None
        }
    }
}

fn keep_link(client: &Client, direct: Direct) {
    LINK.set(Some(Link::Up {
        beside: client.id(),
        direct,
    }));
}

/// A write's events on their way, one request at a time.
struct Chain {
    client: Client,
    origin: Origin,
    events: Vec<Event>,
    /// The envelopes of the leading events that have one.
    wires: Vec<Vec<u8>>,
    /// The errno of the event after the last wire.
    bad: Option<i32>,
    pace: Option<Arc<parking_lot::Mutex<Bucket>>>,
    deadline: StdInstant,
}

impl Chain {
    /// Whether event `i` may go out now: the connection up, the write's
    /// time not up, room in the event rate; else the errno (with the log).
    fn may_send(&self, i: usize, now: StdInstant) -> Result<(), i32> {
        let (origin, name) = (&self.origin, &self.events[i].name);
        if self.client.is_closed() || now >= self.deadline {
            tracing::warn!(
                "write node: {origin}: event {name:?} not sent (EAGAIN): the agent connection is gone or the write's {RAISE_TIMEOUT:?} are up"
            );
            return Err(libc::EAGAIN);
        }
        if let Some(pace) = &self.pace {
            if !pace.lock().take() {
                tracing::info!(
                    "write node: {origin}: event {name:?} refused (EAGAIN): over the event rate; serf would drop events raised faster"
                );
                return Err(libc::EAGAIN);
            }
        }
        Ok(())
    }

    /// The errno of event `i` that failed with `e` after it was sent (with the log).
    fn verdict_error(&self, i: usize, e: &RpcError) -> i32 {
        let (origin, name) = (&self.origin, &self.events[i].name);
        let errno = errno_of(e, UNKNOWN);
        if matches!(e, RpcError::Timeout { .. }) {
            tracing::warn!(
                "write node: {origin}: event {name:?}: the agent did not answer within {RAISE_TIMEOUT:?}; it may yet raise it (ETIMEDOUT)"
            );
        } else {
            let outcome = if errno == UNKNOWN {
                "sent, no verdict: it may yet be raised (ETIMEDOUT)"
            } else {
                "refused by the agent"
            };
            tracing::warn!("write node: {origin}: event {name:?}: {e}: {outcome}");
        }
        errno
    }

    /// Sends event `i`; its verdict sends `i + 1` or ends the chain.
    fn step(mut self, i: usize, done: Verdict) {
        if i >= self.wires.len() {
            return done(match self.bad {
                None => Ok(()),
                Some(errno) => Err((i, errno)),
            });
        }
        let now = StdInstant::now();
        if let Err(errno) = self.may_send(i, now) {
            return done(Err((i, errno)));
        }
        let wire = std::mem::take(&mut self.wires[i]);
        let name = self.events[i].name.clone();
        let client = self.client.clone();
        let within = self.deadline - now;
        let then = move |res: Result<(), RpcError>| match res {
            Ok(()) => {
                tracing::debug!(name = %self.events[i].name, "event raised for {}", self.origin);
                self.step(i + 1, done);
            }
            Err(e) => {
                let errno = self.verdict_error(i, &e);
                done(Err((i, errno)));
            }
        };
        client.event_then(&name, &wire, false, within, then);
    }
}

/// `event`'s payload in the envelope that names who raised it, if name and
/// envelope fit Serf's limit; else the errno.
fn envelope(origin: &Origin, from: &Raiser, event: &Event) -> Result<Vec<u8>, i32> {
    let wire = match event::wrap(from, &event.payload) {
        Ok(wire) => wire,
        Err(e) => {
            tracing::warn!("write node: {origin}: event {:?}: {e}", event.name);
            return Err(libc::EINVAL);
        }
    };
    let size = event.name.len() + wire.len();
    if size + WIRE_OVERHEAD > DEFAULT_EVENT_LIMIT {
        tracing::info!(
            "write node: {origin}: event {:?} is {size} bytes in its envelope, over the limit of {}",
            event.name,
            DEFAULT_EVENT_LIMIT - WIRE_OVERHEAD
        );
        return Err(libc::EMSGSIZE);
    }
    Ok(wire)
}

impl Upstream for AgentUpstream {
    /// Within [`RAISE_TIMEOUT`] in all. An event whose request went out and
    /// got no answer is [`UNKNOWN`]; every other error is certain.
    async fn raise(&self, origin: &Origin, events: Vec<Event>) -> Result<(), (usize, i32)> {
        let deadline = StdInstant::now() + RAISE_TIMEOUT;
        let Some(client) = self.client().await else {
            tracing::warn!(
                "write node: {origin}: agent unreachable, {} event(s) refused",
                events.len()
            );
            return Err((0, libc::EAGAIN));
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.chain(
            client,
            origin,
            events,
            deadline,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        // The chain always ends in a verdict; a dropped one would be a bug,
        // and then nothing is known of the event.
        rx.await.unwrap_or(Err((0, UNKNOWN)))
    }

    /// With the agent connection up, the chain starts on this thread: no
    /// task, no wake-up of the runtime on the way to the agent.
    fn raise_now(
        &self,
        origin: &Origin,
        events: Vec<Event>,
        done: Verdict,
    ) -> Option<(Vec<Event>, Verdict)> {
        let client = match &*self.clients.borrow() {
            Some(c) if !c.is_closed() => c.clone(),
            _ => return Some((events, done)),
        };
        // A runtime thread never blocks, not even briefly.
        if tokio::runtime::Handle::try_current().is_ok() {
            let deadline = StdInstant::now() + RAISE_TIMEOUT;
            self.chain(client, origin, events, deadline, done);
        } else {
            self.raise_direct(client, origin, events, done);
        }
        None
    }

    /// Within [`MAX_WAIT`] in all, a lost connection's wait included.
    async fn ask(&self, origin: &Origin, q: Ask) -> Result<Answers, i32> {
        let limit = tokio::time::Instant::now() + MAX_WAIT;
        let asked = async {
            let Some(client) = self.client().await else {
                tracing::warn!("query {}: {origin}: agent unreachable", q.name);
                return Err(libc::EAGAIN);
            };
            let snap = self.view().snapshot();
            let from = event::Raiser {
                node: snap.local.clone().unwrap_or_default(),
                child: origin.child.clone(),
            };
            let payload = match q.wire_payload(&from) {
                Ok(p) => p,
                Err(e) => {
                    tracing::info!("query {}: {origin}: payload not sent: {e}", q.name);
                    return Err(libc::EINVAL);
                }
            };
            // The query gets what is left, less the agent's slack.
            let left = limit.saturating_duration_since(tokio::time::Instant::now());
            let within = left.saturating_sub(AGENT_SLACK);
            match query::ask(&client, &snap, &q, payload, within).await {
                Ok(answers) => {
                    tracing::debug!(query = %q.name, answers = answers.responses.len(), "query for {origin}");
                    Ok(answers)
                }
                Err(e) => {
                    tracing::warn!("query {}: {origin}: {e}", q.name);
                    Err(errno_of(&e, libc::EAGAIN))
                }
            }
        };
        match tokio::time::timeout_at(limit, asked).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    "query {}: {origin}: the agent did not answer within {MAX_WAIT:?}",
                    q.name
                );
                Err(libc::EAGAIN)
            }
        }
    }
}

/// A token bucket: `rate` events a second, at most `rate` at once.
pub(crate) struct Bucket {
    rate: f64,
    tokens: f64,
    at: std::time::Instant,
}

impl Bucket {
    pub(crate) fn new(rate: u32) -> Bucket {
        Bucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            at: std::time::Instant::now(),
        }
    }

    pub(crate) fn take(&mut self) -> bool {
        let now = std::time::Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_gives_a_burst_then_the_rate() {
        let mut b = Bucket::new(10);
        assert_eq!((0..20).filter(|_| b.take()).count(), 10);
        b.at -= Duration::from_millis(500);
        assert_eq!((0..20).filter(|_| b.take()).count(), 5);
    }

    #[test]
    fn one_errno_mapping_for_writes_and_queries() {
        let refused = |message: &str| RpcError::Agent {
            command: "event",
            message: message.into(),
        };
        let size = refused("user event exceeds limit of 512 bytes");
        assert_eq!(errno_of(&size, UNKNOWN), libc::EMSGSIZE);
        assert_eq!(errno_of(&refused("no"), libc::EAGAIN), libc::EIO);
        let lost = RpcError::Timeout { command: "event" };
        assert_eq!(errno_of(&lost, UNKNOWN), UNKNOWN);
        assert_eq!(errno_of(&lost, libc::EAGAIN), libc::EAGAIN);
    }
}
