//! Keeps the view in step with the local agent over RPC.
//!
//! The stream alone is not enough: the agent coalesces member events for
//! about a second and drops records when a subscriber's buffer fills. So a
//! stream record is only a trigger to re-read `members` (0.1 ms on a kept
//! connection), and a short timer re-reads it too, catching what the stream
//! holds back; records are never applied themselves, since they are older
//! than what `members` says and could move the view backwards. The stream is
//! subscribed before the first `members` read, so nothing falls between.
//!
//! While the agent is unreachable the view keeps its members and is marked
//! stale; the task reconnects with backoff and publishes the live client for
//! others (the write node) through `clients`. An agent not listening yet in
//! the first [`START_GRACE`] of the daemon's life is no outage (the agent
//! the daemon starts takes a moment to open its RPC port): the view is
//! "starting" then, and becomes stale only if the agent is still
//! unreachable after it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::View;
use crate::backoff::{sleep_or_shutdown, Backoff};
use crate::cluster::rpc::peer::AgentPid;
use crate::cluster::rpc::{Client, RpcError};

const MEMBER_EVENTS: &str = "member-join,member-leave,member-failed,member-update,member-reap";

/// How long an agent that was never reached may stay unreachable before
/// that counts as an outage.
pub const START_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub rpc: SocketAddr,
    pub auth_key: Option<String>,
    /// The agent this daemon runs, the only peer it talks to (`None` with
    /// `--attach`: whatever listens at `rpc` is trusted).
    pub agent: Option<AgentPid>,
    /// Period of the `members` re-read that catches what the stream delays
    /// (at least four times what one re-read takes).
    pub poll: Duration,
}

/// The next live agent connection `clients` publishes, or `None` at
/// shutdown (or once the sync task is gone).
pub async fn next_client(
    clients: &mut watch::Receiver<Option<Client>>,
    stop: &CancellationToken,
) -> Option<Client> {
    tokio::select! {
        c = clients.wait_for(|c| c.as_ref().is_some_and(|c| !c.is_closed())) => {
            c.ok().and_then(|c| c.clone())
        }
        _ = stop.cancelled() => None,
    }
}

pub async fn run(
    view: View,
    cfg: SyncConfig,
    clients: watch::Sender<Option<Client>>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut failures = 0u32;
    let started = tokio::time::Instant::now();
    let mut reached = false;
    while !shutdown.is_cancelled() {
        let connected =
            Client::connect_checked(cfg.rpc, cfg.auth_key.as_deref(), cfg.agent.as_ref()).await;
        let err = match connected {
            Ok(client) => {
                backoff.reset();
                failures = 0;
                let err = follow(&view, &cfg, &client, &clients, &shutdown).await;
                reached |= view.snapshot().agent.connected;
                clients.send_replace(None);
                match err {
                    Some(e) => e,
                    None => return,
                }
            }
            Err(e) => e,
        };
        // A stranger on the agent's port is news every time, even at start.
        let untrusted = matches!(err, RpcError::Untrusted(_));
        if !reached && started.elapsed() < START_GRACE && !untrusted {
            tracing::debug!("agent not reachable yet: {err}");
        } else {
            view.set_disconnected(&err.to_string());
            // The first failure of an outage is news; the retries are not.
            if failures == 0 || untrusted {
                tracing::warn!("agent unreachable, serving the last view as stale: {err}");
            } else {
                tracing::debug!("still unreachable: {err}");
            }
            failures += 1;
        }
        if sleep_or_shutdown(backoff.next_delay(), &shutdown).await {
            return;
        }
    }
}

/// Follows one connection until it fails (returning why) or shutdown (None).
async fn follow(
    view: &View,
    cfg: &SyncConfig,
    client: &Client,
    clients: &watch::Sender<Option<Client>>,
    shutdown: &CancellationToken,
) -> Option<RpcError> {
    let setup = async {
        let stream = client.stream(MEMBER_EVENTS).await?;
        let stats = client.stats().await?;
        if let Some(name) = stats.get("agent").and_then(|a| a.get("name")) {
            view.set_local(name);
        }
        view.reconcile(client.members().await?);
        Ok::<_, RpcError>(stream)
    };
    let mut stream = match setup.await {
        Ok(s) => s,
        Err(e) => return Some(e),
    };
    view.set_connected();
    clients.send_replace(Some(client.clone()));
    tracing::info!(rpc = %cfg.rpc, "following the agent");

    // The re-read is the daemon's one cost that grows with the cluster
    // (O(members) to decode and diff). After each one the next waits at
    // least four times as long as it took, whether a record or the timer
    // asks, so at any size and any rate of change re-reads take at most a
    // fifth of a core; a change costs the daemon only what differs, plus
    // rendering the files that are read. With 100 members the wait is under
    // 1 ms; with 10,000, ~100 ms.
    let mut next = tokio::time::Instant::now() + cfg.poll;
    let mut earliest = tokio::time::Instant::now();
    loop {
        tokio::select! {
            rec = stream.recv() => {
                if rec.is_none() {
                    return Some(RpcError::Closed { addr: cfg.rpc });
                }
                next = next.min(earliest);
                if next > tokio::time::Instant::now() {
                    continue;
                }
            }
            _ = tokio::time::sleep_until(next) => {}
            _ = shutdown.cancelled() => return None,
        }
        let began = tokio::time::Instant::now();
        match client.members().await {
            Ok(members) => {
                view.reconcile(members);
            }
            Err(e) => return Some(e),
        }
        let spacing = began.elapsed() * 4;
        let now = tokio::time::Instant::now();
        earliest = now + spacing;
        next = now + cfg.poll.max(spacing);
    }
}
