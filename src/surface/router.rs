//! The router: takes each decoded event where it goes — into the journal,
//! to its handler, and a query to its built-in answer or its handler's,
//! whose answer goes back to the agent. In a child, the events come from the
//! parent's journal instead ([`dispatch_journal`]).

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::cluster::membership::{Snapshot, View};
use crate::cluster::rpc::Client;
use crate::cluster::tags;
use crate::event::{ClusterEvent, Raiser};
use crate::surface::handlers::{Dispatch, Handlers, Job};
use crate::surface::journal::Journal;
use crate::surface::query;

/// Journals `ev`, starts its handler, answers a query. Nothing here waits on
/// a handler, so the follower always drains the stream.
pub(crate) fn route(
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
        handlers.dispatch_with(ev.handler_name(), || job(&ev, snap, None));
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
    if handlers.dispatch_with(ev.handler_name(), || job(&ev, snap, Some(tx))) == Dispatch::Queued {
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
fn origin(from: Option<&Raiser>, env: &mut Vec<(String, String)>, label: &mut String) {
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
pub(crate) async fn dispatch_journal(
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
                handlers.dispatch_with(entry.event.handler_name(), || {
                    job(&entry.event, &snap, None)
                });
            }
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}
