//! Cluster events as serfnode hands them on: user events (with who raised
//! them), member events and queries, decoded once from the agent's stream and
//! given to the journal, the handlers and the built-in query answers.
//!
//! Following the stream, every loss that can be noticed becomes a gap line in
//! the journal: records the agent dropped for us (its log says so, see
//! [`crate::cluster::agent::Drops`]; not with `--attach`, whose agent's log we do not
//! read), records dropped on our side of the connection, and whatever
//! happened between a connection's end and the next one's stream.
//!
//! Attribution: a Serf user event carries only a name and a payload, so an
//! event raised through a write node travels in an envelope,
//! `{"serfnode":{"node":N,"child":C},"payload":P}`, and is unwrapped here on
//! every member: handlers get `P` on stdin and the origin in their
//! environment, the journal shows `"from"`. Queries asked through serfnode
//! (a `query/` file, in a parent or a child) travel in the same envelope,
//! unwrapped before query handlers and the built-in answers see them.
//! Events and queries raised by other means (`serf event`, `serf query`)
//! carry no envelope and are passed through as they are.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::backoff::{sleep_or_shutdown, Backoff};
use crate::cluster::membership::{self, Snapshot, View};
use crate::cluster::rpc::{Client, MemberEvent, StreamRecord};
use crate::cluster::tags;
use crate::surface::handlers::{Dispatch, Handlers, Job};
use crate::surface::journal::Journal;
use crate::surface::query;

/// Who raised a user event: the node whose write node took it and, if it was
/// written in a child container, that child's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct From {
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<String>,
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    serfnode: &'a From,
    payload: &'a serde_json::value::RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeIn {
    serfnode: From,
    payload: Value,
}

/// Wraps a JSON payload with its origin, as it goes on the wire.
pub fn wrap(from: &From, payload: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
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
pub fn unwrap(payload: &[u8]) -> (Value, Option<From>) {
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
pub enum ClusterEvent {
    User {
        name: String,
        ltime: u64,
        payload: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<From>,
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
        from: Option<From>,
        /// The agent's id for answering it (meaningful to this agent only).
        #[serde(skip)]
        id: u64,
    },
}

impl ClusterEvent {
    pub fn from_record(rec: StreamRecord) -> ClusterEvent {
        match rec {
            StreamRecord::User {
                ltime,
                name,
                payload,
                ..
            } => {
                let (payload, from) = unwrap(&payload);
                ClusterEvent::User {
                    name,
                    ltime,
                    payload,
                    from,
                }
            }
            StreamRecord::Member { event, members } => ClusterEvent::Member {
                event: event.as_str().to_string(),
                members: members
                    .iter()
                    .map(crate::surface::files::member_doc)
                    .collect(),
            },
            StreamRecord::Query {
                id,
                ltime,
                name,
                payload,
            } => {
                let (payload, from) = unwrap(&payload);
                ClusterEvent::Query {
                    name,
                    ltime,
                    payload,
                    from,
                    id,
                }
            }
        }
    }

    /// The handler this event runs: its user event, member event or query
    /// name.
    pub fn handler_name(&self) -> &str {
        match self {
            ClusterEvent::User { name, .. } | ClusterEvent::Query { name, .. } => name,
            ClusterEvent::Member { event, .. } => event,
        }
    }
}

/// The stream filter for everything this module decodes.
pub fn stream_filter() -> String {
    let members: Vec<&str> = [
        MemberEvent::Join,
        MemberEvent::Leave,
        MemberEvent::Failed,
        MemberEvent::Update,
        MemberEvent::Reap,
    ]
    .iter()
    .map(|e| e.as_str())
    .collect();
    format!("user,query,{}", members.join(","))
}

/// Follows the agent's event stream over each new connection: journals each
/// event, starts its handler, answers queries. Nothing here waits on a
/// handler, so the stream is always drained and the agent never drops
/// records for us.
///
/// `ready` holds the connection while its stream is followed: the write
/// node raises events only through it, so every event this node accepts is
/// also one its own journal and handlers see.
///
/// `drops` reports the clients the agent dropped records for (None when its
/// log is not ours to read).
pub async fn follow(
    mut clients: watch::Receiver<Option<Client>>,
    ready: watch::Sender<Option<Client>>,
    view: View,
    journal: Journal,
    handlers: Handlers,
    mut drops: Option<mpsc::Receiver<SocketAddr>>,
    stop: CancellationToken,
) {
    let filter = stream_filter();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut followed = false;
    loop {
        let Some(client) = membership::next_client(&mut clients, &stop).await else {
            return;
        };
        let mut sub = match client.stream(&filter).await {
            Ok(sub) => sub,
            Err(e) => {
                tracing::warn!("events: subscribe on {}: {e}", client.addr());
                if sleep_or_shutdown(backoff.next_delay(), &stop).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        tracing::debug!("events: following the agent's stream");
        if followed && journal.push_gap() {
            tracing::warn!(
                "events: following the agent's stream anew; events in between may be lost (gap line journaled)"
            );
        }
        followed = true;
        // Reports about an earlier connection are stale.
        while let Some(Ok(_)) = drops.as_mut().map(|d| d.try_recv()) {}
        let local = client.local_addr();
        ready.send_replace(Some(client.clone()));
        loop {
            // Records first: a drop the agent reports happened after the
            // records it had queued for us, so its gap line goes after them,
            // once the stream is drained (and a burst of reports is one line).
            let (lost, rec) = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                rec = sub.next() => match rec {
                    Some(rec) => rec,
                    None => break,
                },
                addr = dropped(&mut drops) => {
                    if Some(addr) == local && journal.push_gap() {
                        tracing::warn!("events: the agent dropped stream records for us (gap line journaled)");
                    }
                    continue;
                }
            };
            if lost > 0 && journal.push_gap() {
                tracing::warn!(
                    "events: {lost} stream records lost: we fell behind (gap line journaled)"
                );
            }
            on_event(
                &client,
                &view.snapshot(),
                &journal,
                &handlers,
                ClusterEvent::from_record(rec),
            );
        }
        ready.send_replace(None);
        if sub.dropped_since_last() > 0 {
            tracing::warn!(
                "events: {} stream records lost before the connection ended",
                sub.dropped_since_last()
            );
        }
    }
}

/// The next client the agent reported dropping records for; never, without
/// reports.
async fn dropped(drops: &mut Option<mpsc::Receiver<SocketAddr>>) -> SocketAddr {
    match drops {
        Some(rx) => match rx.recv().await {
            Some(addr) => addr,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

fn on_event(
    client: &Client,
    snap: &Snapshot,
    journal: &Journal,
    handlers: &Handlers,
    ev: ClusterEvent,
) {
    journal.push(ev.clone(), SystemTime::now());
    let ClusterEvent::Query {
        name, payload, id, ..
    } = &ev
    else {
        handlers.dispatch(job(&ev, snap, None));
        return;
    };
    let id = *id;
    if let Some(answer) = query::builtin(name, payload, snap) {
        if let Some(body) = answer {
            respond(client.clone(), name.clone(), id, body);
        }
        return;
    }
    let (tx, rx) = oneshot::channel();
    if handlers.dispatch(job(&ev, snap, Some(tx))) == Dispatch::Queued {
        let (client, name) = (client.clone(), name.clone());
        tokio::spawn(async move {
            if let Ok(out) = rx.await {
                if !out.timed_out {
                    respond(client, name, id, out.response(query::RESPONSE_LIMIT));
                }
            }
        });
    }
}

fn respond(client: Client, name: String, id: u64, body: Vec<u8>) {
    tokio::spawn(async move {
        if let Err(e) = client.respond(id, &body).await {
            // Past the query's deadline the agent refuses the answer.
            tracing::info!("query {name}: answer not sent: {e}");
        }
    });
}

/// The handler job for `ev` as seen by the member `snap` describes: stdin
/// and the environment Serf's own handlers get, plus the origin of events
/// raised through a write node.
pub fn job(
    ev: &ClusterEvent,
    snap: &Snapshot,
    respond: Option<oneshot::Sender<crate::surface::handlers::Outcome>>,
) -> Job {
    let mut env: Vec<(String, String)> = Vec::new();
    let me = snap.local_member();
    env.push((
        "SERF_SELF_NAME".into(),
        snap.local.clone().unwrap_or_default(),
    ));
    env.push((
        "SERF_SELF_ROLE".into(),
        me.map(|m| tags::role_of(m).to_string()).unwrap_or_default(),
    ));
    if let Some(me) = me {
        for (k, v) in &me.tags {
            env.push((format!("SERF_TAG_{}", k.to_uppercase()), v.clone()));
        }
    }
    let (stdin, label) = match ev {
        ClusterEvent::User {
            name,
            ltime,
            payload,
            from,
        } => {
            env.push(("SERF_EVENT".into(), "user".into()));
            env.push(("SERF_USER_EVENT".into(), name.clone()));
            env.push(("SERF_USER_LTIME".into(), ltime.to_string()));
            let mut label = format!("user event {name} (ltime {ltime})");
            origin(from.as_ref(), &mut env, &mut label);
            (json_bytes(payload), label)
        }
        ClusterEvent::Member { event, members } => {
            env.push(("SERF_EVENT".into(), event.clone()));
            let names: Vec<&str> = members.iter().filter_map(|m| m["id"].as_str()).collect();
            (
                json_bytes(&Value::from(members.clone())),
                format!("{event} of {}", names.join(", ")),
            )
        }
        ClusterEvent::Query {
            name,
            ltime,
            payload,
            from,
            ..
        } => {
            env.push(("SERF_EVENT".into(), "query".into()));
            env.push(("SERF_QUERY_NAME".into(), name.clone()));
            env.push(("SERF_QUERY_LTIME".into(), ltime.to_string()));
            let mut label = format!("query {name} (ltime {ltime})");
            origin(from.as_ref(), &mut env, &mut label);
            (json_bytes(payload), label)
        }
    };
    Job {
        name: ev.handler_name().to_string(),
        label,
        env,
        stdin,
        respond,
    }
}

/// Who raised an event or asked a query, for its handler
/// (`SERFNODE_FROM_NODE`, `SERFNODE_FROM_CHILD`) and its log label.
fn origin(from: Option<&From>, env: &mut Vec<(String, String)>, label: &mut String) {
    let Some(from) = from else { return };
    env.push(("SERFNODE_FROM_NODE".into(), from.node.clone()));
    label.push_str(&format!(" from {}", from.node));
    if let Some(child) = &from.child {
        env.push(("SERFNODE_FROM_CHILD".into(), child.clone()));
        label.push_str(&format!("/{child}"));
    }
}

fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json values serialize")
}

/// A child's handlers: runs the handler of every journal entry the parent
/// sends after `start` is known (the entries already in the parent's ring
/// when the child connected are history, not news).
pub async fn dispatch_journal(
    journal: Journal,
    view: View,
    handlers: Handlers,
    start: Arc<std::sync::OnceLock<u64>>,
    stop: CancellationToken,
) {
    let mut rx = journal.subscribe();
    let mut last: Option<u64> = None;
    loop {
        if let Some(&from) = start.get() {
            let after = last.unwrap_or(from);
            let snap = view.snapshot();
            for entry in journal.entries_since(after) {
                last = Some(entry.seq);
                handlers.dispatch(job(&entry.event, &snap, None));
            }
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_round_trips_and_plain_payloads_pass_through() {
        let from = From {
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
        let from = From {
            node: "n1".into(),
            child: None,
        };
        let wire = wrap(&from, b"null").unwrap();
        assert_eq!(wire, br#"{"serfnode":{"node":"n1"},"payload":null}"#);
    }
}
