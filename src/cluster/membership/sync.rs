//! Keeps the view in step with the local agent over RPC.
//!
//! The agent's event stream alone is not enough: it coalesces member events
//! for about a second and drops records when a subscriber's buffer fills.
//! The agent's log is as early as `members` itself (it logs each change the
//! moment memberlist reports it), so its `monitor` lines are the trigger:
//! each line about a member (see [`super::trigger`]) has just that member
//! re-read with `members-filtered`, and the re-read, never the line, is
//! applied. Stream records are a second trigger of the same kind (for a
//! member the view does not already hold as the record shows it). Under
//! both, a full `members` read reconciles everything: every
//! `reconcile` period (at least [`PERIODIC_SPACING`] times what the last
//! full read took, so it stays a small fraction of a core at any size),
//! after every (re)connect, and whenever a trigger cannot be trusted: a line
//! that mentions members but does not parse, lines or records lost, a
//! re-read that does not find the member a line named (reaped, or the line
//! was not what it seemed). Those on-demand reads wait at least
//! [`DEMAND_SPACING`] times the last one's cost, so a flood of doubtful
//! lines costs at most a fifth of a core. The stream and the monitor are
//! subscribed before the first `members` read, so nothing falls between.
//!
//! While the agent is unreachable the view keeps its members and is marked
//! stale; the task reconnects with backoff and publishes the live client for
//! others (the write node) through `clients`. An agent not listening yet in
//! the first [`START_GRACE`] of the daemon's life is no outage (the agent
//! the daemon starts takes a moment to open its RPC port): the view is
//! "starting" then, and becomes stale only if the agent is still
//! unreachable after it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::trigger::{self, Named, Trigger};
use super::View;
use crate::backoff::{sleep_or_shutdown, Backoff};
use crate::cluster::rpc::peer::AgentPid;
use crate::cluster::rpc::{Client, MemberEvent, RpcError, StreamRecord};

const MEMBER_EVENTS: &str = "member-join,member-leave,member-failed,member-update,member-reap";

/// How long an agent that was never reached may stay unreachable before
/// that counts as an outage.
pub(crate) const START_GRACE: Duration = Duration::from_secs(10);

/// A periodic full read waits at least this many times what the last one
/// took (its wall time, the agent's share included): at most a quarter
/// percent of a core; at 10,000 members every 28–40 s on the bench machine.
pub const PERIODIC_SPACING: u32 = 400;
/// A full read a doubtful trigger asks for waits at least this many times
/// what the last one took.
pub(crate) const DEMAND_SPACING: u32 = 4;
/// Members re-read in one `members-filtered` request at most.
const REREAD_BATCH: usize = 64;

#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub rpc: SocketAddr,
    pub auth_key: Option<String>,
    /// The agent this daemon runs, the only peer it talks to (`None` with
    /// `--attach`: whatever listens at `rpc` is trusted).
    pub agent: Option<AgentPid>,
    /// Period of the full `members` read under the per-member re-reads
    /// (at least [`PERIODIC_SPACING`] times what one takes).
    pub reconcile: Duration,
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

/// What the triggers ask the follower to read next.
#[derive(Default)]
struct Wanted {
    /// Members to re-read, in the order named (each name once).
    names: Vec<Named>,
    /// A full read.
    full: bool,
}

impl Wanted {
    fn name(&mut self, named: Named) {
        if let Some(n) = self.names.iter_mut().find(|n| n.name == named.name) {
            // The same name from two lines: ask for what either asked.
            n.maybe_newline |= named.maybe_newline;
            if n.addr != named.addr {
                n.addr = None;
            }
        } else {
            self.names.push(named);
        }
    }

    fn line(&mut self, line: Result<String, RpcError>) {
        match line {
            Ok(line) => match trigger::parse(&line) {
                Some(Trigger::Member(named)) => self.name(named),
                Some(Trigger::Reconcile) => {
                    tracing::debug!(line, "agent log line asks for a full reconcile");
                    self.full = true;
                }
                None => {}
            },
            Err(e) => {
                tracing::warn!("agent log record undecodable, reconciling fully: {e}");
                self.full = true;
            }
        }
    }

    /// A stream record, against the view as it stands.
    fn record(&mut self, lost: u64, record: StreamRecord, view: &View) {
        if lost > 0 {
            self.full = true;
        }
        if let StreamRecord::Member { event, members } = record {
            let snap = view.snapshot();
            for m in members {
                // A record the view already agrees with tells nothing new:
                // this state came by its line (or a full read), and any
                // later change has a line and a record of its own. A reap
                // always is news: the agent has forgotten a member the view
                // may still hold just as the record shows it.
                if event != MemberEvent::Reap
                    && snap.members.get(&m.name).is_some_and(|e| *e.member == m)
                {
                    continue;
                }
                // The record is a second old: its address is no check.
                self.name(Named {
                    name: m.name,
                    addr: None,
                    maybe_newline: false,
                });
            }
        }
    }
}

/// When the next full reads may run.
struct Schedule {
    period: Duration,
    /// The periodic one.
    next: Instant,
    /// The earliest an asked-for one may.
    earliest: Instant,
}

impl Schedule {
    fn after_full(&mut self, cost: Duration) {
        let now = Instant::now();
        self.earliest = now + cost * DEMAND_SPACING;
        self.next = now + self.period.max(cost * PERIODIC_SPACING);
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
        let monitor = client.monitor("INFO").await?;
        let stats = client.stats().await?;
        if let Some(name) = stats.get("agent").and_then(|a| a.get("name")) {
            view.set_local(name);
        }
        let began = Instant::now();
        view.reconcile(client.members().await?);
        give_back_freed_memory();
        Ok::<_, RpcError>((stream, monitor, began.elapsed()))
    };
    let (mut stream, mut monitor, cost) = match setup.await {
        Ok(s) => s,
        Err(e) => return Some(e),
    };
    view.set_connected();
    clients.send_replace(Some(client.clone()));
    tracing::info!(rpc = %cfg.rpc, "following the agent");

    let mut schedule = Schedule {
        period: cfg.reconcile,
        next: Instant::now(),
        earliest: Instant::now(),
    };
    schedule.after_full(cost);
    let mut wanted = Wanted::default();
    let mut lost_lines = monitor.dropped();
    loop {
        while let Some(line) = monitor.try_recv() {
            wanted.line(line);
        }
        if monitor.dropped() != lost_lines {
            lost_lines = monitor.dropped();
            wanted.full = true;
        }
        if wanted.full && Instant::now() >= schedule.earliest {
            let began = Instant::now();
            match client.members().await {
                Ok(members) => {
                    view.reconcile(members);
                    give_back_freed_memory();
                }
                Err(e) => return Some(e),
            };
            // Everything named so far is covered by this read.
            wanted = Wanted::default();
            schedule.after_full(began.elapsed());
            continue;
        }
        if !wanted.names.is_empty() {
            if let Err(e) = reread(view, client, &mut wanted).await {
                return Some(e);
            }
            continue;
        }
        tokio::select! {
            line = monitor.recv() => match line {
                Some(line) => wanted.line(line),
                None => return Some(RpcError::Closed { addr: cfg.rpc }),
            },
            rec = stream.next() => match rec {
                Some((lost, rec)) => wanted.record(lost, rec, view),
                None => return Some(RpcError::Closed { addr: cfg.rpc }),
            },
            _ = tokio::time::sleep_until(schedule.next) => wanted.full = true,
            _ = tokio::time::sleep_until(schedule.earliest), if wanted.full => {}
            _ = shutdown.cancelled() => return None,
        }
    }
}

/// Returns the heap pages a full read left free to the system. The decoded
/// list is one small block per string, tag and member, most of them freed
/// as soon as the view finds the member unchanged, between blocks the view
/// keeps: glibc keeps those pages resident (with 10,000 members the daemon
/// sat at 42–53 MiB, depending on where the last full read left its heap;
/// 38 MiB with this, BENCHMARKS.md). `malloc_trim` gives back every free
/// page, not only the heap's top; it walks the free lists, a fraction of
/// what the read itself costs. (The static musl build has its own heap.)
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim(3) takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Re-reads the next batch of named members and applies what the agent
/// says of them; asks for a full read when one is not found as named.
async fn reread(view: &View, client: &Client, wanted: &mut Wanted) -> Result<(), RpcError> {
    let batch: Vec<Named> = wanted
        .names
        .drain(..wanted.names.len().min(REREAD_BATCH))
        .collect();
    let pattern = trigger::name_pattern(&batch);
    let found = client
        .members_filtered(&BTreeMap::new(), None, Some(&pattern))
        .await?;
    let complete = batch.iter().all(|n| {
        found
            .iter()
            .any(|m| n.matches(&m.name) && n.addr.is_none_or(|a| trigger::unmap(m.addr) == a))
    });
    if !complete {
        tracing::debug!(
            named = batch.len(),
            found = found.len(),
            "a re-read did not find every member as named, reconciling fully"
        );
        wanted.full = true;
    }
    view.upsert(found);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::rpc::Member;

    fn named(w: &Wanted) -> Vec<&str> {
        w.names.iter().map(|n| n.name.as_str()).collect()
    }

    #[test]
    fn a_record_asks_for_a_re_read_unless_the_view_holds_what_it_shows() {
        let view = View::new();
        let a = Member::fixture("a", &[("role", "web")]);
        let b = Member::fixture("b", &[("role", "db")]);
        view.upsert(vec![a.clone(), b.clone()]);
        let member = |event, members: Vec<Member>| StreamRecord::Member { event, members };

        let mut w = Wanted::default();
        w.record(0, member(MemberEvent::Update, vec![a.clone()]), &view);
        assert!(named(&w).is_empty() && !w.full, "the view already shows a");

        let mut newer = b.clone();
        newer.tags.insert("role".into(), "cache".into());
        let c = Member::fixture("c", &[]);
        w.record(
            0,
            member(MemberEvent::Join, vec![a.clone(), newer, c]),
            &view,
        );
        assert_eq!(named(&w), ["b", "c"], "b differs, c is unknown");

        let mut w = Wanted::default();
        w.record(0, member(MemberEvent::Reap, vec![a.clone()]), &view);
        assert_eq!(named(&w), ["a"], "a reap is always checked");

        let mut w = Wanted::default();
        w.record(3, member(MemberEvent::Update, vec![a]), &view);
        assert!(w.full, "lost records ask for a full read");
    }
}
