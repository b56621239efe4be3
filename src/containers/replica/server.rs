//! The parent's side of the replica link: the socket, and per connection
//! the hello, the view and journal streamed to the child, and the child's
//! events and queries raised and asked through the parent's upstream, held
//! to its grants, slots and query pace.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::{sleep_or_shutdown, Backoff};
use crate::cluster::membership::View;
use crate::containers::grants::{Allow, Grants};
use crate::event::Event;
use crate::event::Origin;
use crate::surface::journal::Journal;
use crate::surface::upstream::{Bucket, Upstream, DEFAULT_EVENT_LIMIT};

use super::wire::*;

/// Connections served as one child: a newer one (a reconnect) closes the
/// oldest beyond this.
pub(crate) const MAX_PER_CHILD: usize = 2;

/// Connections served in all; only reachable without grants (a bare
/// `--share`, where any name is taken).
pub(crate) const MAX_SERVED: usize = 256;

/// Requests of one connection answered at once; beyond, its next frame is
/// not read until one is done.
pub(super) const MAX_IN_FLIGHT: usize = 64;

/// Queries each child may ask per second, in bursts of as many, unless
/// `--child-query-rate` says otherwise: every query runs a handler on every
/// member it reaches.
pub(crate) const DEFAULT_CHILD_QUERY_RATE: u32 = 10;

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
pub(crate) async fn serve<U: Upstream>(
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
pub(super) struct Server<U> {
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
pub(super) struct Slots(parking_lot::Mutex<SlotTable>);

#[derive(Default)]
pub(super) struct SlotTable {
    next: u64,
    pending: std::collections::VecDeque<(u64, CancellationToken)>,
    served: HashMap<String, std::collections::VecDeque<(u64, CancellationToken)>>,
    served_total: usize,
}

/// One connection's place in [`Slots`]; closing `closed` ends its task.
/// Leaves the table when dropped.
pub(super) struct Slot {
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
pub(super) struct Refusals(parking_lot::Mutex<(u64, Option<std::time::Instant>)>);

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
pub(super) struct Paces {
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

pub(super) async fn serve_child<U: Upstream>(
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
pub(super) async fn raise_from_child<U: Upstream>(
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
