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
//! | outcome | errno |
//! |---|---|
//! | not JSON, not `[string, value]`, bad event name | EINVAL |
//! | name + payload over the agent's limit | EMSGSIZE |
//! | agent unreachable or not answering in time | EAGAIN |
//! | agent refused the event for another reason | EIO |

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use serfnode_fs::{Completion, ControlSink, Writer};
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::names::is_event_name;
use crate::rpc::{Client, RpcError};

/// Serf's default `UserEventSizeLimit`: name + payload, before encoding.
pub const DEFAULT_EVENT_LIMIT: usize = 512;

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
    if !is_event_name(&name) {
        return Err(LineError::Name(name));
    }
    let payload = serde_json::to_vec(&payload).expect("a parsed value serializes");
    let size = name.len() + payload.len();
    if size > limit {
        return Err(LineError::TooBig { name, size, limit });
    }
    Ok(Event { name, payload })
}

/// Raises events through whichever RPC connection is current.
#[derive(Clone)]
pub struct EventSink {
    inner: Arc<Inner>,
}

struct Inner {
    closed: AtomicBool,
    clients: watch::Receiver<Option<Client>>,
    runtime: Handle,
    limit: usize,
    /// Bound on how long a write may wait for the agent: the FUSE request is
    /// held open meanwhile, and fuser ignores interrupts.
    timeout: Duration,
}

impl EventSink {
    pub fn new(clients: watch::Receiver<Option<Client>>, runtime: Handle) -> EventSink {
        EventSink {
            inner: Arc::new(Inner {
                closed: AtomicBool::new(false),
                clients,
                runtime,
                limit: DEFAULT_EVENT_LIMIT,
                timeout: Duration::from_secs(3),
            }),
        }
    }

    /// Refuses every later write with EAGAIN (at shutdown).
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
    }
}

impl Inner {
    /// The current client, waiting (bounded) through a reconnect.
    async fn client(&self) -> Option<Client> {
        let mut rx = self.clients.clone();
        let wait = async {
            rx.wait_for(|c| c.as_ref().is_some_and(|c| !c.is_closed()))
                .await
                .ok()
                .and_then(|c| c.clone())
        };
        tokio::time::timeout(self.timeout, wait)
            .await
            .ok()
            .flatten()
    }

    async fn send(&self, writer: &Writer, lines: Vec<Vec<u8>>) -> Result<usize, (usize, i32)> {
        let mut client = None;
        for (sent, line) in lines.iter().enumerate() {
            let event = parse_line(line, self.limit).map_err(|e| {
                tracing::info!(
                    pid = writer.pid,
                    "write node: rejected line {}: {e}",
                    sent + 1
                );
                (sent, e.errno())
            })?;
            if client.is_none() {
                client = self.client().await;
            }
            let Some(c) = client.as_ref() else {
                tracing::warn!(
                    pid = writer.pid,
                    "write node: agent unreachable, event {:?} refused",
                    event.name
                );
                return Err((sent, libc::EAGAIN));
            };
            let res =
                tokio::time::timeout(self.timeout, c.event(&event.name, &event.payload, false))
                    .await;
            match res {
                Ok(Ok(())) => {
                    tracing::debug!(pid = writer.pid, name = %event.name, "event raised");
                }
                Ok(Err(e)) => {
                    tracing::warn!(pid = writer.pid, "write node: event {:?}: {e}", event.name);
                    return Err((sent, errno_of(&e)));
                }
                Err(_) => {
                    tracing::warn!(
                        pid = writer.pid,
                        "write node: event {:?}: agent did not answer within {:?}",
                        event.name,
                        self.timeout
                    );
                    return Err((sent, libc::EAGAIN));
                }
            }
        }
        Ok(lines.len())
    }
}

fn errno_of(e: &RpcError) -> i32 {
    match e {
        RpcError::Agent { message, .. } if message.contains("exceeds") => libc::EMSGSIZE,
        RpcError::Agent { .. } => libc::EIO,
        _ => libc::EAGAIN,
    }
}

impl ControlSink for EventSink {
    fn submit(&self, writer: Writer, lines: Vec<Vec<u8>>, done: Completion) {
        if self.inner.closed.load(Ordering::SeqCst) {
            return done.fail(0, libc::EAGAIN);
        }
        let inner = self.inner.clone();
        self.inner.runtime.spawn(async move {
            match inner.send(&writer, lines).await {
                Ok(_) => done.accept_all(),
                Err((accepted, errno)) => done.fail(accepted, errno),
            }
        });
    }

    fn fragment_is_complete(&self, fragment: &[u8]) -> bool {
        serde_json::from_slice::<Value>(fragment).is_ok()
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
    fn size_limit_counts_name_and_payload() {
        let at = format!(r#"["ev","{}"]"#, "x".repeat(512 - 2 - 2));
        assert!(parse_line(at.as_bytes(), 512).is_ok());
        let over = format!(r#"["ev","{}"]"#, "x".repeat(512 - 2 - 1));
        let err = parse_line(over.as_bytes(), 512).unwrap_err();
        assert_eq!(err.errno(), libc::EMSGSIZE);
        assert!(err.to_string().contains("513 bytes"), "{err}");
    }
}
