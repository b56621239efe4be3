//! The follower: follows the agent's event stream over each connection,
//! decodes each record once into a [`ClusterEvent`] and hands it to the
//! router. Every loss that can be noticed becomes a gap line in the journal:
//! records the agent dropped for us (its log says so, see
//! [`crate::cluster::agent::Drops`]; not with `--attach`, whose agent's log
//! we do not read), records dropped on our side of the connection, and
//! whatever happened between a connection's end and the next one's stream.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::backoff::{sleep_or_shutdown, Backoff};
use crate::cluster::membership::{self, View};
use crate::cluster::rpc::{Client, MemberEvent, StreamRecord};
use crate::event::{unwrap, ClusterEvent};
use crate::surface::handlers::Handlers;
use crate::surface::journal::Journal;
use crate::surface::router;

/// One record of the agent's stream as a [`ClusterEvent`], the payloads of
/// user events and queries out of their envelopes.
pub fn decode(rec: StreamRecord) -> ClusterEvent {
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

/// The stream filter for everything this module decodes.
pub(crate) fn stream_filter() -> String {
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
            tracing::trace!("events: stream record");
            router::route(&client, &view.snapshot(), &journal, &handlers, decode(rec));
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
