//! The scale benchmark: what the real release `serfnode` daemon costs as the
//! cluster grows, and what a membership change costs it.
//!
//! Two kinds of cluster, each measured the same way:
//!
//! - **real**: serfnode's own agent plus 200 raw `serf agent` processes
//!   (`SERFNODE_SCALE_AGENTS` to change the count) on 127.0.212.1–201, at
//!   nice 10 like the cluster bench's;
//! - **synthetic**: the daemon attached (`--attach`) to a stand-in agent in
//!   this process that speaks Serf's RPC protocol (handshake, stats,
//!   members, member streams) over TCP and holds 200, 1,000 or 10,000
//!   members with the original project's tags: the view sizes this machine
//!   cannot run as real agents.
//!
//! `SERFNODE_SCALE_SIZES=1000,10000` picks the synthetic sizes and
//! `SERFNODE_SCALE_AGENTS=0` skips the real cluster.
//!
//! For each: **convergence** (start → `serfnodes_by_id.json` lists every
//! member); the daemon's **CPU at rest** (its periodic `members` re-read);
//! its **CPU per change** over 200 tag changes at 10/s that nobody reads,
//! read in nanoseconds from the daemon's CPU-time clock (its exited threads
//! included), beyond its idle rate and the full reads that fell among
//! them; the **time to open each file after a change**: a tag change (one
//! the Node info files show), then the first open+read+close of the
//! changed member's file (its poll every 1 ms; the read that first shows
//! the value), then of `serfnodes_by_id.json`, `serfnodes_by_role.json`
//! and `status.json` (each re-rendered on that first read), then five
//! rounds of cached reads of each, 20 ms apart; and **memory** (VmRSS /
//! VmHWM), against a raw `serf agent` of the real cluster.
//!
//! Needs root, FUSE and `serf` on PATH; run it with `scripts/bench`. It
//! prints figures and asserts nothing about timing. Every process it starts
//! is killed and reaped and every mount detached, at the end and on panic.
//! BENCHMARKS.md explains the method and keeps the latest figures.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serfnode::cluster::rpc::Client;
use serfnode::surface::files;
use tokio::runtime::Runtime;

use common::poll::{poll_file, read_us_of, FILE_POLL, PROBE_TAG, TRIAL_TIMEOUT};
use common::procfs::*;
use common::report::*;
use common::synth::{fake_member, synthetic_member};
use serfnode_testkit::addr::Block;
use serfnode_testkit::process::Reaper;
use serfnode_testkit::{progress, Agents, Daemon, DaemonOpts, FakeAgent};

const DEFAULT_AGENTS: usize = 200;
/// Room on 127.0.212.0/24 for the raw agents and serfnode's own.
const MAX_AGENTS: usize = 250;
const AGENT_NICE: libc::c_int = 10;
const SYNTH_SIZES: [usize; 3] = [200, 1_000, 10_000];
const SYNTH_ROLES: usize = 50;
/// After convergence, before anything is measured: joins still gossiping.
const SETTLE_REAL: Duration = Duration::from_secs(10);
const SETTLE_SYNTH: Duration = Duration::from_secs(2);
/// At rest the daemon only reads `members` in full every 5 s (every ~16 s
/// with 10,000 members): long enough for two of those at any size.
const REST: Duration = Duration::from_secs(32);
/// How long a full read may take to come (the period is at least 400 times
/// what one takes: ~40 s with 10,000 members here).
const FULL_READ_WAIT: Duration = Duration::from_secs(120);
/// Unread changes: this many, one every `UNREAD_EVERY`, then `UNREAD_TAIL`
/// for the last to arrive (the agent's stream coalesces for ~1 s). The CPU
/// is read at nanosecond resolution every `UNREAD_BLOCK` changes; the
/// figure is the median of the blocks, so one block that holds a full read
/// whose cost differs from the one measured at rest (at 10,000 members
/// 30–120 ms from run to run, ±1 ms per change of a block), or the first
/// block's wake-up, does not move it. The mean over all 200 is printed too.
const UNREAD: usize = 200;
const UNREAD_EVERY: Duration = Duration::from_millis(100);
const UNREAD_TAIL: Duration = Duration::from_secs(2);
const UNREAD_BLOCK: usize = 25;
/// After the rest period, its idle part alone: this long right after a
/// full read, with none inside (no cluster here reads more often).
const IDLE: Duration = Duration::from_secs(2);
const TRIALS: usize = 30;
/// Cached reads of each file per trial, `CACHED_EVERY` apart after its
/// first reads (so ≥ 100 samples per file, spread over the trial's gap).
const CACHED_ROUNDS: usize = 5;
const CACHED_EVERY: Duration = Duration::from_millis(20);
/// A tag the Node info files show (`service_port`): the trials set it
/// with the probe, so the first read of each file after a change is a
/// rendering of it.
const SHOWN_TAG: &str = "service_port";

/// A port number made from a trial's probe value.
fn shown_value(value: &str) -> String {
    let sum = value
        .bytes()
        .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(b.into()));
    (1024 + sum % 60_000).to_string()
}

/// The files timed after a change, the changed member's own first.
const AFTER_CHANGE: [&str; 3] = [files::BY_ID, files::BY_ROLE, files::STATUS];

fn main() -> Result<()> {
    let _reaper = Reaper::new()?;
    let started = Instant::now();
    let agents = match std::env::var("SERFNODE_SCALE_AGENTS") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("SERFNODE_SCALE_AGENTS={v} is not a count"))?,
        Err(_) => DEFAULT_AGENTS,
    };
    ensure!(
        agents <= MAX_AGENTS,
        "SERFNODE_SCALE_AGENTS must be 0 (no real cluster) to {MAX_AGENTS}"
    );
    let sizes: Vec<usize> = match std::env::var("SERFNODE_SCALE_SIZES") {
        Ok(v) => v
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("SERFNODE_SCALE_SIZES={v} is not a list of counts"))?,
        Err(_) => SYNTH_SIZES.to_vec(),
    };
    ensure!(
        sizes.iter().all(|&n| n >= 2),
        "a synthetic cluster needs at least 2 members"
    );
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let busy = cpu_busy(Duration::from_secs(1))?;
    progress!("machine: {cpus} CPUs, {busy:.0} % busy in the second before the start");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;

    let mut results = Vec::new();
    if agents > 0 {
        let mut cluster = RealCluster::start(agents)?;
        let mut changes = RealChanges {
            rt: &rt,
            agents,
            rng: Rng::seeded(),
        };
        let baseline = cluster.agents.pid(1)?;
        let own = children(cluster.daemon.try_pid()? as u32)
            .into_iter()
            .next();
        let mut r = measure(
            &format!("real, {} agents", agents + 1),
            agents + 1,
            cluster.converged,
            &mut cluster.daemon,
            &mut changes,
            SETTLE_REAL,
            &[
                ("its own serf agent", own),
                ("a raw serf agent", Some(baseline)),
            ],
        )?;
        r.context_mem = vec![
            ("raw serf agent".into(), proc_status(baseline)?),
            ("serfnode's own serf agent".into(), {
                let pid = own.context("serfnode's agent is not its child")?;
                proc_status(pid)?
            }),
        ];
        results.push(r);
        cluster.stop()?;
    }
    for size in sizes {
        let start = unix_now();
        let fake = FakeAgent::start(
            (0..size)
                .map(|i| fake_member(&synthetic_member(i, start, SYNTH_ROLES)))
                .collect(),
        )?;
        progress!(
            "stand-in agent: {size} members, a {} KiB members reply",
            fake.reply_len() / 1024
        );
        let t = Instant::now();
        let mut daemon = Daemon::try_start(DaemonOpts {
            attach: Some(fake.addr),
            ..DaemonOpts::bench(
                &format!("synth-{size}"),
                IpAddr::from([127, 0, 0, 1]),
                "test",
            )
        })?;
        let converged =
            daemon.wait_listed(files::BY_ID, size, t, Duration::from_secs(60), || Ok(()))?;
        let mut changes = SynthChanges {
            fake: &fake,
            rng: Rng::seeded(),
        };
        results.push(measure(
            &format!("synthetic, {size} members"),
            size,
            converged,
            &mut daemon,
            &mut changes,
            SETTLE_SYNTH,
            &[],
        )?);
        daemon.stop()?;
        fake.stop();
    }
    drop(rt);

    summary(&results);
    progress!(
        "done in {:.0} s; update BENCHMARKS.md (\"Latest figures\") from the tables above",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---- the daemon ------------------------------------------------------------------

// ---- the real cluster ------------------------------------------------------------

/// Node `n` is on 127.0.212.`n + 1`.
const ADDRS: Block = Block { third: 212 };

fn node_name(n: usize) -> String {
    format!("scale-{n}")
}

/// The daemon (`scale-0`) and the raw agents (`scale-1` …). Dropping it
/// kills and reaps every agent, then the daemon stops.
struct RealCluster {
    agents: Agents,
    converged: Duration,
    /// Dropped after the agents are gone.
    daemon: Daemon,
}

impl RealCluster {
    fn start(raw: usize) -> Result<RealCluster> {
        for n in 0..=raw {
            ADDRS.ensure_free(n)?;
        }
        let daemon = Daemon::try_start(DaemonOpts::bench(&node_name(0), ADDRS.ip(0), "scale"))?;
        let agents = Agents::new(daemon.dir().join("agents"), node_name, Some(AGENT_NICE))?;
        let mut cluster = RealCluster {
            agents,
            converged: Duration::ZERO,
            daemon,
        };
        let started = Instant::now();
        let now = unix_now();
        for n in 1..=raw {
            cluster.agents.spawn(|cmd| {
                cmd.args(["agent", &format!("-node={}", node_name(n))])
                    .arg(format!("-bind={}", ADDRS.gossip(n)))
                    .arg(format!("-rpc-addr={}", ADDRS.rpc(n)))
                    .args(["-profile=local", "-tag", &format!("role=r{}", n % 20)])
                    .args(["-tag", &format!("timestamp={:.6}", now + n as f64 * 1e-3)])
                    .arg(format!("-join={}", ADDRS.gossip(0)));
            })?;
            if n % 50 == 0 {
                progress!("spawned {n}/{raw} serf agents");
            }
        }
        progress!(
            "spawned {raw} serf agents in {} ms",
            started.elapsed().as_millis()
        );
        let agents = &mut cluster.agents;
        cluster.converged = cluster.daemon.wait_listed(
            files::BY_ID,
            raw + 1,
            started,
            Duration::from_secs(180),
            || agents.check(),
        )?;
        Ok(cluster)
    }

    fn stop(&mut self) -> Result<()> {
        let killed = self.agents.kill_all();
        progress!("{killed} serf agents killed and reaped");
        self.daemon.stop()
    }
}

// ---- changes ---------------------------------------------------------------------

/// Waits until a started change was sent (the `tags` RPC returned).
type Pending = Box<dyn FnOnce() -> Result<()>>;

/// Sets tag `probe` on some member other than the daemon's own.
trait Changes {
    /// Starts the change; the member's name and what to wait for. With
    /// `shown`, the change also sets [`SHOWN_TAG`], which the Node info
    /// files show, so they change with it (`probe` alone leaves them).
    fn start(&mut self, value: &str, shown: bool) -> Result<(String, Pending)>;

    /// `members` requests the agent answered so far, where it can tell.
    fn reads(&self) -> Option<u64> {
        None
    }

    /// Full `members` reads (the daemon's reconcile) so far, where the
    /// agent can tell.
    fn full_reads(&self) -> Option<u64> {
        None
    }
}

struct RealChanges<'a> {
    rt: &'a Runtime,
    agents: usize,
    rng: Rng,
}

impl Changes for RealChanges<'_> {
    fn start(&mut self, value: &str, shown: bool) -> Result<(String, Pending)> {
        let n = 1 + self.rng.below(self.agents);
        let mut set = BTreeMap::from([(PROBE_TAG.to_owned(), value.to_owned())]);
        if shown {
            set.insert(SHOWN_TAG.to_owned(), shown_value(value));
        }
        // `tags` takes the agent 1–1.6 s: it runs beside the measurement.
        let task = self.rt.spawn(async move {
            let client = Client::connect(ADDRS.rpc(n), None).await?;
            client.tags(&set, &[]).await
        });
        let handle = self.rt.handle().clone();
        let name = node_name(n);
        let what = name.clone();
        Ok((
            name,
            Box::new(move || {
                match handle.block_on(task).context("tags task")? {
                    // The agent has the new tags; its broadcast is queued
                    // behind the gossip of 200 agents on two cores. The
                    // change still spreads (the trial sees it or counts it
                    // missed).
                    Err(e)
                        if e.to_string()
                            .contains("timeout waiting for update broadcast") =>
                    {
                        progress!("tags on {what}: {e}");
                        Ok(())
                    }
                    r => r.with_context(|| format!("tags on {what}")),
                }
            }),
        ))
    }
}

struct SynthChanges<'a> {
    fake: &'a FakeAgent,
    rng: Rng,
}

impl Changes for SynthChanges<'_> {
    fn start(&mut self, value: &str, shown: bool) -> Result<(String, Pending)> {
        let i = 1 + self.rng.below(self.fake.members() - 1);
        if shown {
            // Told with the probe's own log line and record, as one change.
            self.fake
                .set_tag_quietly(i, SHOWN_TAG, &shown_value(value))?;
        }
        let name = self.fake.set_tag(i, PROBE_TAG, value)?;
        Ok((name, Box::new(|| Ok(()))))
    }

    fn reads(&self) -> Option<u64> {
        Some(self.fake.reads())
    }

    fn full_reads(&self) -> Option<u64> {
        Some(self.fake.full_reads())
    }
}

/// Waits (at most `limit`) until the agent answered a full read after
/// `since` of them; whether it did.
fn next_full_read(changes: &dyn Changes, since: u64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if changes.full_reads().is_some_and(|n| n > since) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

// ---- measuring -------------------------------------------------------------------

struct Scale {
    what: String,
    members: usize,
    converged: Duration,
    /// The daemon's CPU at rest, % of one core.
    rest_pct: f64,
    /// The daemon's CPU between full reads, % of one core (where the agent
    /// counts full reads; else the rest figure).
    idle_pct: f64,
    /// The daemon's CPU per full read at rest, ms (where counted).
    full_read_ms: Option<f64>,
    /// Others' CPU at rest, % of one core (real cluster only).
    rest_others: Vec<(String, f64)>,
    /// Daemon CPU per unread change beyond the idle rate and the full
    /// reads in the window, ms: the median of the blocks of `UNREAD_BLOCK`,
    /// each block's figure, and the mean over the whole window.
    per_change_ms: f64,
    mean_change_ms: f64,
    per_block_ms: Vec<f64>,
    /// Full reads during the unread changes (where counted).
    unread_full_reads: Option<u64>,
    unread_secs: f64,
    /// `members` re-reads per second at rest and during the unread changes
    /// (synthetic clusters only: the stand-in agent counts them).
    reads_per_s: Option<(f64, f64)>,
    /// Change started → the member file shows it, ms.
    seen: Vec<f64>,
    /// File → (first read after the change, cached read), µs; and its size.
    reads: Vec<(String, Vec<f64>, Vec<f64>, usize)>,
    missed: usize,
    mem: ProcMem,
    context_mem: Vec<(String, ProcMem)>,
}

/// The daemon's CPU so far, ms (nanosecond resolution).
fn daemon_cpu(pid: u32) -> Result<f64> {
    cpu_clock_ms(pid)
}

fn measure(
    what: &str,
    members: usize,
    converged: Duration,
    daemon: &mut Daemon,
    changes: &mut dyn Changes,
    settle: Duration,
    others: &[(&str, Option<u32>)],
) -> Result<Scale> {
    progress!("{what}: settling {settle:?}, then {REST:?} at rest");
    std::thread::sleep(settle);
    daemon.check_alive()?;
    let pid = daemon.try_pid()? as u32;
    let other_pids: Vec<(String, u32)> = others
        .iter()
        .filter_map(|(w, p)| Some(((*w).to_owned(), (*p)?)))
        .collect();
    // Where the agent counts full reads, the rest is measured from just
    // after one to just after the next: exactly one reconcile period (at
    // 10,000 members longer than any fixed window), else over `REST`.
    let periods = changes.full_reads().map(|n0| {
        next_full_read(changes, n0, FULL_READ_WAIT) && {
            let n1 = changes.full_reads().unwrap_or(0);
            std::thread::sleep(Duration::from_millis(100));
            changes.full_reads() == Some(n1)
        }
    });
    let t = Instant::now();
    let c0 = daemon_cpu(pid)?;
    let r0 = changes.reads();
    let o0: Vec<f64> = other_pids.iter().map(|(_, p)| cpu_ms(&[*p])).collect();
    let counted = match (periods, changes.full_reads()) {
        (Some(true), Some(n)) => {
            if !next_full_read(changes, n, FULL_READ_WAIT) {
                progress!("{what}: no full read within {FULL_READ_WAIT:?}");
            }
            // Its decode and reconcile, after the agent's answer went out.
            std::thread::sleep(Duration::from_millis(300));
            progress!(
                "{what}: at rest over one reconcile period, {:?}",
                t.elapsed()
            );
            changes.full_reads().map(|n1| n1 - n)
        }
        _ => {
            std::thread::sleep(REST);
            None
        }
    };
    let secs = t.elapsed().as_secs_f64();
    let rest_cpu = daemon_cpu(pid)? - c0;
    let rest_reads = r0.zip(changes.reads()).map(|(a, b)| (b - a) as f64 / secs);
    let rest_rate = rest_cpu / secs; // ms per s
    let rest_others = other_pids
        .iter()
        .zip(o0)
        .map(|((w, p), c)| (w.clone(), (cpu_ms(&[*p]) - c) / secs / 10.0))
        .collect();
    // The idle part alone, right after that period's closing full read:
    // then each full read's cost is the period's CPU less its idle part.
    let (idle_rate, full_read_ms) = match counted {
        Some(n) if n > 0 => {
            let (t, c0, f0) = (Instant::now(), daemon_cpu(pid)?, changes.full_reads());
            std::thread::sleep(IDLE);
            let idle = (daemon_cpu(pid)? - c0) / t.elapsed().as_secs_f64();
            if changes.full_reads() == f0 {
                (idle, Some((rest_cpu - idle * secs) / n as f64))
            } else {
                progress!("{what}: a full read fell in the idle window; using the rest rate");
                (rest_rate, None)
            }
        }
        _ => (rest_rate, None),
    };

    progress!("{what}: {UNREAD} changes nobody reads, one every {UNREAD_EVERY:?}");
    let t = Instant::now();
    let c0 = daemon_cpu(pid)?;
    let r0 = changes.reads();
    let f0 = changes.full_reads();
    // (time, CPU, full reads) at the start of each block, and at the end.
    let mut marks = vec![(t, c0, f0)];
    let mut pending = Vec::with_capacity(UNREAD);
    for k in 0..UNREAD {
        let due = t + UNREAD_EVERY * k as u32;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        if k > 0 && k % UNREAD_BLOCK == 0 {
            marks.push((Instant::now(), daemon_cpu(pid)?, changes.full_reads()));
        }
        pending.push(changes.start(&format!("u{k}-{}", unix_now()), false)?.1);
    }
    for p in pending {
        p()?;
    }
    std::thread::sleep(UNREAD_TAIL);
    marks.push((Instant::now(), daemon_cpu(pid)?, changes.full_reads()));
    let unread_secs = t.elapsed().as_secs_f64();
    let unread_reads = r0
        .zip(changes.reads())
        .map(|(a, b)| (b - a) as f64 / unread_secs);
    // What `n` changes cost between two marks: the CPU less the idle rate
    // over that time and less the full reads that fell in it.
    let beyond = |a: &(Instant, f64, Option<u64>), b: &(Instant, f64, Option<u64>), n: usize| {
        let fulls = a.2.zip(b.2).map_or(0, |(x, y)| y - x) as f64;
        let secs = (b.0 - a.0).as_secs_f64();
        (b.1 - a.1 - idle_rate * secs - fulls * full_read_ms.unwrap_or(0.0)) / n as f64
    };
    let first = marks.first().expect("a start mark");
    let last = marks.last().expect("an end mark");
    let mean_change_ms = beyond(first, last, UNREAD);
    let per_block_ms: Vec<f64> = marks
        .windows(2)
        .map(|w| beyond(&w[0], &w[1], UNREAD_BLOCK))
        .collect();
    let per_change_ms = median(&per_block_ms);
    let unread_full_reads = first.2.zip(last.2).map(|(a, b)| b - a);

    progress!("{what}: {TRIALS} changes, each file opened after it");
    let mut seen = Vec::with_capacity(TRIALS);
    let mut names: Vec<String> = vec!["members/<changed>.json".into()];
    names.extend(AFTER_CHANGE.iter().map(|f| f.to_string()));
    let mut first = vec![Vec::new(); names.len()];
    let mut cached = vec![Vec::new(); names.len()];
    let mut sizes = vec![0; names.len()];
    let mut missed = 0;
    let mut buf = Vec::new();
    for trial in 0..TRIALS {
        let value = format!("t{trial}-{}", unix_now());
        let t0 = Instant::now();
        let (name, pending) = changes.start(&value, true)?;
        let member = daemon.path(&format!("{}/{name}.json", files::MEMBERS));
        match poll_file(
            &member,
            PROBE_TAG,
            &value,
            t0 + TRIAL_TIMEOUT,
            FILE_POLL,
            &mut buf,
        )? {
            Some((at, read_us)) => {
                seen.push((at - t0).as_secs_f64() * 1e3);
                first[0].push(read_us);
                sizes[0] = buf.len();
                for (i, f) in AFTER_CHANGE.iter().enumerate() {
                    first[i + 1].push(read_us_of(&daemon.path(f), &mut buf)?);
                    sizes[i + 1] = buf.len();
                }
                let t1 = Instant::now();
                for round in 0..CACHED_ROUNDS {
                    let due = t1 + CACHED_EVERY * round as u32;
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    cached[0].push(read_us_of(&member, &mut buf)?);
                    for (i, f) in AFTER_CHANGE.iter().enumerate() {
                        cached[i + 1].push(read_us_of(&daemon.path(f), &mut buf)?);
                    }
                }
            }
            None => {
                missed += 1;
                progress!(
                    "trial {trial}: {name} {PROBE_TAG}={value} not seen within {TRIAL_TIMEOUT:?}"
                );
            }
        }
        pending()?;
        if (trial + 1) % 10 == 0 {
            progress!("trials {}/{TRIALS}", trial + 1);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.check_alive()?;
    let reads = names
        .into_iter()
        .zip(first)
        .zip(cached)
        .zip(sizes)
        .map(|(((n, f), c), s)| (n, f, c, s))
        .collect();
    Ok(Scale {
        what: what.to_owned(),
        members,
        converged,
        rest_pct: rest_rate / 10.0,
        idle_pct: idle_rate / 10.0,
        full_read_ms,
        rest_others,
        per_change_ms,
        mean_change_ms,
        per_block_ms,
        unread_full_reads,
        unread_secs,
        reads_per_s: rest_reads.zip(unread_reads),
        seen,
        reads,
        missed,
        mem: proc_status(pid)?,
        context_mem: Vec::new(),
    })
}

// ---- output ----------------------------------------------------------------------

fn summary(results: &[Scale]) {
    for r in results {
        let mut rows = Vec::new();
        for (file, first, cached, size) in &r.reads {
            let (mut f, mut c) = (first.clone(), cached.clone());
            let (pf, pc) = (Percentiles::of(&mut f), Percentiles::of(&mut c));
            rows.push(row([
                file,
                &size.to_string(),
                &format!("{:.0} / {:.0}", pf.p50, pf.p99),
                &format!(
                    "{:.0} / {:.0} / {:.0} (n = {})",
                    pc.p50, pc.p99, pc.max, pc.n
                ),
            ]));
        }
        table(
            &format!(
                "Open each file after a change: {} ({} trials, missed {}; µs)",
                r.what, TRIALS, r.missed
            ),
            &[
                "file",
                "bytes",
                "first read after the change, p50 / p99",
                "cached read, p50 / p99 / max",
            ],
            &rows,
        );
        let mut seen = r.seen.clone();
        let s = Percentiles::of(&mut seen);
        let mut raw = vec![format!(
            "change started → member file shows it, ms: p50 {:.1} p90 {:.1} p99 {:.1} max {:.1} (n = {})",
            s.p50, s.p90, s.p99, s.max, s.n
        )];
        // Where the slow cached reads fall: right after the first reads
        // (the daemon still busy with the change) or anywhere (the machine).
        for (file, _, cached, _) in &r.reads {
            let by_round: Vec<f64> = (0..CACHED_ROUNDS)
                .map(|k| {
                    let mut v: Vec<f64> = cached
                        .iter()
                        .skip(k)
                        .step_by(CACHED_ROUNDS)
                        .copied()
                        .collect();
                    Percentiles::of(&mut v).max
                })
                .collect();
            raw.push(format!(
                "cached reads of {file}, max by round (20 ms apart), µs: {}",
                list(&by_round, 0)
            ));
        }
        for (who, pct) in &r.rest_others {
            raw.push(format!("at rest: {who} {pct:.2} % of a core"));
        }
        raw.push(format!(
            "unread changes: {UNREAD} over {:.1} s, {} full reads among them; \
             per block of {UNREAD_BLOCK}, ms per change: {} (median {:.3}, mean {:.3})",
            r.unread_secs,
            r.unread_full_reads
                .map_or("uncounted".to_owned(), |n| n.to_string()),
            list(&r.per_block_ms, 3),
            r.per_change_ms,
            r.mean_change_ms
        ));
        raw.push(format!(
            "daemon CPU at rest {:.3} %, between full reads {:.3} %; per full read {}",
            r.rest_pct,
            r.idle_pct,
            r.full_read_ms
                .map_or("not counted".to_owned(), |ms| format!("{ms:.2} ms"))
        ));
        if let Some((rest, unread)) = r.reads_per_s {
            raw.push(format!(
                "members re-reads per s: at rest {rest:.1}, during the changes {unread:.1}; \
                 daemon CPU per re-read at rest {:.2} ms",
                r.rest_pct * 10.0 / rest.max(f64::MIN_POSITIVE)
            ));
        }
        for (who, m) in &r.context_mem {
            raw.push(format!(
                "{who}: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
                mib(m.rss),
                mib(m.hwm)
            ));
        }
        raw_lines(&raw);
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let p50 = |i: usize| {
                let mut v = r.reads[i].1.clone();
                Percentiles::of(&mut v).p50
            };
            let rest = match r.reads_per_s {
                Some((reads, _)) => format!(
                    "{:.2} % ({reads:.1} re-reads/s, {:.2} ms each)",
                    r.rest_pct,
                    r.rest_pct * 10.0 / reads.max(f64::MIN_POSITIVE)
                ),
                None => format!("{:.2} %", r.rest_pct),
            };
            row([
                &r.what,
                &r.members.to_string(),
                &format!("{:.2} s", r.converged.as_secs_f64()),
                &rest,
                &format!(
                    "{:.3} ms (blocks {:.3}–{:.3})",
                    r.per_change_ms,
                    min(&r.per_block_ms),
                    r.per_block_ms
                        .iter()
                        .copied()
                        .fold(f64::NEG_INFINITY, f64::max)
                ),
                &format!(
                    "{:.0} / {:.0} / {:.0} / {:.0} µs",
                    p50(0),
                    p50(1),
                    p50(2),
                    p50(3)
                ),
                &format!("{:.1} / {:.1} MiB", mib(r.mem.rss), mib(r.mem.hwm)),
            ])
        })
        .collect();
    table(
        "Scale summary",
        &[
            "cluster",
            "members",
            "start → by_id lists all",
            "daemon CPU at rest (of a core)",
            "daemon CPU per unread change",
            "first read after a change, p50: member / by_id / by_role / status",
            "daemon VmRSS / VmHWM",
        ],
        &rows,
    );
}
