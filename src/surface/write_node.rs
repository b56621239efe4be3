//! The write node: each line `["event_name", payload]` written to
//! `/serfnode/parent` becomes one Serf user event (Coalesce=false, so bursts
//! of one name are not collapsed and it gossips within one tick).
//!
//! A write(2) succeeds only once the agent accepted its events. Lines are
//! handled in order and the first one that fails stops the write: the writer
//! gets a short count covering exactly the accepted lines (and retries the
//! rest, meeting the error), or the errno if the first line failed. So
//! nothing accepted is lost and nothing rejected is half-sent.
//!
//! Every errno but one means "not raised": retrying is safe. [`UNKNOWN`]
//! (ETIMEDOUT) means the agent (or, in a child, the parent) took the request
//! and gave no verdict in time: the event may yet be raised, and the journal
//! says whether it was. A write waits at most [`RAISE_TIMEOUT`] in a parent,
//! so that a child, which waits longer, hears its parent's verdict.
//!
//! On the wire each payload travels in the envelope that says which node and
//! child raised it (see [`crate::event`]). Serf counts the gossip framing
//! too, so name + enveloped payload must fit in 472 bytes: the envelope
//! takes 35 bytes plus the node's name (plus 11 and the child's name).
//!
//! | outcome | errno |
//! |---|---|
//! | not JSON, not `[string, value]`, bad event name | EINVAL |
//! | name + payload (in its envelope) over the agent's limit | EMSGSIZE |
//! | agent unreachable, or over the event rate: not sent | EAGAIN |
//! | sent, no answer in time (connection lost, agent stopped): may be raised | ETIMEDOUT |
//! | agent refused the event for another reason | EIO |

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use serde_json::Value;
use serfnode_fs::{Completion, ControlSink, Writer};
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::cluster::membership::View;
use crate::cluster::rpc::{Client, RpcError};
use crate::event::{self, Origin, Raiser};
use crate::names::is_event_name;

/// User events raised per second by default, in bursts of as many: half of
/// Serf's event buffer (512 Lamport times), so that what is in flight at
/// once stays well inside the window in which receivers accept events.
pub const DEFAULT_EVENT_RATE: u32 = 256;

/// Serf's default `UserEventSizeLimit`: name + payload, before encoding.
pub const DEFAULT_EVENT_LIMIT: usize = 512;

/// The errno of a write whose events may have been raised (the request was
/// sent and no verdict came): the writer checks the journal before retrying.
pub const UNKNOWN: i32 = libc::ETIMEDOUT;

/// How long a write waits for the local agent in all (the FUSE request is
/// held open meanwhile, and fuser ignores interrupts).
pub const RAISE_TIMEOUT: Duration = Duration::from_secs(5);

/// Of [`RAISE_TIMEOUT`], how long a write or a query waits for a lost agent
/// connection to come back (nothing is sent meanwhile).
pub const CONNECT_WAIT: Duration = Duration::from_secs(3);

/// Serf applies the same limit again to the encoded gossip message, whose
/// framing (type, field names, Lamport time) takes at most this much: so
/// the name plus the enveloped payload may use the rest.
pub const WIRE_OVERHEAD: usize = 40;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LineError {
    #[error("line is not json: {0}")]
    NotJson(String),
    #[error("line must be [\"event_name\", payload]")]
    Shape,
    #[error("event name {0:?} is not 1-128 bytes of [A-Za-z0-9._:@+-] not starting with '.'")]
    Name(String),
    #[error("event {name:?} is {size} bytes with its payload, over the limit of {limit}")]
    TooBig {
        name: String,
        size: usize,
        limit: usize,
    },
}

impl LineError {
    pub fn errno(&self) -> i32 {
        match self {
            LineError::TooBig { .. } => libc::EMSGSIZE,
            _ => libc::EINVAL,
        }
    }
}

/// Parses one line into the event it asks for. The payload travels as
/// compact JSON, whatever its type, so handlers always read JSON.
pub fn parse_line(line: &[u8], limit: usize) -> Result<Event, LineError> {
    let value: Value =
        serde_json::from_slice(line).map_err(|e| LineError::NotJson(e.to_string()))?;
    let Value::Array(mut items) = value else {
        return Err(LineError::Shape);
    };
    if items.len() != 2 {
        return Err(LineError::Shape);
    }
    let payload = items.pop().expect("two items");
    let Value::String(name) = items.pop().expect("two items") else {
        return Err(LineError::Shape);
    };
    let payload = serde_json::to_vec(&payload).expect("a parsed value serializes");
    let event = Event { name, payload };
    event.check(limit)?;
    Ok(event)
}

impl Event {
    /// The rules every event meets, wherever it was parsed: a valid name, a
    /// JSON payload, and name + payload within `limit`.
    pub fn check(&self, limit: usize) -> Result<(), LineError> {
        if !is_event_name(&self.name) {
            return Err(LineError::Name(self.name.clone()));
        }
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&self.payload) {
            return Err(LineError::NotJson(e.to_string()));
        }
        let size = self.name.len() + self.payload.len();
        if size > limit {
            return Err(LineError::TooBig {
                name: self.name.clone(),
                size,
                limit,
            });
        }
        Ok(())
    }
}

/// Where a write node's events go once parsed: the agent (in a parent) or
/// the parent's daemon (in a child).
pub trait Raise: Send + Sync + 'static {
    /// Raises `events` in order. `Err((k, errno))`: the first `k` were
    /// raised, then the next failed with `errno` and the rest were not tried.
    fn raise(
        &self,
        origin: &Origin,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<(), (usize, i32)>> + Send;
}

impl<R: Raise> Raise for Arc<R> {
    fn raise(
        &self,
        origin: &Origin,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<(), (usize, i32)>> + Send {
        (**self).raise(origin, events)
    }
}

/// The write node: parses lines and hands the valid prefix of each write to
/// its [`Raise`].
pub struct WriteNode<R> {
    inner: Arc<Shared<R>>,
}

impl<R> Clone for WriteNode<R> {
    fn clone(&self) -> Self {
        WriteNode {
            inner: self.inner.clone(),
        }
    }
}

struct Shared<R> {
    raise: R,
    runtime: Handle,
    closed: AtomicBool,
}

impl<R: Raise> WriteNode<R> {
    pub fn new(raise: R, runtime: Handle) -> WriteNode<R> {
        WriteNode {
            inner: Arc::new(Shared {
                raise,
                runtime,
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// Refuses every later write with EAGAIN (at shutdown).
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
    }
}

/// The events of the lines up to the first bad one, and that one's errno.
pub fn parse_prefix(origin: &Origin, lines: &[Vec<u8>]) -> (Vec<Event>, Option<i32>) {
    let mut events = Vec::with_capacity(lines.len());
    for line in lines {
        match parse_line(line, DEFAULT_EVENT_LIMIT) {
            Ok(e) => events.push(e),
            Err(e) => {
                tracing::info!(
                    "write node: {origin}: rejected line {}: {e}",
                    events.len() + 1
                );
                return (events, Some(e.errno()));
            }
        }
    }
    (events, None)
}

impl<R: Raise> ControlSink for WriteNode<R> {
    fn submit(&self, writer: Writer, lines: Vec<Vec<u8>>, done: Completion) {
        if self.inner.closed.load(Ordering::SeqCst) {
            return done.fail(0, libc::EAGAIN);
        }
        let inner = self.inner.clone();
        self.inner.runtime.spawn(async move {
            let origin = Origin {
                pid: writer.pid,
                child: None,
            };
            let (events, bad) = parse_prefix(&origin, &lines);
            let valid = events.len();
            let raised = if events.is_empty() {
                Ok(())
            } else {
                inner.raise.raise(&origin, events).await
            };
            match (raised, bad) {
                (Ok(()), None) => done.accept_all(),
                (Ok(()), Some(errno)) => done.fail(valid, errno),
                (Err((k, UNKNOWN)), _) => done.unknown(k, UNKNOWN),
                (Err((k, errno)), _) => done.fail(k, errno),
            }
        });
    }

    fn fragment_is_complete(&self, fragment: &[u8]) -> bool {
        serde_json::from_slice::<Value>(fragment).is_ok()
    }
}

/// Raises events on the local agent through whichever RPC connection is
/// current, waiting (bounded) through a reconnect, each in the envelope that
/// names this node and the writing child.
pub struct AgentRaise {
    clients: watch::Receiver<Option<Client>>,
    view: View,
    pace: Option<parking_lot::Mutex<Bucket>>,
}

impl AgentRaise {
    /// `rate`: events per second, in bursts of as many (0: no limit).
    pub fn new(clients: watch::Receiver<Option<Client>>, view: View, rate: u32) -> AgentRaise {
        AgentRaise {
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

impl Raise for AgentRaise {
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
                    let errno = errno_of(&e);
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

/// The errno of an event request that failed after it was sent: the
/// agent's refusal is certain; anything else (the connection closed, a
/// garbled reply) leaves the outcome unknown.
fn errno_of(e: &RpcError) -> i32 {
    match e {
        RpcError::Agent { message, .. } if message.contains("exceeds") => libc::EMSGSIZE,
        RpcError::Agent { .. } => libc::EIO,
        _ => UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_lines_become_events_with_json_payloads() {
        let e = parse_line(br#"["deploy", {"v": 2}]"#, 512).unwrap();
        assert_eq!(e.name, "deploy");
        assert_eq!(e.payload, br#"{"v":2}"#);
        assert_eq!(parse_line(br#"["x","s"]"#, 512).unwrap().payload, br#""s""#);
        assert_eq!(
            parse_line(b" [\"x\", null] \r", 512).unwrap().payload,
            b"null"
        );
    }

    #[test]
    fn malformed_lines_are_einval() {
        for line in [
            &b"deploy"[..],
            b"[\"deploy\"]",
            b"[\"a\",1,2]",
            b"{\"a\":1}",
            b"[1, 2]",
            b"[\"a/b\", 1]",
            b"[\"\", 1]",
            b"[\"..\", 1]",
            b"\xff\xfe",
            b"",
        ] {
            let err = parse_line(line, 512).unwrap_err();
            assert_eq!(
                err.errno(),
                libc::EINVAL,
                "{:?}: {err}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn the_bucket_gives_a_burst_then_the_rate() {
        let mut b = Bucket::new(10);
        assert_eq!((0..20).filter(|_| b.take()).count(), 10);
        b.at -= Duration::from_millis(500);
        assert_eq!((0..20).filter(|_| b.take()).count(), 5);
    }

    #[test]
    fn size_limit_counts_name_and_payload() {
        let at = format!(r#"["ev","{}"]"#, "x".repeat(512 - 2 - 2));
        assert!(parse_line(at.as_bytes(), 512).is_ok());
        let over = format!(r#"["ev","{}"]"#, "x".repeat(512 - 2 - 1));
        let err = parse_line(over.as_bytes(), 512).unwrap_err();
        assert_eq!(err.errno(), libc::EMSGSIZE);
        assert!(err.to_string().contains("513 bytes"), "{err}");
    }
}
