//! The cluster benchmark: the real release `serfnode` binary beside 99 raw
//! `serf agent` processes on 127.0.210.1–100, every figure measured in one
//! run against a baseline taken in the same run:
//!
//! | figure | measured | baseline |
//! |---|---|---|
//! | synthetic view | 10,000 members in process: decode, reconcile, render, RSS | — |
//! | write node | events/s written to `<mnt>/parent`, lone node and in the cluster | one `serf event` process per event |
//! | setup | 99 agents joining until `serfnodes_by_id.json` lists 100 | — |
//! | read cost | open+read+close through the mount | the same bytes on tmpfs |
//! | freshness | a tag change showing in `members/<id>.json` | the local agent's `members` |
//! | memory | the daemon's VmRSS/VmHWM with 100 members | a raw `serf agent` |
//!
//! The 99 raw agents stand in for other hosts, so they run at nice 10: on a
//! 2-vCPU machine their gossip bursts would otherwise delay the node under
//! test by whole scheduler rounds. The write node is measured twice: on a
//! lone node (127.0.210.101, never joined), which is what serfnode adds per
//! event, and in the cluster, where all 100 agents relay every event on the
//! same few cores and set the pace.
//!
//! Needs root, FUSE and `serf` on PATH; run it with `scripts/bench`. It prints
//! figures and asserts nothing about timing. Every process it starts is killed
//! and reaped and every mount detached, at the end and on panic.
//! BENCHMARKS.md explains the method and keeps the latest figures.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serfnode::cluster::membership::View;
use serfnode::cluster::rpc::{Client, Member, StreamRecord};
use serfnode::surface::files;
use tokio::runtime::Runtime;

use common::poll::{poll_members_and_file, PROBE_TAG, TRIAL_TIMEOUT};
use common::procfs::*;
use common::report::*;
use common::synth::{encode_members, synthetic_member};
use common::user_events::{follow_user_stream, serf_event};
use serfnode_testkit::addr::Block;
use serfnode_testkit::process::Reaper;
use serfnode_testkit::{progress, Agents, Daemon, DaemonOpts};

const RAW_AGENTS: usize = 99;
const NODES: usize = RAW_AGENTS + 1;
/// The lone node of the write-node figures: an address outside the cluster.
const SOLO: usize = NODES;
/// The raw agents stand in for other hosts: on a small machine they must not
/// preempt the node under test (serfnode and its agent run at nice 0).
const AGENT_NICE: libc::c_int = 10;

/// Read cost: best of `READ_ROUNDS` rounds of `READ_ITERS` open+read+close.
const READ_ROUNDS: usize = 5;
const READ_ITERS: usize = 5000;
/// Freshness: tag changes, each bounded by `TRIAL_TIMEOUT`.
const TRIALS: usize = 40;
/// The stream's member-update record is ~1 s behind; wait this long for it.
const STREAM_WAIT: Duration = Duration::from_secs(4);
/// Write node: events written one per write(2), then `BATCH` per write.
const LINE_EVENTS: usize = 2000;
const BATCH: usize = 50;
const BATCH_WRITES: usize = 60;
const CLI_EVENTS: usize = 50;
/// In the cluster every agent relays every event: a smaller burst.
const CLUSTER_EVENTS: usize = 500;
/// Synthetic view: members and distinct roles.
const SYNTH_MEMBERS: usize = 10_000;
const SYNTH_ROLES: usize = 50;
/// The daemon's full reconcile period (its `--reconcile-period` default)
/// and the spacing it keeps at least (times what one full read takes).
const RECONCILE_MS: f64 = 5000.0;
const PERIODIC_SPACING: f64 = 400.0;

/// The share of a core full reconciles costing `ms` each take at the
/// daemon's default period (at least [`PERIODIC_SPACING`] times their cost).
fn reconcile_share(ms: f64) -> f64 {
    ms * 100.0 / RECONCILE_MS.max(ms * PERIODIC_SPACING)
}

fn main() -> Result<()> {
    let _reaper = Reaper::new()?;
    let started = Instant::now();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let busy = cpu_busy(Duration::from_secs(1))?;
    let machine = format!("{cpus} CPUs, {busy:.0} % busy in the second before the start");
    progress!("machine: {machine}");
    let mut summary = vec![row(["machine", &machine, "—", "—", "—"])];

    // `SERFNODE_BENCH_ONLY=write`: the lone node's write node only.
    let only_write = std::env::var("SERFNODE_BENCH_ONLY").is_ok_and(|v| v == "write");
    if !only_write {
        synthetic(&mut summary)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    write_node_alone(&rt, &mut summary)?;
    if only_write {
        drop(rt);
    } else {
        let mut cluster = Cluster::start(&mut summary)?;
        read_cost(&cluster, &mut summary)?;
        freshness(&cluster, &rt, &mut summary)?;
        write_node_in_cluster(&cluster, &rt, &mut summary)?;
        memory(&cluster, &mut summary)?;
        drop(rt);
        cluster.stop()?;
    }

    table(
        "Summary",
        &["figure", "serfnode", "baseline", "ratio", "target"],
        &summary,
    );
    progress!(
        "done in {:.0} s; update BENCHMARKS.md (\"Latest figures\") from the tables above",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---- processes ---------------------------------------------------------------

/// Node `n` is on 127.0.210.`n + 1`.
const ADDRS: Block = Block { third: 210 };

fn node_name(n: usize) -> String {
    format!("bench-{n}")
}

/// Starts node `n`: `serfnode agent` on 127.0.210.n+1, role `bench`.
fn start_daemon(n: usize, name: &str) -> Result<Daemon> {
    ADDRS.ensure_free(n)?;
    let daemon = Daemon::try_start(DaemonOpts {
        // The write-node figure is serfnode's own cost per event, so the
        // daemon's pacing (256 events/s by default) is off here.
        args: vec!["--event-rate".into(), "0".into()],
        ..DaemonOpts::bench(name, ADDRS.ip(n), "bench")
    })?;
    progress!("serfnode {name} is on {}", ADDRS.gossip(n));
    Ok(daemon)
}

/// The daemon (`bench-0`) and the raw agents (`bench-1` … `bench-99`).
/// Dropping it kills and reaps every agent, then the daemon stops.
struct Cluster {
    agents: Agents,
    /// Dropped after the agents are gone.
    daemon: Daemon,
}

impl Cluster {
    fn start(summary: &mut Rows) -> Result<Cluster> {
        for n in 0..NODES {
            ADDRS.ensure_free(n)?;
        }
        let daemon = start_daemon(0, &node_name(0))?;
        let agents = Agents::new(daemon.dir().join("agents"), node_name, Some(AGENT_NICE))?;
        let mut cluster = Cluster { agents, daemon };
        let started = Instant::now();
        let now = unix_now();
        for n in 1..=RAW_AGENTS {
            cluster.agents.spawn(|cmd| {
                cmd.args(["agent", &format!("-node={}", node_name(n))])
                    .arg(format!("-bind={}", ADDRS.gossip(n)))
                    .arg(format!("-rpc-addr={}", ADDRS.rpc(n)))
                    .args(["-profile=local", "-tag", &format!("role=r{n}")])
                    .args(["-tag", &format!("timestamp={:.6}", now + n as f64 * 1e-3)])
                    .arg(format!("-join={}", ADDRS.gossip(0)));
            })?;
        }
        let spawned = started.elapsed();
        progress!(
            "spawned {RAW_AGENTS} serf agents in {} ms; waiting for {} to list {NODES}",
            spawned.as_millis(),
            files::BY_ID
        );
        let agents = &mut cluster.agents;
        let converged = cluster.daemon.wait_listed(
            files::BY_ID,
            NODES,
            started,
            Duration::from_secs(120),
            || agents.check(),
        )?;
        let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
        table(
            &format!("Setup ({NODES} members)"),
            &["step", "time"],
            &[
                row(["spawn 99 `serf agent` processes", &secs(spawned)]),
                row([
                    &format!("last spawn → {} lists {NODES}", files::BY_ID),
                    &secs(converged - spawned),
                ]),
                row([
                    &format!("first spawn → {} lists {NODES}", files::BY_ID),
                    &secs(converged),
                ]),
            ],
        );
        summary.push(row([
            &format!(
                "convergence: 99 agents spawned → {} lists {NODES}",
                files::BY_ID
            ),
            &secs(converged),
            "—",
            "—",
            "—",
        ]));
        Ok(cluster)
    }

    /// The daemon, its own agent and every raw agent.
    fn pids(&self) -> Result<Vec<u32>> {
        let daemon = self.daemon.try_pid()? as u32;
        let mut pids = vec![daemon];
        pids.extend(children(daemon));
        pids.extend(self.agents.pids());
        Ok(pids)
    }

    /// Stops the daemon (it leaves while the agents still run) and kills
    /// and reaps every agent.
    fn stop(&mut self) -> Result<()> {
        self.daemon.terminate();
        let killed = self.agents.kill_all();
        progress!("{killed} serf agents killed and reaped");
        self.daemon.stop()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.daemon.terminate();
        self.agents.kill_all();
    }
}

// ---- read cost ---------------------------------------------------------------

/// Mean µs per open+read+close of `path` over one round.
fn read_round(path: &Path, buf: &mut Vec<u8>) -> Result<f64> {
    let start = Instant::now();
    for _ in 0..READ_ITERS {
        buf.clear();
        File::open(path)
            .and_then(|mut f| f.read_to_end(buf))
            .with_context(|| format!("read {}", path.display()))?;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / READ_ITERS as f64)
}

fn read_cost(cluster: &Cluster, summary: &mut Rows) -> Result<()> {
    let shm = tempfile::tempdir_in("/dev/shm").context("temp dir in /dev/shm")?;
    let member = format!("{}/{}.json", files::MEMBERS, node_name(42));
    let (mut rows, mut raw) = (Vec::new(), Vec::new());
    for file in [files::BY_ID, member.as_str()] {
        progress!("read cost: {file}, {READ_ROUNDS} rounds × {READ_ITERS} opens");
        let fuse = cluster.daemon.path(file);
        let bytes = fs::read(&fuse).with_context(|| format!("read {}", fuse.display()))?;
        let tmpfs = shm.path().join("copy.json");
        fs::write(&tmpfs, &bytes).with_context(|| format!("write {}", tmpfs.display()))?;
        let mut buf = Vec::with_capacity(bytes.len());
        // Warm-up, then alternate so drift in machine load hits both.
        read_round(&fuse, &mut buf)?;
        read_round(&tmpfs, &mut buf)?;
        let (mut fuse_us, mut tmpfs_us) = (Vec::new(), Vec::new());
        for _ in 0..READ_ROUNDS {
            tmpfs_us.push(read_round(&tmpfs, &mut buf)?);
            fuse_us.push(read_round(&fuse, &mut buf)?);
        }
        if buf != bytes {
            progress!("note: {file} changed while it was measured (a member flapped)");
        }
        let (f, t) = (min(&fuse_us), min(&tmpfs_us));
        let ratio = format!("{:.2}×", f / t);
        rows.push(row([
            file,
            &bytes.len().to_string(),
            &format!("{f:.2}"),
            &format!("{t:.2}"),
            &ratio,
        ]));
        raw.push(format!(
            "{file}: mount µs {} / tmpfs µs {}",
            list(&fuse_us, 2),
            list(&tmpfs_us, 2)
        ));
        summary.push(row([
            &format!("read cost: {file} ({} B), open+read+close", bytes.len()),
            &format!("{f:.2} µs"),
            &format!("{t:.2} µs (tmpfs)"),
            &ratio,
            "≤ 1.5×",
        ]));
    }
    table(
        &format!("Read cost (µs per open+read+close, best of {READ_ROUNDS} rounds × {READ_ITERS})"),
        &["file", "bytes", "mount µs", "tmpfs µs", "ratio"],
        &rows,
    );
    raw_lines(&raw);
    Ok(())
}

// ---- freshness -------------------------------------------------------------

/// One tag change, timed from the moment it was sent: when the local agent's
/// `members`, the member file and the local agent's stream showed it (`None`:
/// not within `TRIAL_TIMEOUT`), and when the `tags` RPC returned.
struct Trial {
    agent: Option<Duration>,
    file: Option<Duration>,
    stream: Option<Duration>,
    tags: Duration,
}

fn freshness(cluster: &Cluster, rt: &Runtime, summary: &mut Rows) -> Result<()> {
    progress!("freshness: {TRIALS} tag changes on random agents");
    let local = rt
        .block_on(Client::connect(ADDRS.rpc(0), None))
        .context("rpc connection to the local agent")?;
    let (tx, updates) = mpsc::channel();
    rt.block_on(async {
        let watcher = Client::connect(ADDRS.rpc(0), None).await?;
        let mut stream = watcher.stream("member-update").await?;
        tokio::spawn(async move {
            let _keep = watcher;
            while let Some(rec) = stream.recv().await {
                let at = Instant::now();
                if let StreamRecord::Member { members, .. } = rec {
                    for m in members {
                        let _ = tx.send((at, m.name, m.tags.get(PROBE_TAG).cloned()));
                    }
                }
            }
        });
        anyhow::Ok(())
    })
    .context("member-update stream of the local agent")?;

    let mut rng = Rng::seeded();
    let mut trials = Vec::with_capacity(TRIALS);
    for trial in 0..TRIALS {
        let n = 1 + rng.below(RAW_AGENTS);
        let (name, value) = (node_name(n), format!("t{trial}-{}", rng.below(1 << 30)));
        let file = cluster
            .daemon
            .path(&format!("{}/{name}.json", files::MEMBERS));
        let set = BTreeMap::from([(PROBE_TAG.to_owned(), value.clone())]);
        let t0 = Instant::now();
        let deadline = t0 + TRIAL_TIMEOUT;
        let tagger = rt.spawn(async move {
            let client = Client::connect(ADDRS.rpc(n), None).await?;
            client.tags(&set, &[]).await.map(|()| Instant::now())
        });
        let polled = poll_members_and_file(rt, &local, &name, &file, &value, deadline, None)
            .with_context(|| format!("trial {trial}"));
        let tagged = rt
            .block_on(tagger)
            .context("tags task")?
            .with_context(|| format!("trial {trial}: tags on {name}"))?;
        let (agent, file_seen) = polled?;
        let stream_seen = loop {
            let left =
                (agent.unwrap_or(deadline) + STREAM_WAIT).saturating_duration_since(Instant::now());
            match updates.recv_timeout(left) {
                Ok((at, who, v)) if who == name && v.as_deref() == Some(value.as_str()) => {
                    break Some(at)
                }
                Ok(_) => continue,
                Err(_) => break None,
            }
        };
        let t = Trial {
            agent: agent.map(|at| at - t0),
            file: file_seen.map(|at| at - t0),
            stream: stream_seen.map(|at| at - t0),
            tags: tagged - t0,
        };
        if t.agent.is_none() || t.file.is_none() {
            let seen = |d: Option<Duration>| d.map_or("never".into(), |d| format!("{d:?}"));
            progress!(
                "trial {trial}: {name} {PROBE_TAG}={value} missed: local members {}, file {}, \
                 stream {}, tags RPC returned after {:?}",
                seen(t.agent),
                seen(t.file),
                seen(t.stream),
                t.tags
            );
        }
        trials.push(t);
        if (trial + 1) % 10 == 0 {
            progress!("freshness {}/{TRIALS}", trial + 1);
        }
    }

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let after_agent = |later: fn(&Trial) -> Option<Duration>| -> Vec<f64> {
        trials
            .iter()
            .filter_map(|t| Some(ms(later(t)?) - ms(t.agent?)))
            .collect()
    };
    let mut lag = after_agent(|t| t.file);
    let mut stream = after_agent(|t| t.stream);
    let mut agent: Vec<f64> = trials.iter().filter_map(|t| t.agent.map(ms)).collect();
    let mut tags: Vec<f64> = trials.iter().map(|t| ms(t.tags)).collect();
    let missed_agent = trials.iter().filter(|t| t.agent.is_none()).count();
    let missed_file = trials
        .iter()
        .filter(|t| t.agent.is_some() && t.file.is_none())
        .count();
    let raw = [
        format!("file − members ms: {}", list(&lag, 1)),
        format!("stream − members ms: {}", list(&stream, 0)),
        format!("tags sent → local members ms: {}", list(&agent, 0)),
        format!(
            "missed within {TRIAL_TIMEOUT:?}: by the local agent {missed_agent}, \
             by the file (agent had it) {missed_file}"
        ),
    ];
    let (lag, stream, agent, tags) = (
        Percentiles::of(&mut lag),
        Percentiles::of(&mut stream),
        Percentiles::of(&mut agent),
        Percentiles::of(&mut tags),
    );
    table(
        &format!("Freshness ({TRIALS} tag changes on random agents, ms)"),
        &["interval", "n", "p50", "p90", "p99", "max"],
        &[
            lag.row("member file shows it − local `members` shows it (tB − tA)"),
            stream.row("local stream's member-update record − local `members` (context)"),
            agent.row("`tags` sent → local `members` shows it (gossip, context)"),
            tags.row("`tags` sent → the RPC returns (context)"),
        ],
    );
    raw_lines(&raw);
    summary.push(row([
        "freshness: member file behind local `members`, p50 / p99",
        &format!(
            "{:.1} / {:.1} ms (n = {}, missed {missed_file})",
            lag.p50, lag.p99, lag.n
        ),
        &format!("stream: {:.0} / {:.0} ms", stream.p50, stream.p99),
        "—",
        "≤ 50 / ≤ 200 ms",
    ]));
    Ok(())
}

// ---- write node ----------------------------------------------------------------

/// One way of raising events: what it took per call and overall.
struct WriteRun {
    how: String,
    name: &'static str,
    events: usize,
    rate: f64,
    ms: Vec<f64>,
    /// Extra CPU of the cluster's processes per event, in ms (cluster only).
    cpu_ms: Option<f64>,
}

/// `n` events, one `serf event -coalesce=false` process each (the original's way).
fn run_cli(rpc: SocketAddr, name: &'static str, n: usize) -> Result<WriteRun> {
    progress!("write node: baseline, {n} × `serf event -coalesce=false`");
    let mut ms = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        serf_event(rpc, name, &payload(i))?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(WriteRun {
        how: format!("`serf event` process per event ({n})"),
        name,
        events: n,
        rate: n as f64 / start.elapsed().as_secs_f64(),
        ms,
        cpu_ms: None,
    })
}

/// `n` events from the bench over one kept RPC connection: the agent's own
/// cost, a reference for the write node (which keeps one too).
fn run_rpc(rt: &Runtime, rpc: SocketAddr, name: &'static str, n: usize) -> Result<WriteRun> {
    progress!("write node: reference, {n} × RPC `event` on a kept connection");
    rt.block_on(async {
        let client = Client::connect(rpc, None)
            .await
            .with_context(|| format!("rpc connection to {rpc}"))?;
        let mut ms = Vec::with_capacity(n);
        let start = Instant::now();
        for i in 0..n {
            let t = Instant::now();
            client
                .event(name, payload(i).as_bytes(), false)
                .await
                .with_context(|| format!("rpc event {name} on {rpc}"))?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(WriteRun {
            how: format!("RPC `event` from the bench, kept connection, no FUSE ({n})"),
            name,
            events: n,
            rate: n as f64 / start.elapsed().as_secs_f64(),
            ms,
            cpu_ms: None,
        })
    })
}

/// `writes` write(2)s of `per_write` lines each to the write node `parent`.
fn run_node(
    parent: &Path,
    name: &'static str,
    writes: usize,
    per_write: usize,
) -> Result<WriteRun> {
    let events = writes * per_write;
    progress!("write node: {events} events, {per_write} line(s) per write(2)");
    let mut node = OpenOptions::new()
        .write(true)
        .open(parent)
        .with_context(|| format!("open {} for writing", parent.display()))?;
    let mut ms = Vec::with_capacity(writes);
    let start = Instant::now();
    for w in 0..writes {
        let buf: String = (0..per_write)
            .map(|i| event_line(name, w * per_write + i))
            .collect();
        let t = Instant::now();
        let n = node
            .write(buf.as_bytes())
            .with_context(|| format!("write {} to {}", name, parent.display()))?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        ensure!(
            n == buf.len(),
            "short write to {}: {n} of {} bytes",
            parent.display(),
            buf.len()
        );
    }
    Ok(WriteRun {
        how: match per_write {
            1 => format!("write node, 1 line per write ({events})"),
            k => format!("write node, {k} lines per write ({events})"),
        },
        name,
        events,
        rate: events as f64 / start.elapsed().as_secs_f64(),
        ms,
        cpu_ms: None,
    })
}

fn payload(i: usize) -> String {
    format!("{{\"i\":{i},\"from\":\"bench\",\"note\":\"benchmark event\"}}")
}

fn event_line(name: &str, i: usize) -> String {
    format!("[\"{name}\", {}]\n", payload(i))
}

/// User events one agent's RPC stream delivers, counted by name.
struct UserEvents {
    seen: Arc<Mutex<Seen>>,
}

#[derive(Default)]
struct Seen {
    counts: BTreeMap<String, usize>,
    last: Option<Instant>,
}

impl UserEvents {
    fn follow(rt: &Runtime, addr: SocketAddr) -> Result<UserEvents> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let counts = seen.clone();
        follow_user_stream(rt, addr, move |rec| {
            if let StreamRecord::User { name, .. } = rec {
                let mut c = counts.lock().expect("counts lock");
                *c.counts.entry(name).or_default() += 1;
                c.last = Some(Instant::now());
            }
        })?;
        Ok(UserEvents { seen })
    }

    /// Waits until `expected` events arrived or none came for 3 s (30 s at
    /// most); then the count of each name.
    fn settle(&self, expected: usize) -> BTreeMap<String, usize> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let seen = self.seen.lock().expect("counts lock");
            let quiet = seen
                .last
                .is_none_or(|l| l.elapsed() > Duration::from_secs(3));
            if seen.counts.values().sum::<usize>() >= expected || quiet || Instant::now() > deadline
            {
                return seen.counts.clone();
            }
        }
    }
}

fn write_table(title: &str, runs: &mut [WriteRun], seen: &BTreeMap<String, usize>, by: &str) {
    let base = runs[0].rate;
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    for run in runs.iter_mut() {
        raw.push(format!(
            "{} ms per call: {}",
            run.how,
            list(&run.ms[..run.ms.len().min(60)], 2)
        ));
        let p = Percentiles::of(&mut run.ms);
        let got = seen.get(run.name).copied().unwrap_or(0);
        let mut cells = vec![
            run.how.clone(),
            format!("{:.0}", run.rate),
            format!("{:.2}", p.p50),
            format!("{:.2}", p.p99),
            format!("{:.0}×", run.rate / base),
        ];
        cells.extend(run.cpu_ms.map(|c| format!("{c:.1}")));
        cells.push(format!("{got}/{}", run.events));
        rows.push(cells);
    }
    let mut header = vec![
        "how",
        "events/s",
        "p50 ms per call",
        "p99 ms per call",
        "× baseline",
    ];
    if runs.iter().any(|r| r.cpu_ms.is_some()) {
        header.push("cluster CPU ms per event");
    }
    header.push(by);
    table(title, &header, &rows);
    raw_lines(&raw);
}

/// The write node on a lone node: what serfnode adds per event.
fn write_node_alone(rt: &Runtime, summary: &mut Rows) -> Result<()> {
    let mut solo = start_daemon(SOLO, "bench-solo")?;
    let seen = UserEvents::follow(rt, ADDRS.rpc(SOLO))?;
    let parent = solo.path(files::WRITE_NODE);
    let mut runs = [
        run_cli(ADDRS.rpc(SOLO), "bench.cli", CLI_EVENTS)?,
        run_rpc(rt, ADDRS.rpc(SOLO), "bench.rpc", LINE_EVENTS)?,
        run_node(&parent, "bench", LINE_EVENTS, 1)?,
        run_node(&parent, "bench.batch", BATCH_WRITES, BATCH)?,
    ];
    let seen = seen.settle(runs.iter().map(|r| r.events).sum());
    solo.stop()?;
    write_table(
        "Write node, lone node (events accepted by the local agent)",
        &mut runs,
        &seen,
        "on the agent's own stream",
    );
    let [cli, _, line, batch] = &runs;
    summary.push(row([
        "write node, lone node: events/s, 1 line per write",
        &format!("{:.0}/s", line.rate),
        &format!("{:.0}/s (`serf event`)", cli.rate),
        &format!("{:.0}×", line.rate / cli.rate),
        "≥ 20×",
    ]));
    summary.push(row([
        &format!("write node, lone node: events/s, {BATCH} lines per write"),
        &format!("{:.0}/s", batch.rate),
        &format!("{:.0}/s (`serf event`)", cli.rate),
        &format!("{:.0}×", batch.rate / cli.rate),
        "—",
    ]));
    Ok(())
}

/// The write node in the 100-member cluster, with the cluster's CPU per
/// event and what another agent received.
fn write_node_in_cluster(cluster: &Cluster, rt: &Runtime, summary: &mut Rows) -> Result<()> {
    let observer = node_name(1);
    let seen = UserEvents::follow(rt, ADDRS.rpc(1))?;
    let pids = cluster.pids()?;
    let idle = {
        let (t, before) = (Instant::now(), cpu_ms(&pids));
        std::thread::sleep(Duration::from_secs(3));
        (cpu_ms(&pids) - before) / t.elapsed().as_secs_f64()
    };
    progress!(
        "write node: the idle cluster uses {:.0} % of a core",
        idle / 10.0
    );
    let parent = cluster.daemon.path(files::WRITE_NODE);
    let mut expected = 0;
    // Each run is followed until its gossip died down, so runs do not
    // overlap; its CPU is what the cluster used beyond idle meanwhile.
    let mut measured = |run: &dyn Fn() -> Result<WriteRun>| -> Result<WriteRun> {
        let (t, before) = (Instant::now(), cpu_ms(&pids));
        let mut r = run()?;
        expected += r.events;
        seen.settle(expected);
        let extra = cpu_ms(&pids) - before - idle * t.elapsed().as_secs_f64();
        r.cpu_ms = Some(extra / r.events as f64);
        Ok(r)
    };
    let mut runs = [
        measured(&|| run_cli(ADDRS.rpc(0), "bench.cli", CLI_EVENTS))?,
        measured(&|| run_node(&parent, "bench", CLUSTER_EVENTS, 1))?,
    ];
    let seen = seen.settle(expected);
    write_table(
        &format!(
            "Write node in the {NODES}-member cluster (received: counted on {observer}'s stream)"
        ),
        &mut runs,
        &seen,
        &format!("received by {observer}"),
    );
    let [cli, line] = &runs;
    summary.push(row([
        &format!("write node, {NODES}-member cluster: events/s, 1 line per write"),
        &format!(
            "{:.0}/s ({}/{} reached {observer})",
            line.rate,
            seen.get(line.name).copied().unwrap_or(0),
            line.events
        ),
        &format!("{:.0}/s (`serf event`)", cli.rate),
        &format!("{:.1}×", line.rate / cli.rate),
        "—",
    ]));
    Ok(())
}

// ---- memory --------------------------------------------------------------------

fn memory(cluster: &Cluster, summary: &mut Rows) -> Result<()> {
    let daemon = cluster.daemon.try_pid()? as u32;
    let mut rows = vec![proc_row("serfnode daemon (bench-0)", daemon)?];
    // The daemon's own supervised agent, when the kernel lists children.
    if let Some(agent) = children(daemon).into_iter().next() {
        rows.push(proc_row("serf agent supervised by serfnode", agent)?);
    }
    let raw_agent = cluster.agents.pid(1)?;
    rows.push(proc_row("raw serf agent (bench-1)", raw_agent)?);
    table(
        &format!("Memory with {NODES} members (after the runs above)"),
        &["process", "pid", "VmRSS MiB", "VmHWM MiB"],
        &rows,
    );
    let (d, a) = (proc_status(daemon)?, proc_status(raw_agent)?);
    summary.push(row([
        &format!("memory: daemon VmRSS / VmHWM, {NODES} members"),
        &format!("{:.1} / {:.1} MiB", mib(d.rss), mib(d.hwm)),
        &format!("{:.1} MiB (raw serf agent)", mib(a.rss)),
        "—",
        "—",
    ]));
    Ok(())
}

fn proc_row(what: &str, pid: u32) -> Result<Vec<String>> {
    let m = proc_status(pid)?;
    Ok(row([
        what,
        &pid.to_string(),
        &format!("{:.1}", mib(m.rss)),
        &format!("{:.1}", mib(m.hwm)),
    ]))
}

// ---- synthetic 10,000-member view ------------------------------------------------

/// Best of `inputs.len()` timed calls of `f`, one per input, in ms, and the
/// last result. Inputs are built beforehand so only `f` is timed.
fn best_ms<I, T>(inputs: Vec<I>, mut f: impl FnMut(I) -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut last = None;
    for input in inputs {
        let t = Instant::now();
        let out = f(input);
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
        last = Some(out);
    }
    (best, last.expect("at least one input"))
}

fn synthetic(summary: &mut Rows) -> Result<()> {
    progress!("synthetic view: {SYNTH_MEMBERS} members, {SYNTH_ROLES} roles, in process");
    const REPEAT: usize = 5;
    let start = unix_now();
    let rss_before = proc_status(std::process::id())?.rss;
    let view = View::new();
    let members: Vec<Member> = (0..SYNTH_MEMBERS)
        .map(|i| synthetic_member(i, start, SYNTH_ROLES))
        .collect();
    let t = Instant::now();
    ensure!(
        view.reconcile(members),
        "the first reconcile changed nothing"
    );
    let full = t.elapsed().as_secs_f64() * 1e3;
    let rss_after = proc_status(std::process::id())?.rss;
    let held = mib(rss_after.saturating_sub(rss_before));
    let snap = view.snapshot();
    ensure!(
        snap.members.len() == SYNTH_MEMBERS,
        "the view holds {} members",
        snap.members.len()
    );

    let (by_id_ms, by_id) = best_ms(vec![&snap; REPEAT], |s| {
        serde_json::to_vec(&files::by_id(s))
    });
    let by_id = by_id.context("render serfnodes_by_id.json")?;
    let (by_role_ms, by_role) = best_ms(vec![&snap; REPEAT], |s| {
        serde_json::to_vec(&files::by_role(s))
    });
    let by_role = by_role.context("render serfnodes_by_role.json")?;

    // What the files cost now: joined from each member's Node info bytes,
    // rendered on first use (cold: a fresh view) or already made (warm).
    let fresh: Vec<View> = (0..REPEAT)
        .map(|_| {
            let v = View::new();
            v.reconcile(snap.members.values().map(|e| (*e.member).clone()).collect());
            v
        })
        .collect();
    let (by_id_cold_ms, joined) = best_ms(fresh.iter().map(View::snapshot).collect(), |s| {
        files::by_id_json(&s)
    });
    let mut value_bytes = by_id.clone();
    value_bytes.push(b'\n');
    ensure!(
        joined == value_bytes,
        "the joined by_id differs from the Value rendering"
    );
    let (by_id_warm_ms, _) = best_ms(vec![&snap; REPEAT], |s| files::by_id_json(s));
    let (by_role_warm_ms, joined) = best_ms(vec![&snap; REPEAT], |s| files::by_role_json(s));
    let mut value_bytes = by_role.clone();
    value_bytes.push(b'\n');
    ensure!(
        joined == value_bytes,
        "the joined by_role differs from the Value rendering"
    );
    // A trigger's work: one re-read member applied.
    let one: Vec<Vec<Member>> = (0..REPEAT)
        .map(|round| {
            let mut m = (*snap.members.values().nth(SYNTH_MEMBERS / 3).unwrap().member).clone();
            m.tags
                .insert("service_port".into(), format!("91{round:02}"));
            vec![m]
        })
        .collect();
    let (upsert_ms, changed) = best_ms(one, |m| view.upsert(m));
    ensure!(changed, "a re-read member did not change the view");

    // What each 50 ms poll costs at this size: decode the agent's reply, then
    // a reconcile that finds nothing changed, or one member changed.
    let current: Vec<Member> = snap.members.values().map(|e| (*e.member).clone()).collect();
    let reply = encode_members(&current)?;
    let (decode_ms, decoded) = best_ms(vec![&reply; REPEAT], |r| {
        rmp_serde::from_slice::<Vec<Member>>(r)
    });
    ensure!(
        decoded.context("decode a members reply")? == current,
        "decoding changed the members"
    );
    let (same_ms, changed) = best_ms(vec![current.clone(); REPEAT], |m| view.reconcile(m));
    ensure!(!changed, "an identical members list changed the view");
    let one_changed = (0..REPEAT)
        .map(|round| {
            let mut next = current.clone();
            next[SYNTH_MEMBERS / 2]
                .tags
                .insert("service_port".into(), format!("90{round:02}"));
            next
        })
        .collect();
    let (one_ms, changed) = best_ms(one_changed, |m| view.reconcile(m));
    ensure!(changed, "a changed member did not change the view");

    let kib = |b: usize| format!("{:.0} KiB", b as f64 / 1024.0);
    let poll = decode_ms + same_ms;
    table(
        &format!("Synthetic view ({SYNTH_MEMBERS} members, {SYNTH_ROLES} roles; best of {REPEAT} where repeated)"),
        &["what", "value"],
        &[
            row(["reconcile 10,000 new members into an empty view", &format!("{full:.1} ms")]),
            row([
                "render serfnodes_by_id.json (`files::by_id` + `serde_json::to_vec`)",
                &format!("{by_id_ms:.1} ms, {}", kib(by_id.len())),
            ]),
            row([
                "render serfnodes_by_role.json (`files::by_role` + `serde_json::to_vec`)",
                &format!("{by_role_ms:.1} ms, {}", kib(by_role.len())),
            ]),
            row([
                "decode a 10,000-member `members` reply (msgpack)",
                &format!("{decode_ms:.1} ms, {}", kib(reply.len())),
            ]),
            row(["reconcile, nothing changed", &format!("{same_ms:.1} ms")]),
            row(["reconcile, one member changed", &format!("{one_ms:.1} ms")]),
            row([
                "render serfnodes_by_id.json joined (`files::by_id_json`), cold / warm per-member bytes",
                &format!("{by_id_cold_ms:.1} / {by_id_warm_ms:.1} ms"),
            ]),
            row([
                "render serfnodes_by_role.json joined (`files::by_role_json`), warm",
                &format!("{by_role_warm_ms:.1} ms"),
            ]),
            row(["apply one re-read member (`View::upsert`)", &format!("{upsert_ms:.3} ms")]),
            row([
                "one full reconcile at this size (decode + unchanged reconcile)",
                &format!("{poll:.1} ms = {:.2} % of a core at its period", reconcile_share(poll)),
            ]),
            row(["process RSS growth holding the view", &format!("{held:.1} MiB")]),
        ],
    );
    raw_lines(&[format!(
        "reconcile full {full:.3} ms / unchanged {same_ms:.3} ms / one changed {one_ms:.3} ms; \
         by_id {by_id_ms:.3} ms {} B; by_role {by_role_ms:.3} ms {} B; decode {decode_ms:.3} ms {} B; \
         joined by_id cold {by_id_cold_ms:.3} ms warm {by_id_warm_ms:.3} ms, by_role warm {by_role_warm_ms:.3} ms; \
         upsert {upsert_ms:.4} ms; \
         RSS {rss_before} → {rss_after} KiB",
        by_id.len(),
        by_role.len(),
        reply.len()
    )]);
    summary.push(row([
        "synthetic 10,000 members: render by_id / by_role, joined (warm)",
        &format!("{by_id_warm_ms:.1} / {by_role_warm_ms:.1} ms"),
        &format!("{by_id_ms:.1} / {by_role_ms:.1} ms (Value tree)"),
        &format!("{:.1}×", by_id_ms / by_id_warm_ms.max(1e-3)),
        "—",
    ]));
    summary.push(row([
        "synthetic 10,000 members: one full reconcile (decode + reconcile)",
        &format!(
            "{poll:.1} ms ({:.2} % of a core at its period)",
            reconcile_share(poll)
        ),
        "—",
        "—",
        "—",
    ]));
    summary.push(row([
        "synthetic 10,000 members: RSS holding the view",
        &format!("{held:.1} MiB"),
        "—",
        "—",
        "—",
    ]));
    Ok(())
}

// ---- output and small helpers ----------------------------------------------------
