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
//! says whether it was. A write waits at most [`RAISE_TIMEOUT`](crate::surface::upstream::RAISE_TIMEOUT) in a parent,
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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;
use serfnode_fs::{Completion, ControlSink, Writer};
use tokio::runtime::Handle;

use crate::event::{Event, LineError, Origin};
use crate::surface::upstream::{Upstream, Verdict, DEFAULT_EVENT_LIMIT, UNKNOWN};

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

/// The write node: parses lines and hands the valid prefix of each write to
/// its [`Raise`].
pub(crate) struct WriteNode<U> {
    inner: Arc<Shared<U>>,
}

impl<U> Clone for WriteNode<U> {
    fn clone(&self) -> Self {
        WriteNode {
            inner: self.inner.clone(),
        }
    }
}

struct Shared<U> {
    upstream: U,
    runtime: Handle,
    closed: AtomicBool,
}

impl<U: Upstream> WriteNode<U> {
    pub fn new(upstream: U, runtime: Handle) -> WriteNode<U> {
        WriteNode {
            inner: Arc::new(Shared {
                upstream,
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
pub(crate) fn parse_prefix(origin: &Origin, lines: &[Vec<u8>]) -> (Vec<Event>, Option<i32>) {
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

impl<U: Upstream> ControlSink for WriteNode<U> {
    /// Parses on the FUSE worker's thread and, with the agent connection
    /// up, sends from it too (see [`Upstream::raise_now`]): the verdict
    /// answers the request from the connection's reader.
    fn submit(&self, writer: Writer, lines: Vec<Vec<u8>>, done: Completion) {
        if self.inner.closed.load(Ordering::SeqCst) {
            return done.fail(0, libc::EAGAIN);
        }
        let origin = Origin {
            pid: writer.pid,
            child: None,
        };
        let (events, bad) = parse_prefix(&origin, &lines);
        let valid = events.len();
        if events.is_empty() {
            return answer(done, Ok(()), bad, valid);
        }
        let verdict: Verdict = Box::new(move |raised| answer(done, raised, bad, valid));
        if let Some((events, verdict)) = self.inner.upstream.raise_now(&origin, events, verdict) {
            let inner = self.inner.clone();
            self.inner.runtime.spawn(async move {
                verdict(inner.upstream.raise(&origin, events).await);
            });
        }
    }

    fn fragment_is_complete(&self, fragment: &[u8]) -> bool {
        serde_json::from_slice::<Value>(fragment).is_ok()
    }
}

/// Answers a write of `valid` good lines (then the bad one's errno, if
/// any) from what raising them gave.
fn answer(done: Completion, raised: Result<(), (usize, i32)>, bad: Option<i32>, valid: usize) {
    match (raised, bad) {
        (Ok(()), None) => done.accept_all(),
        (Ok(()), Some(errno)) => done.fail(valid, errno),
        (Err((k, UNKNOWN)), _) => done.unknown(k, UNKNOWN),
        (Err((k, errno)), _) => done.fail(k, errno),
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
