//! The event vocabulary every stage shares: a cluster event as serfnode
//! hands it on ([`ClusterEvent`]), a user event to raise ([`Event`], and the
//! rules it meets), who raised it ([`Raiser`]), the envelope
//! that carries the raiser on the wire ([`wrap`], [`unwrap`]) and who wrote
//! the lines a write node took ([`Origin`]). Nouns only: decoding the
//! agent's stream is the follower's job (`surface::follower`), routing the
//! events the router's (`surface::router`).
//!
//! Attribution: a Serf user event carries only a name and a payload, so an
//! event raised through a write node travels in an envelope,
//! `{"serfnode":{"node":N,"child":C},"payload":P}`, and is unwrapped on
//! every member: handlers get `P` on stdin and the origin in their
//! environment, the journal shows `"from"`. Queries asked through serfnode
//! (a `query/` file, in a parent or a child) travel in the same envelope,
//! unwrapped before query handlers and the built-in answers see them.
//! Events and queries raised by other means (`serf event`, `serf query`)
//! carry no envelope and are passed through as they are.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::names::is_event_name;

/// Who raised a user event: the node whose write node took it and, if it was
/// written in a child container, that child's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Raiser {
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<String>,
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    serfnode: &'a Raiser,
    payload: &'a serde_json::value::RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeIn {
    serfnode: Raiser,
    payload: Value,
}

/// Wraps a JSON payload with its origin, as it goes on the wire.
pub fn wrap(from: &Raiser, payload: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    let raw: &serde_json::value::RawValue = serde_json::from_slice(payload)?;
    let wire = serde_json::to_vec(&EnvelopeOut {
        serfnode: from,
        payload: raw,
    })?;
    // RawValue takes any nesting, but receivers read 127 levels at most: an
    // envelope they cannot read would reach them unattributed.
    serde_json::from_slice::<EnvelopeIn>(&wire)?;
    Ok(wire)
}

/// A wire payload as handlers and readers see it: the enveloped payload and
/// its origin, else the payload itself (JSON if it parses, else a string).
pub fn unwrap(payload: &[u8]) -> (Value, Option<Raiser>) {
    if let Ok(env) = serde_json::from_slice::<EnvelopeIn>(payload) {
        return (env.payload, Some(env.serfnode));
    }
    (plain(payload), None)
}

/// A payload that is not an envelope: JSON if it parses, else the bytes as a
/// (lossy) string, and `null` when empty.
pub fn plain(payload: &[u8]) -> Value {
    if payload.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
}

/// One event, decoded from the agent's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ClusterEvent {
    User {
        name: String,
        ltime: u64,
        payload: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<Raiser>,
    },
    /// One record of member changes (the agent coalesces them for ~1 s).
    Member {
        /// `member-join`, `member-leave`, `member-failed`, `member-update`,
        /// `member-reap`.
        event: String,
        /// Each member as `members/<id>.json` shows it.
        members: Vec<Value>,
    },
    Query {
        name: String,
        ltime: u64,
        payload: Value,
        /// Who asked, when asked through serfnode.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<Raiser>,
        /// The agent's id for answering it (meaningful to this agent only).
        #[serde(skip)]
        id: u64,
    },
}

impl ClusterEvent {
    /// The handler this event runs: its user event, member event or query
    /// name.
    pub fn handler_name(&self) -> &str {
        match self {
            ClusterEvent::User { name, .. } | ClusterEvent::Query { name, .. } => name,
            ClusterEvent::Member { event, .. } => event,
        }
    }
}

/// Who wrote the lines, for logs: the writing thread and, for events that
/// came through a child's mount, the child's name.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub pid: u32,
    pub child: Option<String>,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.child {
            Some(c) => write!(f, "child {c} pid {}", self.pid),
            None => write!(f, "pid {}", self.pid),
        }
    }
}

/// A user event to raise: its name and its JSON payload (compact text).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_round_trips_and_plain_payloads_pass_through() {
        let from = Raiser {
            node: "n1".into(),
            child: Some("web".into()),
        };
        let wire = wrap(&from, br#"{"v":2}"#).unwrap();
        assert_eq!(
            wire,
            br#"{"serfnode":{"node":"n1","child":"web"},"payload":{"v":2}}"#
        );
        let (payload, got) = unwrap(&wire);
        assert_eq!(payload, serde_json::json!({"v": 2}));
        assert_eq!(got, Some(from));

        assert_eq!(unwrap(b"[1,2]"), (serde_json::json!([1, 2]), None));
        assert_eq!(unwrap(b"plain text"), (Value::from("plain text"), None));
        assert_eq!(unwrap(b""), (Value::Null, None));
        // An object that merely looks like an envelope is not one.
        let (p, f) = unwrap(br#"{"serfnode":{"node":"x"},"payload":1,"extra":2}"#);
        assert!(f.is_none());
        assert_eq!(p["extra"], 2);
    }

    #[test]
    fn parent_events_carry_no_child() {
        let from = Raiser {
            node: "n1".into(),
            child: None,
        };
        let wire = wrap(&from, b"null").unwrap();
        assert_eq!(wire, br#"{"serfnode":{"node":"n1"},"payload":null}"#);
    }
}
