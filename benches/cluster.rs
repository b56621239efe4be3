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

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::Serialize;
use serde_json::Value;
use serfnode::files;
use serfnode::membership::View;
use serfnode::rpc::{Client, Member, MemberStatus, StreamRecord};
use tokio::runtime::Runtime;

use common::{detach, is_mounted, signal, tail, Reaper};

const SERFNODE: &str = env!("CARGO_BIN_EXE_serfnode");
const RAW_AGENTS: usize = 99;
const NODES: usize = RAW_AGENTS + 1;
/// The lone node of the write-node figures: an address outside the cluster.
const SOLO: usize = NODES;
const GOSSIP_PORT: u16 = 7946;
const RPC_PORT: u16 = 7373;
/// The raw agents stand in for other hosts: on a small machine they must not
/// preempt the node under test (serfnode and its agent run at nice 0).
const AGENT_NICE: libc::c_int = 10;

/// Read cost: best of `READ_ROUNDS` rounds of `READ_ITERS` open+read+close.
const READ_ROUNDS: usize = 5;
const READ_ITERS: usize = 5000;
/// Freshness: tag changes, each bounded by `TRIAL_TIMEOUT`.
const TRIALS: usize = 40;
const TRIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// The stream's member-update record is ~1 s behind; wait this long for it.
const STREAM_WAIT: Duration = Duration::from_secs(4);
/// The member file's poll period: a reader spinning on cached reads would
/// take a whole core from the daemon (and 100 agents) on a small machine.
const FILE_POLL: Duration = Duration::from_millis(1);
/// The tag the freshness trials change on raw agents.
const PROBE_TAG: &str = "probe";
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
/// The daemon's `members` re-read period (its `--poll-ms` default).
const POLL_MS: f64 = 50.0;

type Rows = Vec<Vec<String>>;

fn main() -> Result<()> {
    let _reaper = Reaper::new()?;
    let started = Instant::now();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let busy = cpu_busy(Duration::from_secs(1))?;
    let machine = format!("{cpus} CPUs, {busy:.0} % busy in the second before the start");
    progress!("machine: {machine}");
    let mut summary = vec![row(["machine", &machine, "—", "—", "—"])];

    synthetic(&mut summary)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    write_node_alone(&rt, &mut summary)?;
    let mut cluster = Cluster::start(&mut summary)?;
    read_cost(&cluster, &mut summary)?;
    freshness(&cluster, &rt, &mut summary)?;
    write_node_in_cluster(&cluster, &rt, &mut summary)?;
    memory(&cluster, &mut summary)?;
    drop(rt);
    cluster.stop()?;

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

fn ip(n: usize) -> IpAddr {
    let last = u8::try_from(n + 1).expect("at most 254 nodes");
    IpAddr::V4(Ipv4Addr::new(127, 0, 210, last))
}

fn node_name(n: usize) -> String {
    format!("bench-{n}")
}

fn gossip_addr(n: usize) -> SocketAddr {
    SocketAddr::new(ip(n), GOSSIP_PORT)
}

fn rpc_addr(n: usize) -> SocketAddr {
    SocketAddr::new(ip(n), RPC_PORT)
}

/// A `serfnode agent` with its mount, hosts file and log in a temp dir.
/// Stopped, reaped and unmounted by [`Daemon::stop`] or on drop.
struct Daemon {
    name: String,
    mount: PathBuf,
    child: Option<Child>,
    /// SIGTERM was sent: a second one would make serfnode exit at once,
    /// skipping its agent's leave.
    terminated: bool,
    /// Declared last: removed only once the process is gone.
    dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts node `n` and waits until it follows its agent.
    fn start(n: usize, name: &str) -> Result<Daemon> {
        ensure_free(n)?;
        let dir = tempfile::Builder::new()
            .prefix("serfnode-bench-")
            .tempdir()
            .context("temp dir for serfnode")?;
        let mount = dir.path().join("mnt");
        fs::create_dir(&mount).context("mount point")?;
        let hosts = dir.path().join("hosts");
        fs::write(&hosts, "127.0.0.1\tlocalhost\n").context("hosts file")?;
        let mut daemon = Daemon {
            name: name.to_owned(),
            mount,
            child: None,
            terminated: false,
            dir,
        };
        let mut cmd = Command::new(SERFNODE);
        cmd.args(["agent", "--node", name])
            .args(["--bind", &gossip_addr(n).to_string()])
            .args(["--rpc-addr", &rpc_addr(n).to_string()])
            .arg("--mount")
            .arg(&daemon.mount)
            .arg("--hosts-file")
            .arg(&hosts)
            .args(["--profile", "local", "--role", "bench"])
            // The write-node figure is serfnode's own cost per event, so
            // the daemon's pacing (256 events/s by default) is off here.
            .args(["--event-rate", "0"])
            .env("SERFNODE_LOG", "info");
        for var in [
            "ROLE",
            "PEER",
            "SERF_IP",
            "SERF_PORT",
            "NODE_NAME",
            "RPC_PORT",
        ] {
            cmd.env_remove(var);
        }
        let started = Instant::now();
        daemon.child = Some(spawn(cmd, &daemon.log(), libc::SIGTERM, 0)?);
        let deadline = started + Duration::from_secs(30);
        while !daemon
            .json(files::STATUS)
            .is_ok_and(|s| s["agent"]["connected"] == true)
        {
            daemon.check_alive()?;
            ensure!(
                Instant::now() < deadline,
                "serfnode {name} does not follow its agent after 30 s\n{}",
                tail(&daemon.log())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        progress!(
            "serfnode {name} on {} follows its agent after {} ms",
            gossip_addr(n),
            started.elapsed().as_millis()
        );
        Ok(daemon)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("serfnode.log")
    }

    fn path(&self, file: &str) -> PathBuf {
        self.mount.join(file)
    }

    fn json(&self, file: &str) -> Result<Value> {
        let path = self.path(file);
        let bytes = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not json", path.display()))
    }

    fn pid(&self) -> Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .with_context(|| format!("serfnode {} is not running", self.name))
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = &mut self.child {
            if let Some(status) = child.try_wait().context("wait for serfnode")? {
                bail!(
                    "serfnode {} exited with {status}\n{}",
                    self.name,
                    tail(&self.log())
                );
            }
        }
        Ok(())
    }

    /// Asks for a clean shutdown (leave, unmount) without waiting for it.
    fn terminate(&mut self) {
        if let Some(child) = self.child.as_ref().filter(|_| !self.terminated) {
            signal(child, libc::SIGTERM);
            self.terminated = true;
        }
    }

    /// SIGTERM, up to 10 s for a clean exit, then SIGKILL; reaps the
    /// process and detaches the mount if it is still there.
    fn stop(&mut self) -> Result<()> {
        self.terminate();
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let status = child
            .wait()
            .with_context(|| format!("reap serfnode {}", self.name))?;
        if is_mounted(&self.mount) {
            detach(&self.mount);
        }
        ensure!(
            !is_mounted(&self.mount),
            "{} is still mounted",
            self.mount.display()
        );
        progress!("serfnode {} stopped ({status}), mount detached", self.name);
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", tail(&self.log()));
        }
        if let Err(e) = self.stop() {
            eprintln!("cleanup: {e:#}");
        }
    }
}

/// The daemon (`bench-0`) and the raw agents (`bench-1` … `bench-99`).
/// Dropping it kills and reaps every agent, then the daemon stops.
struct Cluster {
    agents: Vec<Child>,
    /// Dropped after the agents are gone.
    daemon: Daemon,
}

impl Cluster {
    fn start(summary: &mut Rows) -> Result<Cluster> {
        for n in 0..NODES {
            ensure_free(n)?;
        }
        let daemon = Daemon::start(0, &node_name(0))?;
        fs::create_dir(daemon.dir.path().join("agents")).context("agent log dir")?;
        let mut cluster = Cluster {
            agents: Vec::with_capacity(RAW_AGENTS),
            daemon,
        };
        let started = Instant::now();
        let now = unix_now();
        for n in 1..=RAW_AGENTS {
            let mut cmd = Command::new("serf");
            cmd.args(["agent", &format!("-node={}", node_name(n))])
                .arg(format!("-bind={}", gossip_addr(n)))
                .arg(format!("-rpc-addr={}", rpc_addr(n)))
                .args(["-profile=local", "-tag", &format!("role=r{n}")])
                .args(["-tag", &format!("timestamp={:.6}", now + n as f64 * 1e-3)])
                .arg(format!("-join={}", gossip_addr(0)));
            let child = spawn(cmd, &cluster.agent_log(n), libc::SIGKILL, AGENT_NICE)
                .context("spawn `serf agent` (is serf installed?)")?;
            cluster.agents.push(child);
        }
        let spawned = started.elapsed();
        progress!(
            "spawned {RAW_AGENTS} serf agents in {} ms; waiting for {} to list {NODES}",
            spawned.as_millis(),
            files::BY_ID
        );
        let deadline = started + Duration::from_secs(120);
        let mut shown = (0, Instant::now());
        loop {
            cluster.check_alive()?;
            let listed = cluster
                .daemon
                .json(files::BY_ID)
                .ok()
                .and_then(|v| v.as_object().map(|o| o.len()))
                .unwrap_or(0);
            if listed != shown.0 && (shown.1.elapsed() >= Duration::from_secs(1) || listed == NODES)
            {
                progress!("agents {}/{RAW_AGENTS}", listed.saturating_sub(1));
                shown = (listed, Instant::now());
            }
            if listed == NODES {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{} lists {listed} of {NODES} members after 120 s\n{}",
                files::BY_ID,
                tail(&cluster.daemon.log())
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let converged = started.elapsed();
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

    fn agent_log(&self, n: usize) -> PathBuf {
        self.daemon
            .dir
            .path()
            .join("agents")
            .join(format!("{}.log", node_name(n)))
    }

    fn agent_pid(&self, n: usize) -> Result<u32> {
        self.agents
            .get(n - 1)
            .map(Child::id)
            .with_context(|| format!("no agent {}", node_name(n)))
    }

    /// The daemon, its own agent and every raw agent.
    fn pids(&self) -> Result<Vec<u32>> {
        let daemon = self.daemon.pid()?;
        let mut pids = vec![daemon];
        pids.extend(children(daemon));
        pids.extend(self.agents.iter().map(Child::id));
        Ok(pids)
    }

    /// Fails, naming the process and showing its log, once any exited.
    fn check_alive(&mut self) -> Result<()> {
        self.daemon.check_alive()?;
        for (i, agent) in self.agents.iter_mut().enumerate() {
            if let Some(status) = agent.try_wait().context("wait for a serf agent")? {
                let n = i + 1;
                bail!(
                    "serf agent {} exited with {status}\n{}",
                    node_name(n),
                    tail(&self.agent_log(n))
                );
            }
        }
        Ok(())
    }

    fn kill_agents(&mut self) -> usize {
        let n = self.agents.len();
        for mut agent in self.agents.drain(..) {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        n
    }

    /// Stops the daemon (it leaves while the agents still run) and kills
    /// and reaps every agent.
    fn stop(&mut self) -> Result<()> {
        self.daemon.terminate();
        let killed = self.kill_agents();
        progress!("{killed} serf agents killed and reaped");
        self.daemon.stop()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.daemon.terminate();
        self.kill_agents();
    }
}

/// A leftover agent of an earlier run would make the figures meaningless.
fn ensure_free(n: usize) -> Result<()> {
    let (g, r) = (gossip_addr(n), rpc_addr(n));
    let free =
        TcpListener::bind(g).is_ok() && UdpSocket::bind(g).is_ok() && TcpListener::bind(r).is_ok();
    ensure!(
        free,
        "{g} or {r} is in use: a leftover agent of an earlier run? (pgrep -a serf)"
    );
    Ok(())
}

/// Spawns `cmd` at priority `nice` with its output in `log`. The child gets
/// `death_signal` when the spawning (main) thread dies, so a killed bench
/// leaves nothing behind.
fn spawn(
    mut cmd: Command,
    log: &Path,
    death_signal: libc::c_int,
    nice: libc::c_int,
) -> Result<Child> {
    let out = File::create(log).with_context(|| format!("create {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().context("log file handle")?)
        .stderr(out);
    // SAFETY: prctl(2) and setpriority(2) are plain syscalls, safe between
    // fork and exec; the closure touches no shared state.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal) != 0
                || libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("spawn {:?}", cmd.get_program()))
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
        .block_on(Client::connect(rpc_addr(0), None))
        .context("rpc connection to the local agent")?;
    let (tx, updates) = mpsc::channel();
    rt.block_on(async {
        let watcher = Client::connect(rpc_addr(0), None).await?;
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
            let client = Client::connect(rpc_addr(n), None).await?;
            client.tags(&set, &[]).await.map(|()| Instant::now())
        });
        let (agent, file_seen) = std::thread::scope(|s| {
            let a = s.spawn(|| rt.block_on(poll_members(&local, &name, &value, deadline)));
            let b = s.spawn(|| poll_file(&file, &value, deadline));
            (a.join(), b.join())
        });
        let tagged = rt
            .block_on(tagger)
            .context("tags task")?
            .with_context(|| format!("trial {trial}: tags on {name}"))?;
        let agent = agent
            .map_err(|_| anyhow!("members poller panicked"))?
            .with_context(|| format!("trial {trial}: members of the local agent"))?;
        let file_seen = file_seen
            .map_err(|_| anyhow!("file poller panicked"))?
            .with_context(|| format!("trial {trial}: {}", file.display()))?;
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

/// Reads `members` on the kept connection until `name` carries `value`;
/// `None` past `deadline`.
async fn poll_members(
    local: &Client,
    name: &str,
    value: &str,
    deadline: Instant,
) -> Result<Option<Instant>> {
    while Instant::now() < deadline {
        let members = local.members().await.context("members")?;
        if members
            .iter()
            .any(|m| m.name == name && m.tags.get(PROBE_TAG).is_some_and(|v| v == value))
        {
            return Ok(Some(Instant::now()));
        }
    }
    Ok(None)
}

/// Opens, reads and parses `file` every `FILE_POLL` until its tags carry
/// `value`; `None` past `deadline`.
fn poll_file(file: &Path, value: &str, deadline: Instant) -> Result<Option<Instant>> {
    while Instant::now() < deadline {
        if let Ok(bytes) = fs::read(file) {
            let doc: Value = serde_json::from_slice(&bytes).context("not json")?;
            if doc["tags"][PROBE_TAG] == value {
                return Ok(Some(Instant::now()));
            }
        }
        std::thread::sleep(FILE_POLL);
    }
    Ok(None)
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
    let rpc = format!("-rpc-addr={rpc}");
    let mut ms = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let out = Command::new("serf")
            .args(["event", "-coalesce=false", &rpc, name, &payload(i)])
            .output()
            .context("run `serf event`")?;
        ensure!(
            out.status.success(),
            "`serf event` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
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
        rt.block_on(async {
            let client = Client::connect(addr, None).await?;
            let mut stream = client.stream("user").await?;
            tokio::spawn(async move {
                let _keep = client;
                while let Some(rec) = stream.recv().await {
                    if let StreamRecord::User { name, .. } = rec {
                        let mut c = counts.lock().expect("counts lock");
                        *c.counts.entry(name).or_default() += 1;
                        c.last = Some(Instant::now());
                    }
                }
            });
            anyhow::Ok(())
        })
        .with_context(|| format!("user-event stream of {addr}"))?;
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
    let mut solo = Daemon::start(SOLO, "bench-solo")?;
    let seen = UserEvents::follow(rt, rpc_addr(SOLO))?;
    let parent = solo.path(files::WRITE_NODE);
    let mut runs = [
        run_cli(rpc_addr(SOLO), "bench.cli", CLI_EVENTS)?,
        run_rpc(rt, rpc_addr(SOLO), "bench.rpc", LINE_EVENTS)?,
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
    let seen = UserEvents::follow(rt, rpc_addr(1))?;
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
        measured(&|| run_cli(rpc_addr(0), "bench.cli", CLI_EVENTS))?,
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

/// Share of the machine's CPU time that was not idle during `over`.
fn cpu_busy(over: Duration) -> Result<f64> {
    let sample = || -> Result<(u64, u64)> {
        let stat = fs::read_to_string("/proc/stat").context("read /proc/stat")?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("cpu "))
            .context("no cpu line in /proc/stat")?
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait …: idle and iowait are not busy.
        let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
        Ok((cpu.iter().sum(), idle))
    };
    let (total0, idle0) = sample()?;
    std::thread::sleep(over);
    let (total1, idle1) = sample()?;
    let total = total1.saturating_sub(total0).max(1) as f64;
    Ok(100.0 * (1.0 - idle1.saturating_sub(idle0) as f64 / total))
}

/// CPU time (user + system) used so far by `pids`, in ms.
fn cpu_ms(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks as f64 * 1e3 / hz
}

// ---- memory --------------------------------------------------------------------

fn memory(cluster: &Cluster, summary: &mut Rows) -> Result<()> {
    let daemon = cluster.daemon.pid()?;
    let mut rows = vec![proc_row("serfnode daemon (bench-0)", daemon)?];
    // The daemon's own supervised agent, when the kernel lists children.
    if let Some(agent) = children(daemon).into_iter().next() {
        rows.push(proc_row("serf agent supervised by serfnode", agent)?);
    }
    let raw_agent = cluster.agent_pid(1)?;
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

/// VmRSS and VmHWM, in KiB.
struct ProcMem {
    rss: u64,
    hwm: u64,
}

fn proc_status(pid: u32) -> Result<ProcMem> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let field = |key: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{key} in {path}"))
    };
    Ok(ProcMem {
        rss: field("VmRSS:")?,
        hwm: field("VmHWM:")?,
    })
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

/// Child pids of `pid` from /proc/<pid>/task/*/children (empty if unsupported).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---- synthetic 10,000-member view ------------------------------------------------

/// A member as a serfnode node announces itself: the original project's tags.
fn synthetic_member(i: usize, start: f64) -> Member {
    let ip = Ipv4Addr::from(0x0a00_0000 + u32::try_from(i).expect("index fits u32"));
    let tags = [
        ("role", format!("role-{:02}", i % SYNTH_ROLES)),
        ("ip", ip.to_string()),
        ("serf_port", "7946".into()),
        ("rpc", "7373".into()),
        ("timestamp", format!("{:.6}", start + i as f64 * 0.013)),
        ("service", ip.to_string()),
        ("service_port", "8080".into()),
        ("ports", "8080t8080|9090t32768,32769|53u53".into()),
    ];
    Member {
        name: format!("node-{i:05}"),
        addr: IpAddr::V4(ip),
        port: GOSSIP_PORT,
        tags: tags.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        status: MemberStatus::Alive,
        protocol: [1, 5, 5],
        delegate: [2, 5, 5],
    }
}

/// A member as the agent's `members` reply encodes it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct WireMember<'a> {
    name: &'a str,
    #[serde(with = "serde_bytes")]
    addr: &'a [u8],
    port: u16,
    tags: &'a BTreeMap<String, String>,
    status: &'a str,
    protocol_min: u8,
    protocol_max: u8,
    protocol_cur: u8,
    delegate_min: u8,
    delegate_max: u8,
    delegate_cur: u8,
}

fn encode_members(members: &[Member]) -> Result<Vec<u8>> {
    let octets: Vec<[u8; 4]> = members
        .iter()
        .map(|m| match m.addr {
            IpAddr::V4(v4) => v4.octets(),
            IpAddr::V6(_) => [0; 4],
        })
        .collect();
    let wire: Vec<WireMember> = members
        .iter()
        .zip(&octets)
        .map(|(m, addr)| WireMember {
            name: &m.name,
            addr,
            port: m.port,
            tags: &m.tags,
            status: m.status.as_str(),
            protocol_min: m.protocol[0],
            protocol_max: m.protocol[1],
            protocol_cur: m.protocol[2],
            delegate_min: m.delegate[0],
            delegate_max: m.delegate[1],
            delegate_cur: m.delegate[2],
        })
        .collect();
    rmp_serde::to_vec_named(&wire).context("encode a members reply")
}

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
        .map(|i| synthetic_member(i, start))
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
                "one 50 ms poll at this size (decode + unchanged reconcile)",
                &format!("{poll:.1} ms = {:.0} % of a core", poll * 100.0 / POLL_MS),
            ]),
            row(["process RSS growth holding the view", &format!("{held:.1} MiB")]),
        ],
    );
    raw_lines(&[format!(
        "reconcile full {full:.3} ms / unchanged {same_ms:.3} ms / one changed {one_ms:.3} ms; \
         by_id {by_id_ms:.3} ms {} B; by_role {by_role_ms:.3} ms {} B; decode {decode_ms:.3} ms {} B; \
         RSS {rss_before} → {rss_after} KiB",
        by_id.len(),
        by_role.len(),
        reply.len()
    )]);
    summary.push(row([
        "synthetic 10,000 members: render by_id / by_role",
        &format!("{by_id_ms:.1} / {by_role_ms:.1} ms"),
        "—",
        "—",
        "—",
    ]));
    summary.push(row([
        "synthetic 10,000 members: one 50 ms poll (decode + reconcile)",
        &format!("{poll:.1} ms ({:.0} % of a core)", poll * 100.0 / POLL_MS),
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

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

fn table(title: &str, header: &[&str], rows: &[Vec<String>]) {
    println!("\n### {title}\n");
    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for r in rows {
        println!("| {} |", r.join(" | "));
    }
}

fn raw_lines(lines: &[String]) {
    println!();
    for l in lines {
        println!("raw: {l}");
    }
}

fn list(values: &[f64], decimals: usize) -> String {
    let items: Vec<String> = values.iter().map(|v| format!("{v:.decimals$}")).collect();
    items.join(" ")
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

struct Percentiles {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles; sorts `values`.
    fn of(values: &mut [f64]) -> Percentiles {
        values.sort_by(f64::total_cmp);
        let at = |p: f64| {
            let rank = (p / 100.0 * values.len() as f64).ceil() as usize;
            values.get(rank.max(1) - 1).copied().unwrap_or(f64::NAN)
        };
        Percentiles {
            n: values.len(),
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            max: values.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn row(&self, what: &str) -> Vec<String> {
        let f = |v: f64| format!("{v:.1}");
        vec![
            what.into(),
            self.n.to_string(),
            f(self.p50),
            f(self.p90),
            f(self.p99),
            f(self.max),
        ]
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// xorshift64*: enough to pick agents, without a dependency.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(nanos) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}
