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
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::cluster::membership::View;
use crate::cluster::rpc::{Client, RpcError};
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
}

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
    pace: Option<parking_lot::Mutex<Bucket>>,
}

impl AgentUpstream {
    /// `rate`: events per second, in bursts of as many (0: no limit).
    pub fn new(clients: watch::Receiver<Option<Client>>, view: View, rate: u32) -> AgentUpstream {
        AgentUpstream {
            clients,
            view,
            pace: (rate > 0).then(|| parking_lot::Mutex::new(Bucket::new(rate))),
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

impl Upstream for AgentUpstream {
    /// Within [`RAISE_TIMEOUT`] in all. An event whose request went out and
    /// got no answer is [`UNKNOWN`]; every other error is certain.
    async fn raise(&self, origin: &Origin, events: Vec<Event>) -> Result<(), (usize, i32)> {
        let deadline = Instant::now() + RAISE_TIMEOUT;
        let Some(client) = self.client().await else {
            tracing::warn!(
                "write node: {origin}: agent unreachable, {} event(s) refused",
                events.len()
            );
            return Err((0, libc::EAGAIN));
        };
        let from = Raiser {
            node: self.view.snapshot().local.clone().unwrap_or_default(),
            child: origin.child.clone(),
        };
        for (sent, event) in events.iter().enumerate() {
            let wire = match event::wrap(&from, &event.payload) {
                Ok(wire) => wire,
                Err(e) => {
                    tracing::warn!("write node: {origin}: event {:?}: {e}", event.name);
                    return Err((sent, libc::EINVAL));
                }
            };
            let size = event.name.len() + wire.len();
            if size + WIRE_OVERHEAD > DEFAULT_EVENT_LIMIT {
                tracing::info!(
                    "write node: {origin}: event {:?} is {size} bytes in its envelope, over the limit of {}",
                    event.name,
                    DEFAULT_EVENT_LIMIT - WIRE_OVERHEAD
                );
                return Err((sent, libc::EMSGSIZE));
            }
            if client.is_closed() || Instant::now() >= deadline {
                tracing::warn!(
                    "write node: {origin}: event {:?} not sent (EAGAIN): the agent connection is gone or the write's {RAISE_TIMEOUT:?} are up",
                    event.name
                );
                return Err((sent, libc::EAGAIN));
            }
            if let Some(pace) = &self.pace {
                if !pace.lock().take() {
                    tracing::info!(
                        "write node: {origin}: event {:?} refused (EAGAIN): over the event rate; serf would drop events raised faster",
                        event.name
                    );
                    return Err((sent, libc::EAGAIN));
                }
            }
            let res =
                tokio::time::timeout_at(deadline, client.event(&event.name, &wire, false)).await;
            let errno = match res {
                Ok(Ok(())) => {
                    tracing::debug!(name = %event.name, "event raised for {origin}");
                    continue;
                }
                Ok(Err(e)) => {
                    let errno = errno_of(&e, UNKNOWN);
                    let outcome = if errno == UNKNOWN {
                        "sent, no verdict: it may yet be raised (ETIMEDOUT)"
                    } else {
                        "refused by the agent"
                    };
                    tracing::warn!(
                        "write node: {origin}: event {:?}: {e}: {outcome}",
                        event.name
                    );
                    errno
                }
                Err(_) => {
                    tracing::warn!(
                        "write node: {origin}: event {:?}: the agent did not answer within {RAISE_TIMEOUT:?}; it may yet raise it (ETIMEDOUT)",
                        event.name,
                    );
                    UNKNOWN
                }
            };
            return Err((sent, errno));
        }
        Ok(())
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
