//! The events benchmark: ten real `serfnode agent` daemons (the release
//! binary) on 127.0.211.1–10, roles web and db (five each), every one joined
//! to the first, each with its own mount and handlers directory. Every figure
//! is measured in one run against a baseline taken in the same run:
//!
//! | figure | measured | baseline |
//! |---|---|---|
//! | event → handler | a line written to e1's `parent` → the `bench` handler starting on e10 | the same through Serf alone: ten raw `serf agent`s on 127.0.211.11–20, an RPC `event` (and `serf event`) on r1 → r10's `-event-handler` |
//! | query round trip | a read of `query/where/web` (and `db`) on e1 | the same query over RPC, stopped at the last answer; `serf query` |
//! | journal readers | a tag change showing in e2's `members/<id>.json` with 8 `serfnode watch` following e2's journal | the same without readers, events flowing alike |
//!
//! The handler is a static program built here (open, append one line,
//! close); its own start is measured apart, exec'd directly and through
//! `/bin/sh -c` as Serf runs its handlers. Times across processes are wall
//! clock (`CLOCK_REALTIME`) nanoseconds of the same kernel. The bench and
//! all it starts run at nice −10, so other work on a shared machine delays
//! both sides less, and both alike.
//!
//! Needs root, FUSE, `serf` and `rustc` on PATH; run it with `scripts/bench`.
//! It prints figures and asserts nothing about timing. Every process it
//! starts is killed and reaped and every mount detached, at the end and on
//! failure or panic; killed itself, its children get SIGTERM (the daemons
//! then leave and unmount) or SIGKILL, only its temp dir stays.
//! BENCHMARKS.md explains the method and keeps the latest figures.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use serfnode::cluster::rpc::{Client, QueryParams, QueryRecord, StreamRecord};
use serfnode::{event as events, surface::files};
use tokio::runtime::Runtime;

use common::poll::{poll_members_and_file, FILE_POLL, PROBE_TAG, TRIAL_TIMEOUT};
use common::procfs::*;
use common::report::*;
use common::user_events::{follow_user_stream, serf_event};
use serfnode_testkit::addr::Block;
use serfnode_testkit::process::{self, tail, Reaper};
use serfnode_testkit::{progress, Agents, Daemon, DaemonOpts};

const SERFNODE: &str = env!("CARGO_BIN_EXE_serfnode");
/// serfnode nodes e1–e10 on 127.0.211.1–10; raw agents r1–r10 on .11–20.
const NODES: usize = 10;
/// A: writes the events and asks the queries.
const WRITER: usize = 0;
/// C: runs the handler.
const HANDLER: usize = NODES - 1;
/// Where the view's update time is measured, and whose journal is read.
const MEASURED: usize = 1;
/// Whose write node carries the background events of the reader figures.
const LOADER: usize = 8;
/// The handler program reads the file to append to from this variable.
const ARRIVALS_VAR: &str = "SERFNODE_BENCH_ARRIVALS";

/// Event → handler: events each way, spaced; the raw cluster's events are
/// sent halfway between serfnode's.
const EVENTS: usize = 300;
const SPACING: Duration = Duration::from_millis(20);
const CLI_EVENTS: usize = 50;
/// Starts of the handler program alone, each way.
const STARTS: usize = 50;
/// Events still missing this long after the last one was sent are lost.
const SETTLE: Duration = Duration::from_secs(5);

/// Queries: reads of the query file (alternating with the RPC baseline),
/// `cat` processes and `serf query` processes, per role.
const QUERIES: usize = 50;
const CAT_QUERIES: usize = 20;
const CLI_QUERIES: usize = 20;
const CLI_QUERY_TIMEOUT: &str = "500ms";
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Journal readers: tag changes per condition, in rounds of `BLOCK`
/// (conditions alternate block by block, so drift hits all of them).
const BLOCK: usize = 25;
const ROUNDS: usize = 2;
const READERS: usize = 8;
/// Background events: 20/s on the loader's write node.
const LOAD_PERIOD: Duration = Duration::from_millis(50);

fn main() -> Result<()> {
    // Declared first, dropped last: reaps whatever the rest left orphaned.
    let _reaper = Reaper::new()?;
    let nice = raise_priority();
    let started = Instant::now();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let busy = cpu_busy(Duration::from_secs(1))?;
    let machine = format!(
        "{cpus} CPUs, {busy:.0} % busy in the second before the start; the bench and all it \
         starts at nice {nice}"
    );
    progress!("machine: {machine}");
    let mut summary = vec![row(["machine", &machine, "—", "—"])];
    let (total0, idle0) = cpu_sample()?;

    // Dropped after the clusters: they live in it.
    let root = tempfile::Builder::new()
        .prefix("serfnode-events-")
        .tempdir()
        .context("temp dir")?;
    let prog = build_handler(root.path())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;

    let mut nodes = Nodes::start(root.path(), &prog)?;
    let mut raw = RawCluster::start(root.path(), &prog, &rt)?;
    event_to_handler(&nodes, &raw, &rt, &prog, root.path(), &mut summary)?;
    raw.stop();
    // `SERFNODE_BENCH_ONLY=handler`: event → handler only.
    if !std::env::var("SERFNODE_BENCH_ONLY").is_ok_and(|v| v == "handler") {
        queries(&nodes, &rt, &mut summary)?;
        journal_readers(&nodes, &rt, root.path(), &mut summary)?;
    }
    drop(rt);
    nodes.stop()?;

    // What else ran meanwhile: the machine's busy time less this bench's
    // own (every process it started is reaped by now).
    let (total1, idle1) = cpu_sample()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let all_ms = total1.saturating_sub(total0) as f64 * 1e3 / hz;
    let busy_ms = all_ms - idle1.saturating_sub(idle0) as f64 * 1e3 / hz;
    let own = own_tree_cpu_ms();
    let during = format!(
        "busy {:.0} % over the run: this bench's processes {:.0} %, other work {:.0} %",
        100.0 * busy_ms / all_ms,
        100.0 * own / all_ms,
        100.0 * (busy_ms - own).max(0.0) / all_ms
    );
    progress!("machine: {during}");
    summary.push(row(["machine during the run", &during, "—", "—"]));

    table(
        "Summary",
        &["figure", "serfnode", "baseline", "ratio"],
        &summary,
    );
    progress!(
        "done in {:.0} s; update BENCHMARKS.md (\"Latest figures\", Events) from the tables above",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Both clusters, the bench and everything they start (handlers included)
/// inherit this: other work on the machine (builds, test suites at nice 0)
/// then delays neither side much, and both alike.
const NICE: libc::c_int = -10;

/// Sets this process's niceness to `NICE` (root only); the niceness it runs
/// at.
fn raise_priority() -> libc::c_int {
    // SAFETY: setpriority(2)/getpriority(2) on this process, integers only.
    unsafe {
        if libc::setpriority(libc::PRIO_PROCESS, 0, NICE) != 0 {
            progress!(
                "could not renice to {NICE} ({}); running at the current niceness",
                std::io::Error::last_os_error()
            );
        }
        libc::getpriority(libc::PRIO_PROCESS, 0)
    }
}

// ---- addresses -----------------------------------------------------------------

/// Node `n` is on 127.0.211.`n + 1`, raw agent `n` ten further.
const ADDRS: Block = Block { third: 211 };

fn ip(n: usize) -> IpAddr {
    ADDRS.ip(n)
}

/// serfnode node `n` (0-based) is `e{n+1}`; raw agent `n` is `r{n+1}`,
/// ten addresses further.
fn name(n: usize) -> String {
    format!("e{}", n + 1)
}

fn raw_name(n: usize) -> String {
    format!("r{}", n + 1)
}

fn role(n: usize) -> &'static str {
    if n.is_multiple_of(2) {
        "web"
    } else {
        "db"
    }
}

fn gossip_addr(n: usize) -> SocketAddr {
    ADDRS.gossip(n)
}

fn rpc_addr(n: usize) -> SocketAddr {
    ADDRS.rpc(n)
}

fn raw_gossip(n: usize) -> SocketAddr {
    gossip_addr(NODES + n)
}

fn raw_rpc(n: usize) -> SocketAddr {
    rpc_addr(NODES + n)
}

// ---- the handler program -----------------------------------------------------------

/// What the handler does: note the wall clock first, then append one line,
/// `<ns> <its stdin>`, in one write(2) to the file `ARRIVALS_VAR` names.
const HANDLER_SRC: &str = r#"
use std::io::{Read, Write};
fn main() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut input = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut input);
    let Some(out) = std::env::var_os("SERFNODE_BENCH_ARRIVALS") else {
        std::process::exit(2);
    };
    let mut line = format!("{now} ").into_bytes();
    line.extend(input.iter().filter(|&&b| b != b'\n'));
    line.push(b'\n');
    let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(out) else {
        std::process::exit(3);
    };
    let _ = f.write_all(&line);
}
"#;

/// Builds the handler into `dir`: static (musl) when that target is
/// installed, else for the host.
fn build_handler(dir: &Path) -> Result<PathBuf> {
    let src = dir.join("arrive.rs");
    let prog = dir.join("arrive");
    fs::write(&src, HANDLER_SRC).context("write the handler's source")?;
    let build = |static_musl: bool| -> Result<bool> {
        let mut cmd = Command::new("rustc");
        cmd.args(["-O", "--edition", "2021", "-o"])
            .arg(&prog)
            .arg(&src);
        if static_musl {
            cmd.args([
                "--target",
                "x86_64-unknown-linux-musl",
                "-C",
                "target-feature=+crt-static",
            ]);
        }
        let out = cmd.output().context("run rustc")?;
        Ok(out.status.success())
    };
    if build(true)? {
        progress!("handler: static musl program {}", prog.display());
    } else if build(false)? {
        progress!(
            "handler: no musl target; a dynamic program {}",
            prog.display()
        );
    } else {
        bail!("rustc could not build the handler program");
    }
    Ok(prog)
}

/// `{"i":N,"t":<ns since the epoch>}`.
fn payload(i: u64, t: u128) -> String {
    format!("{{\"i\":{i},\"t\":{t}}}")
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// One handler start: its payload's `i` and `t`, and when it started (ns).
struct Arrival {
    i: u64,
    sent: u128,
    at: u128,
}

fn read_arrivals(file: &Path) -> Result<Vec<Arrival>> {
    let text = match fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", file.display())),
    };
    text.lines()
        .map(|l| {
            let (at, json) = l.split_once(' ').context("no space")?;
            let v: Value = serde_json::from_str(json).context("payload is not json")?;
            Ok(Arrival {
                i: v["i"].as_u64().context("no i")?,
                sent: u128::from(v["t"].as_u64().context("no t")?),
                at: at.parse().context("time")?,
            })
        })
        .collect::<Result<_>>()
        .with_context(|| format!("a line of {}", file.display()))
}

// ---- processes -------------------------------------------------------------------

/// Spawns `cmd` with its output in `log` (or discarded). The child gets
/// `death_signal` when the spawning (main) thread dies, so a killed bench
/// leaves nothing behind.
/// Spawns `cmd` with its output in `log`; it gets SIGKILL should the bench die.
fn spawn(mut cmd: Command, log: &Path) -> Result<Child> {
    process::new_log(log)?;
    process::set_death_signal_and_nice(&mut cmd, Some(libc::SIGKILL), None);
    process::spawn_logged(&mut cmd, log)
}

fn kill_and_reap(children: &mut Vec<Child>) {
    for mut c in children.drain(..) {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// UDP datagrams the kernel dropped so far (InErrors + RcvbufErrors of
/// /proc/net/snmp): gossip lost to full receive buffers would show here.
fn udp_drops() -> Result<u64> {
    let snmp = fs::read_to_string("/proc/net/snmp").context("read /proc/net/snmp")?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (
        udp.next().context("no Udp header")?,
        udp.next().context("no Udp values")?,
    );
    Ok(names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter(|(n, _)| matches!(*n, "InErrors" | "RcvbufErrors"))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum())
}

/// Up to 20 lines of `log` that contain one of `needles`.
fn log_lines(log: &Path, needles: &[&str]) -> Vec<String> {
    let text = fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .take(20)
        .map(str::to_owned)
        .collect()
}

/// Spawns node `n` (`serfnode agent`): its mount `<root>/eN`, handlers
/// `<root>/hN`, log `<root>/eN.log`; joined to node 0 unless it is node 0.
fn spawn_node(root: &Path, n: usize, arrivals: &Path) -> Result<Daemon> {
    let name = name(n);
    let handlers = root.join(format!("h{}", n + 1));
    fs::create_dir_all(&handlers).context("handlers dir")?;
    let mut args = vec!["--handlers".to_owned(), handlers.display().to_string()];
    if n != 0 {
        args.extend(["--join".to_owned(), gossip_addr(0).to_string()]);
    }
    Daemon::try_spawn(DaemonOpts {
        mount: Some(root.join(&name)),
        log: Some(root.join(format!("{name}.log"))),
        no_hosts: true,
        args,
        env: vec![(ARRIVALS_VAR.to_owned(), arrivals.display().to_string())],
        ..DaemonOpts::bench(&name, ip(n), role(n))
    })
}

/// The ten serfnode nodes. Dropping it asks all of them to stop at once,
/// then waits for each.
struct Nodes {
    daemons: Vec<Daemon>,
    /// Where e10's handler appends.
    arrivals: PathBuf,
}

impl Nodes {
    fn start(root: &Path, prog: &Path) -> Result<Nodes> {
        // Both ranges up front: the raw cluster's too, before anything starts.
        for n in 0..NODES {
            ADDRS.ensure_free(n)?;
            ADDRS.ensure_free(NODES + n)?;
        }
        let arrivals = root.join("arrivals-serfnode");
        let mut nodes = Nodes {
            daemons: Vec::with_capacity(NODES),
            arrivals,
        };
        let started = Instant::now();
        for n in 0..NODES {
            nodes.daemons.push(spawn_node(root, n, &nodes.arrivals)?);
        }
        // Only C has the handler; every node looks for it.
        let handler = root.join(format!("h{}", HANDLER + 1)).join("bench");
        fs::copy(prog, &handler).context("install the handler")?;
        progress!(
            "spawned {NODES} serfnode agents on {}–{}; waiting for each to list {NODES}",
            ip(0),
            ip(NODES - 1)
        );
        let deadline = started + Duration::from_secs(60);
        loop {
            let mut listed = Vec::with_capacity(NODES);
            for d in &mut nodes.daemons {
                d.check_alive()?;
                listed.push(
                    d.try_json(files::BY_ID)
                        .ok()
                        .and_then(|v| v.as_object().map(|o| o.len()))
                        .unwrap_or(0),
                );
            }
            if listed.iter().all(|&l| l == NODES) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "after 60 s the nodes list {listed:?} members\n{}",
                nodes.daemons[0].log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        progress!(
            "all {NODES} serfnode nodes list {NODES} members after {} ms",
            started.elapsed().as_millis()
        );
        Ok(nodes)
    }

    fn stop(&mut self) -> Result<()> {
        for d in &mut self.daemons {
            d.terminate();
        }
        let mut first = Ok(());
        for d in &mut self.daemons {
            if let Err(e) = d.stop() {
                eprintln!("cleanup: {e:#}");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            d.terminate();
        }
        // Each Daemon's drop then waits for it.
    }
}

/// The baseline: ten raw `serf agent`s, r1–r10 on 127.0.211.11–20, joined
/// to r1; r10 runs the handler program as Serf's own event handler for the
/// events `bench2` (RPC) and `bench3` (`serf event`). Killed and reaped on
/// drop.
struct RawCluster {
    agents: Agents,
    arrivals: PathBuf,
}

impl RawCluster {
    fn start(root: &Path, prog: &Path, rt: &Runtime) -> Result<RawCluster> {
        for n in 0..NODES {
            ADDRS.ensure_free(NODES + n)?;
        }
        let mut raw = RawCluster {
            // At the bench's own priority: this is the baseline.
            agents: Agents::new(root.join("raw"), |n| raw_name(n - 1), None)?,
            arrivals: root.join("arrivals-serf"),
        };
        let started = Instant::now();
        for n in 0..NODES {
            let arrivals = raw.arrivals.clone();
            raw.agents.spawn(|cmd| {
                cmd.args(["agent", &format!("-node={}", raw_name(n))])
                    .arg(format!("-bind={}", raw_gossip(n)))
                    .arg(format!("-rpc-addr={}", raw_rpc(n)))
                    .args(["-profile=local", "-tag", &format!("role={}", role(n))])
                    .env(ARRIVALS_VAR, &arrivals);
                if n != 0 {
                    cmd.arg(format!("-join={}", raw_gossip(0)));
                }
                if n == HANDLER {
                    cmd.arg(format!(
                        "-event-handler=user:bench2,user:bench3={}",
                        prog.display()
                    ));
                }
            })?;
            if n == 0 {
                // A join to an agent not yet listening fails, and the
                // joining agent exits: let r1 come up first.
                raw.wait_rpc(rt, 0, started + Duration::from_secs(10))?;
            }
        }
        let deadline = started + Duration::from_secs(60);
        for n in [0, HANDLER] {
            let client = raw.wait_rpc(rt, n, deadline)?;
            loop {
                raw.agents.check()?;
                let alive = rt.block_on(client.members()).map_or(0, |m| {
                    m.iter().filter(|m| m.status.as_str() == "alive").count()
                });
                if alive == NODES {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "after 60 s {} lists {alive} alive members\n{}",
                    raw_name(n),
                    raw.log_tail(n)
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        progress!(
            "{NODES} raw serf agents on {}–{} list {NODES} after {} ms",
            ip(NODES),
            ip(2 * NODES - 1),
            started.elapsed().as_millis()
        );
        Ok(raw)
    }

    /// Raw agent `n`'s log (0-based, as [`raw_name`]).
    fn log(&self, n: usize) -> PathBuf {
        self.agents.log(n + 1)
    }

    /// The last lines of raw agent `n`'s log.
    fn log_tail(&self, n: usize) -> String {
        tail(&raw_name(n), &self.log(n), 40)
    }

    /// A connection to agent `n`'s RPC, once it accepts one.
    fn wait_rpc(&mut self, rt: &Runtime, n: usize, deadline: Instant) -> Result<Client> {
        loop {
            self.agents.check()?;
            if let Ok(c) = rt.block_on(Client::connect(raw_rpc(n), None)) {
                return Ok(c);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}'s RPC does not answer\n{}",
                    raw_name(n),
                    self.log_tail(n)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        let n = self.agents.kill_all();
        if n > 0 {
            progress!("{n} raw serf agents killed and reaped");
        }
    }
}

impl Drop for RawCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---- 1. event → handler -----------------------------------------------------------

/// When an agent's `user` stream delivered each event, keyed by (name, i).
type Seen = Arc<Mutex<HashMap<(String, u64), u128>>>;

fn follow_user_events(rt: &Runtime, addr: SocketAddr) -> Result<Seen> {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    follow_user_stream(rt, addr, move |rec| {
        let at = now_ns();
        if let StreamRecord::User { name, payload, .. } = rec {
            // serfnode's events come in its envelope; Serf's plain.
            if let Some(i) = events::unwrap(&payload).0["i"].as_u64() {
                record.lock().expect("seen lock").insert((name, i), at);
            }
        }
    })?;
    Ok(seen)
}

/// One event raised: when the raising began and when its call returned (ns).
struct Sent {
    i: u64,
    start: u128,
    end: u128,
}

/// ms between two ns instants.
fn ms_between(from: u128, to: u128) -> f64 {
    (to as f64 - from as f64) / 1e6
}

/// The handler program started `STARTS` times by the bench, with a payload
/// carrying the moment before the spawn: what the start of the program
/// itself costs. `via_sh`: as `/bin/sh -c PROG`, which is how Serf runs it.
fn handler_starts(prog: &Path, out: &Path, via_sh: bool) -> Result<Vec<f64>> {
    for i in 0..STARTS as u64 {
        let t = now_ns();
        let mut cmd = if via_sh {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(prog);
            c
        } else {
            Command::new(prog)
        };
        let mut child = cmd
            .env(ARRIVALS_VAR, out)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn the handler program")?;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin
            .write_all(payload(i, t).as_bytes())
            .context("payload")?;
        drop(stdin);
        let status = child.wait().context("wait for the handler program")?;
        ensure!(status.success(), "the handler program failed: {status}");
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(read_arrivals(out)?
        .iter()
        .map(|a| ms_between(a.sent, a.at))
        .collect())
}

fn event_to_handler(
    nodes: &Nodes,
    raw: &RawCluster,
    rt: &Runtime,
    prog: &Path,
    root: &Path,
    summary: &mut Rows,
) -> Result<()> {
    progress!("handler program alone: {STARTS} starts exec'd directly, {STARTS} via /bin/sh -c");
    let mut direct = handler_starts(prog, &root.join("arrivals-direct"), false)?;
    let mut via_sh = handler_starts(prog, &root.join("arrivals-sh"), true)?;

    let seen_c = follow_user_events(rt, rpc_addr(HANDLER))?;
    let seen_raw = follow_user_events(rt, raw_rpc(HANDLER))?;
    let raw_client = rt
        .block_on(Client::connect(raw_rpc(0), None))
        .context("rpc connection to r1")?;
    let parent = nodes.daemons[WRITER].path(files::WRITE_NODE);
    let mut node = OpenOptions::new()
        .write(true)
        .open(&parent)
        .with_context(|| format!("open {} for writing", parent.display()))?;

    progress!(
        "event → handler: {EVENTS} events to {}'s `parent` and {EVENTS} RPC events to r1, \
         interleaved, one each per {} ms",
        name(WRITER),
        SPACING.as_millis()
    );
    let udp_before = udp_drops()?;
    let (mut sn_sent, mut raw_sent) = (Vec::new(), Vec::new());
    let start = Instant::now();
    for i in 0..EVENTS as u64 {
        let slot = start + SPACING * u32::try_from(i).expect("few events");
        sleep_until(slot);
        let t = now_ns();
        let line = format!("[\"bench\",{}]\n", payload(i, t));
        let n = node
            .write(line.as_bytes())
            .with_context(|| format!("write to {}", parent.display()))?;
        sn_sent.push(Sent {
            i,
            start: t,
            end: now_ns(),
        });
        ensure!(n == line.len(), "short write to {}", parent.display());

        sleep_until(slot + SPACING / 2);
        let t = now_ns();
        rt.block_on(raw_client.event("bench2", payload(i, t).as_bytes(), false))
            .context("rpc event on r1")?;
        raw_sent.push(Sent {
            i,
            start: t,
            end: now_ns(),
        });
        if (i + 1) % 100 == 0 {
            progress!("event → handler {}/{EVENTS}", i + 1);
        }
    }
    progress!("event → handler: {CLI_EVENTS} × `serf event -coalesce=false` on r1");
    let mut cli_sent = Vec::new();
    for i in 0..CLI_EVENTS as u64 {
        let t = now_ns();
        serf_event(raw_rpc(0), "bench3", &payload(i, t))?;
        cli_sent.push(Sent {
            i,
            start: t,
            end: now_ns(),
        });
        std::thread::sleep(SPACING);
    }

    // Wait for the stragglers: every handler started, or SETTLE passed.
    let deadline = Instant::now() + SETTLE;
    let (sn, serf) = loop {
        let sn = read_arrivals(&nodes.arrivals)?;
        let serf = read_arrivals(&raw.arrivals)?;
        if sn.len() >= EVENTS && serf.len() >= EVENTS + CLI_EVENTS || Instant::now() > deadline {
            break (sn, serf);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Serf's handler gets bench2 and bench3: tell them apart by the
    // moment they were sent (the CLI ones come after every RPC one).
    let cli_from = cli_sent.first().map_or(u128::MAX, |s| s.start);
    let by_i = |arrivals: &[Arrival], cli: bool| -> HashMap<u64, u128> {
        arrivals
            .iter()
            .filter(|a| (a.sent >= cli_from) == cli)
            .map(|a| (a.i, a.at))
            .collect()
    };
    let sn_at = by_i(&sn, false);
    let serf_at = by_i(&serf, false);
    let cli_at = by_i(&serf, true);
    let seen_c = seen_c.lock().expect("seen lock").clone();
    let seen_raw = seen_raw.lock().expect("seen lock").clone();

    let series = |sent: &[Sent], from: fn(&Sent) -> u128, to: &dyn Fn(&Sent) -> Option<u128>| {
        sent.iter()
            .filter_map(|s| Some(ms_between(from(s), to(s)?)))
            .collect::<Vec<f64>>()
    };
    let start_of = |s: &Sent| s.start;
    let sn_handler = |s: &Sent| sn_at.get(&s.i).copied();
    let sn_stream = |s: &Sent| seen_c.get(&("bench".to_owned(), s.i)).copied();
    let raw_handler = |s: &Sent| serf_at.get(&s.i).copied();
    let raw_stream = |s: &Sent| seen_raw.get(&("bench2".to_owned(), s.i)).copied();
    let cli_handler = |s: &Sent| cli_at.get(&s.i).copied();

    let mut total = series(&sn_sent, start_of, &sn_handler);
    let mut base = series(&raw_sent, start_of, &raw_handler);
    let mut cli = series(&cli_sent, start_of, &cli_handler);
    let mut write = series(&sn_sent, start_of, &|s| Some(s.end));
    let mut rpc_call = series(&raw_sent, start_of, &|s| Some(s.end));
    let mut cli_call = series(&cli_sent, start_of, &|s| Some(s.end));
    let mut sn_gossip = series(&sn_sent, start_of, &sn_stream);
    let mut raw_gossip = series(&raw_sent, start_of, &raw_stream);
    let both = |s: &Sent, a: &dyn Fn(&Sent) -> Option<u128>, b: &dyn Fn(&Sent) -> Option<u128>| {
        Some(ms_between(a(s)?, b(s)?))
    };
    let mut sn_part: Vec<f64> = sn_sent
        .iter()
        .filter_map(|s| both(s, &sn_stream, &sn_handler))
        .collect();
    let mut raw_part: Vec<f64> = raw_sent
        .iter()
        .filter_map(|s| both(s, &raw_stream, &raw_handler))
        .collect();
    let lost = format!(
        "handler started for {}/{EVENTS} serfnode events, {}/{EVENTS} RPC events and \
         {}/{CLI_EVENTS} `serf event`s; seen on the stream of e10 {}/{EVENTS}, of r10 {}/{EVENTS}",
        total.len(),
        base.len(),
        cli.len(),
        sn_gossip.len(),
        raw_gossip.len()
    );
    progress!("{lost}");
    // Events lost or over a second late: Serf's doing or serfnode's? The
    // logs and the kernel's UDP drop counters say.
    let odd = |sent: &[Sent], at: &HashMap<u64, u128>| -> Vec<String> {
        sent.iter()
            .filter_map(|s| match at.get(&s.i) {
                None => Some(format!("{} lost", s.i)),
                Some(&t) if ms_between(s.start, t) > 1000.0 => {
                    Some(format!("{} after {:.0} ms", s.i, ms_between(s.start, t)))
                }
                Some(_) => None,
            })
            .collect()
    };
    let (sn_odd, raw_odd) = (odd(&sn_sent, &sn_at), odd(&raw_sent, &serf_at));
    let udp = udp_drops()?.saturating_sub(udp_before);
    progress!("UDP datagrams the kernel dropped meanwhile (InErrors + RcvbufErrors): {udp}");
    if !sn_odd.is_empty() || !raw_odd.is_empty() {
        progress!("lost or late: serfnode events {sn_odd:?}, RPC events {raw_odd:?}");
        let logs = [
            (name(HANDLER), nodes.daemons[HANDLER].log.clone()),
            (name(WRITER), nodes.daemons[WRITER].log.clone()),
            (raw_name(HANDLER), raw.log(HANDLER)),
        ];
        for (who, log) in logs {
            for line in log_lines(
                &log,
                &["[WARN]", "[ERR]", "old event", "dropp", "queue full"],
            ) {
                progress!("{who}: {line}");
            }
        }
    }
    let raw_text = [
        format!(
            "serfnode write → handler ms (first 60): {}",
            list(&total[..total.len().min(60)], 1)
        ),
        format!(
            "Serf RPC → handler ms (first 60): {}",
            list(&base[..base.len().min(60)], 1)
        ),
        lost,
        format!("lost or over 1 s: serfnode {sn_odd:?}; Serf {raw_odd:?}; UDP drops {udp}"),
    ];
    let p = |v: &mut Vec<f64>| Percentiles::of(v);
    let (pt, pb, pc) = (p(&mut total), p(&mut base), p(&mut cli));
    let (pw, pr) = (p(&mut write), p(&mut rpc_call));
    let (pp, pd) = (p(&mut sn_part), p(&mut direct));
    let a = name(WRITER);
    let c = name(HANDLER);
    table(
        &format!("Event → handler start ({a} → {c}; raw Serf r1 → r10; ms)"),
        &with_stats(&["interval"], &[]),
        &[
            pt.row_with_mean(&format!("**serfnode**: write to {a}'s `parent` begins → `bench` handler starts on {c}")),
            pb.row_with_mean("**Serf (baseline)**: RPC `event` to r1 sent (kept connection) → Serf's `-event-handler` starts on r10"),
            pc.row_with_mean("Serf: `serf event` process started for r1 → Serf's handler starts on r10"),
            pw.row_with_mean(&format!("… serfnode: write(2) to {a}'s `parent` begins → returns (agent accepted)")),
            p(&mut sn_gossip).row_with_mean(&format!("… serfnode: write begins → {c}'s agent streams the event")),
            pp.row_with_mean(&format!("… serfnode: {c}'s agent streams it → the handler starts (serfnode's part on {c})")),
            pr.row_with_mean("… Serf: RPC `event` sent → returns"),
            p(&mut raw_gossip).row_with_mean("… Serf: RPC `event` sent → r10's agent streams the event"),
            p(&mut raw_part).row_with_mean("… Serf: r10's agent streams it → Serf's handler starts"),
            p(&mut cli_call).row_with_mean("… Serf: `serf event` process started → exits"),
            pd.row_with_mean("handler program alone: spawned by the bench → its first instruction"),
            p(&mut via_sh).row_with_mean("handler program alone: `/bin/sh -c PROG` spawned → its first instruction (as Serf runs it)"),
        ],
    );
    raw_lines(&raw_text);
    let ratio =
        |x: &Percentiles, y: &Percentiles| format!("{:.2}× / {:.2}×", x.p50 / y.p50, x.p99 / y.p99);
    summary.push(row([
        &format!("event written on {a} → handler starts on {c}, p50 / p99"),
        &format!(
            "{:.1} / {:.1} ms ({}/{EVENTS} started)",
            pt.p50, pt.p99, pt.n
        ),
        &format!(
            "{:.1} / {:.1} ms (Serf: RPC event → its handler; {}/{EVENTS})",
            pb.p50, pb.p99, pb.n
        ),
        &ratio(&pt, &pb),
    ]));
    summary.push(row([
        "event → handler vs `serf event` → Serf's handler, p50 / p99",
        &format!("{:.1} / {:.1} ms", pt.p50, pt.p99),
        &format!(
            "{:.1} / {:.1} ms (`serf event` process; {}/{CLI_EVENTS})",
            pc.p50, pc.p99, pc.n
        ),
        &ratio(&pt, &pc),
    ]));
    // p50 / p99 to two places, with what the baseline is.
    let ms2 = |x: &Percentiles, what: &str| format!("{:.2} / {:.2} ms{what}", x.p50, x.p99);
    summary.push(row([
        &format!("serfnode's part on {c}: its agent streams the event → handler starts, p50 / p99"),
        &ms2(&pp, ""),
        &ms2(&pd, " (the program spawned directly by the bench)"),
        &ratio(&pp, &pd),
    ]));
    summary.push(row([
        &format!("write node on {a}: write(2) → returns, p50 / p99"),
        &ms2(&pw, ""),
        &ms2(&pr, " (RPC `event`, kept connection)"),
        &ratio(&pw, &pr),
    ]));
    Ok(())
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

// ---- 2. queries --------------------------------------------------------------------

/// One `serf query` run: until its last expected response line, until exit,
/// and how many responses it printed.
struct CliQuery {
    last: Option<f64>,
    exit: f64,
    responses: usize,
}

fn cli_query(rpc: SocketAddr, role: &str, expected: usize) -> Result<CliQuery> {
    let t = Instant::now();
    let mut child = Command::new("serf")
        .arg("query")
        .arg(format!("-rpc-addr={rpc}"))
        .args(["-tag", &format!("role={role}")])
        .arg(format!("-timeout={CLI_QUERY_TIMEOUT}"))
        .args(["where", &format!("{{\"role\":\"{role}\"}}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn `serf query`")?;
    let out = child.stdout.take().context("stdout")?;
    let (mut responses, mut last) = (0, None);
    for line in BufReader::new(out).lines() {
        let line = line.context("read `serf query`'s output")?;
        if line.trim_start().starts_with("Response from") {
            responses += 1;
            if responses == expected {
                last = Some(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let status = child.wait().context("wait for `serf query`")?;
    ensure!(status.success(), "`serf query` failed: {status}");
    Ok(CliQuery {
        last,
        exit: t.elapsed().as_secs_f64() * 1e3,
        responses,
    })
}

/// The query over RPC on a kept connection, as serfnode asks it: only
/// `role`, no acks, done at the `expected`-th response. ms, and answers.
async fn rpc_query(client: &Client, role: &str, expected: usize) -> Result<(f64, usize)> {
    let t = Instant::now();
    let params = QueryParams {
        name: "where".into(),
        payload: format!("{{\"role\":\"{role}\"}}").into_bytes(),
        filter_tags: BTreeMap::from([("role".to_owned(), format!("^{role}$"))]),
        timeout: Some(QUERY_TIMEOUT),
        ..QueryParams::default()
    };
    let mut sub = client.query(params).await.context("rpc query")?;
    let mut got = 0;
    while got < expected {
        match sub.recv().await {
            Some(QueryRecord::Response { .. }) => got += 1,
            Some(QueryRecord::Ack { .. }) => {}
            Some(QueryRecord::Done) | None => break,
        }
    }
    Ok((t.elapsed().as_secs_f64() * 1e3, got))
}

fn queries(nodes: &Nodes, rt: &Runtime, summary: &mut Rows) -> Result<()> {
    let a = &nodes.daemons[WRITER];
    let client = rt
        .block_on(Client::connect(rpc_addr(WRITER), None))
        .context("rpc connection to e1")?;
    let expected = NODES / 2;
    let (mut rows, mut raw) = (Vec::new(), Vec::new());
    for role in ["web", "db"] {
        let rel = format!("{}/where/{role}", files::QUERY);
        let file = a.path(&rel);
        progress!(
            "queries: {QUERIES} reads of {rel} alternating with {QUERIES} RPC queries, \
             {CAT_QUERIES} `cat`, {CLI_QUERIES} `serf query`"
        );
        // Warm-up: the first ask creates the file's directory entries.
        for _ in 0..2 {
            fs::read(&file).with_context(|| format!("read {}", file.display()))?;
            rt.block_on(rpc_query(&client, role, expected))?;
        }
        let (mut read_ms, mut inner_ms, mut rpc_ms) = (Vec::new(), Vec::new(), Vec::new());
        let mut outside_ms = Vec::new();
        let (mut read_complete, mut rpc_complete) = (0, 0);
        for _ in 0..QUERIES {
            let t = Instant::now();
            let bytes = fs::read(&file).with_context(|| format!("read {}", file.display()))?;
            read_ms.push(t.elapsed().as_secs_f64() * 1e3);
            let doc: Value = serde_json::from_slice(&bytes).context("query file is not json")?;
            let answers = doc["responses"].as_object().map_or(0, |r| r.len());
            if doc["complete"] == true && answers == expected {
                read_complete += 1;
            }
            if let Some(inner) = doc["elapsed_ms"].as_f64() {
                inner_ms.push(inner);
                outside_ms.push(read_ms.last().copied().unwrap_or(0.0) - inner);
            }
            let (ms, got) = rt.block_on(rpc_query(&client, role, expected))?;
            rpc_ms.push(ms);
            if got == expected {
                rpc_complete += 1;
            }
        }
        let mut cat_ms = Vec::new();
        let mut cat_complete = 0;
        for _ in 0..CAT_QUERIES {
            let t = Instant::now();
            let out = Command::new("cat").arg(&file).output().context("run cat")?;
            cat_ms.push(t.elapsed().as_secs_f64() * 1e3);
            ensure!(out.status.success(), "cat {} failed", file.display());
            let doc: Value = serde_json::from_slice(&out.stdout).context("cat: not json")?;
            if doc["complete"] == true {
                cat_complete += 1;
            }
        }
        let mut runs = Vec::new();
        for _ in 0..CLI_QUERIES {
            runs.push(cli_query(rpc_addr(WRITER), role, expected)?);
        }
        let mut cli_last: Vec<f64> = runs.iter().filter_map(|r| r.last).collect();
        let mut cli_exit: Vec<f64> = runs.iter().map(|r| r.exit).collect();
        let cli_complete = runs.iter().filter(|r| r.responses == expected).count();
        raw.push(format!(
            "{role}: read ms {}; rpc ms {}",
            list(&read_ms, 2),
            list(&rpc_ms, 2)
        ));
        let p = |v: &mut Vec<f64>| Percentiles::of(v);
        let (pr, pq) = (p(&mut read_ms), p(&mut rpc_ms));
        let with = |mut r: Vec<String>, done: usize, of: usize| {
            r.insert(1, role.to_owned());
            r.push(format!("{done}/{of}"));
            r
        };
        rows.push(with(
            pr.row_with_mean(&format!(
                "**serfnode**: read of `{rel}` on e1 (open+read+close)"
            )),
            read_complete,
            QUERIES,
        ));
        rows.push(with(
            pq.row_with_mean("**Serf (baseline)**: RPC `query` on e1's agent, kept connection, done at the last answer"),
            rpc_complete,
            QUERIES,
        ));
        rows.push(with(
            p(&mut inner_ms).row_with_mean(
                "… serfnode: its `elapsed_ms` (the ask inside the daemon, whole ms)",
            ),
            read_complete,
            QUERIES,
        ));
        let po = p(&mut outside_ms);
        summary.push(row([
            &format!("query `where/{role}`: the read − the daemon's own `elapsed_ms`, p50 / p99"),
            &format!("{:.2} / {:.2} ms", po.p50, po.p99),
            "—",
            "—",
        ]));
        rows.push(with(
            po.row_with_mean(
                "… serfnode: the read − its `elapsed_ms` (FUSE, parsing, rendering; up to 1 ms high: `elapsed_ms` is truncated)",
            ),
            read_complete,
            QUERIES,
        ));
        rows.push(with(
            p(&mut cat_ms).row_with_mean(&format!("`cat {rel}` (a process)")),
            cat_complete,
            CAT_QUERIES,
        ));
        rows.push(with(
            p(&mut cli_last).row_with_mean(&format!(
                "`serf query -timeout={CLI_QUERY_TIMEOUT}`: started → its {expected}th response line"
            )),
            cli_complete,
            CLI_QUERIES,
        ));
        rows.push(with(
            p(&mut cli_exit).row_with_mean(&format!(
                "`serf query -timeout={CLI_QUERY_TIMEOUT}`: started → exits"
            )),
            cli_complete,
            CLI_QUERIES,
        ));
        summary.push(row([
            &format!("query round trip, `where/{role}` (5 answers), p50 / mean / p99"),
            &format!("{:.1} / {:.1} / {:.1} ms", pr.p50, pr.mean, pr.p99),
            &format!(
                "{:.1} / {:.1} / {:.1} ms (RPC query)",
                pq.p50, pq.mean, pq.p99
            ),
            &format!(
                "{:.2}× / {:.2}× / {:.2}×",
                pr.p50 / pq.p50,
                pr.mean / pq.mean,
                pr.p99 / pq.p99
            ),
        ]));
    }
    table(
        "Query round trip (`where`, 5 of the 10 members answer; ms)",
        &with_stats(&["how", "role"], &["all 5 answered"]),
        &rows,
    );
    raw_lines(&raw);
    Ok(())
}

// ---- 3. journal readers -------------------------------------------------------------

/// `serfnode watch --from 0` processes following a node's journal; killed
/// and reaped on drop.
struct Watchers {
    children: Vec<Child>,
    outs: Vec<PathBuf>,
}

impl Watchers {
    fn start(mount: &Path, dir: &Path, round: usize) -> Result<Watchers> {
        let mut w = Watchers {
            children: Vec::with_capacity(READERS),
            outs: Vec::with_capacity(READERS),
        };
        for k in 0..READERS {
            let out = dir.join(format!("watch-{round}-{k}.out"));
            let mut cmd = Command::new(SERFNODE);
            cmd.args(["watch", "--from", "0", "--mount"]).arg(mount);
            w.children.push(spawn(cmd, &out)?);
            w.outs.push(out);
        }
        // Each prints the whole journal first: following once it has.
        let deadline = Instant::now() + Duration::from_secs(10);
        while w.lines().contains(&0) {
            for c in &mut w.children {
                if let Some(status) = c.try_wait().context("wait for a watcher")? {
                    bail!("`serfnode watch` exited with {status}");
                }
            }
            ensure!(
                Instant::now() < deadline,
                "a watcher printed nothing in 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(w)
    }

    fn lines(&self) -> Vec<usize> {
        self.outs
            .iter()
            .map(|o| fs::read(o).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count()))
            .collect()
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        kill_and_reap(&mut self.children);
    }
}

/// Writes `["load",{"i":N}]` to a write node every `LOAD_PERIOD` until
/// dropped.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<usize>>>,
}

impl Load {
    fn start(parent: PathBuf) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || -> Result<usize> {
            let mut node = OpenOptions::new()
                .write(true)
                .open(&parent)
                .with_context(|| format!("open {}", parent.display()))?;
            let start = Instant::now();
            let mut i = 0;
            while !flag.load(Ordering::Relaxed) {
                node.write_all(format!("[\"load\",{{\"i\":{i}}}]\n").as_bytes())
                    .context("write a load event")?;
                i += 1;
                sleep_until(start + LOAD_PERIOD * u32::try_from(i).expect("few"));
            }
            Ok(i as usize)
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Result<usize> {
        self.stop.store(true, Ordering::Relaxed);
        let t = self.thread.take().expect("joined once");
        t.join().map_err(|_| anyhow!("load thread panicked"))?
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One tag change, timed from the moment it was sent (None: not within
/// `TRIAL_TIMEOUT`).
struct Trial {
    agent: Option<Duration>,
    file: Option<Duration>,
}

#[derive(Clone, Copy, PartialEq)]
enum Condition {
    Quiet,
    Events,
    Readers,
}

impl Condition {
    fn label(self) -> String {
        match self {
            Condition::Quiet => "no events, no readers".into(),
            Condition::Events => format!("20 events/s on {}, no readers", name(LOADER)),
            Condition::Readers => format!(
                "20 events/s on {}, {READERS} `serfnode watch --from 0` on {}",
                name(LOADER),
                name(MEASURED)
            ),
        }
    }
}

#[derive(Default)]
struct Tally {
    trials: Vec<Trial>,
    secs: f64,
    daemon_ms: f64,
    watcher_ms: f64,
    lines: Vec<usize>,
    load_events: usize,
}

fn journal_readers(nodes: &Nodes, rt: &Runtime, root: &Path, summary: &mut Rows) -> Result<()> {
    let m = &nodes.daemons[MEASURED];
    let daemon_pid = m.try_pid()? as u32;
    let local = rt
        .block_on(Client::connect(rpc_addr(MEASURED), None))
        .context("rpc connection to e2")?;
    let conditions = [Condition::Quiet, Condition::Events, Condition::Readers];
    let mut tallies: Vec<Tally> = conditions.iter().map(|_| Tally::default()).collect();
    let mut rng = Rng::seeded();
    let mut trial_no = 0;
    progress!(
        "journal readers: {} tag changes per condition in {ROUNDS} rounds of {BLOCK}, \
         measured on {}",
        BLOCK * ROUNDS,
        name(MEASURED)
    );
    for round in 0..ROUNDS {
        for (c, tally) in conditions.iter().zip(tallies.iter_mut()) {
            let load = (*c != Condition::Quiet)
                .then(|| Load::start(nodes.daemons[LOADER].path(files::WRITE_NODE)));
            let watchers = match c {
                Condition::Readers => Some(Watchers::start(&m.mount, root, round)?),
                _ => None,
            };
            // Let the load and the readers settle in.
            std::thread::sleep(Duration::from_millis(500));
            let wpids = watchers.as_ref().map(Watchers::pids).unwrap_or_default();
            let (t, d0, w0) = (Instant::now(), cpu_ms(&[daemon_pid]), cpu_ms(&wpids));
            for _ in 0..BLOCK {
                let target = loop {
                    let n = rng.below(NODES);
                    if n != MEASURED {
                        break n;
                    }
                };
                tally
                    .trials
                    .push(tag_trial(rt, &local, m, target, trial_no, &mut rng)?);
                trial_no += 1;
            }
            tally.secs += t.elapsed().as_secs_f64();
            tally.daemon_ms += cpu_ms(&[daemon_pid]) - d0;
            tally.watcher_ms += cpu_ms(&wpids) - w0;
            if let Some(w) = watchers {
                tally.lines.extend(w.lines());
            }
            if let Some(load) = load {
                tally.load_events += load.finish()?;
            }
            progress!(
                "journal readers: round {}/{ROUNDS}, {} done",
                round + 1,
                c.label()
            );
        }
    }

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut rows = Vec::new();
    let mut cpu_rows = Vec::new();
    let mut raw = Vec::new();
    let mut p50s = Vec::new();
    for (c, tally) in conditions.iter().zip(&tallies) {
        let mut lag: Vec<f64> = tally
            .trials
            .iter()
            .filter_map(|t| Some(ms(t.file?) - ms(t.agent?)))
            .collect();
        let mut total: Vec<f64> = tally.trials.iter().filter_map(|t| t.file.map(ms)).collect();
        let missed = tally
            .trials
            .iter()
            .filter(|t| t.agent.is_none() || t.file.is_none())
            .count();
        raw.push(format!(
            "{}: file − members ms {}",
            c.label(),
            list(&lag, 1)
        ));
        let (pl, pt) = (Percentiles::of(&mut lag), Percentiles::of(&mut total));
        let mut r = pl.row_with_mean("member file shows it − local `members` shows it");
        r.insert(0, c.label());
        r.push(missed.to_string());
        rows.push(r);
        let mut r = pt.row_with_mean("`tags` sent → member file shows it (with gossip)");
        r.insert(0, String::new());
        r.push(String::new());
        rows.push(r);
        p50s.push((pl.p50, pl.p99, pl.mean));
        let lines = if tally.lines.is_empty() {
            "—".to_owned()
        } else {
            format!(
                "{}–{}",
                tally.lines.iter().min().unwrap_or(&0),
                tally.lines.iter().max().unwrap_or(&0)
            )
        };
        cpu_rows.push(row([
            &c.label(),
            &format!("{:.1}", tally.secs),
            &tally.load_events.to_string(),
            &format!("{:.1}", tally.daemon_ms / tally.secs / 10.0),
            &if *c == Condition::Readers {
                format!("{:.1}", tally.watcher_ms / tally.secs / 10.0)
            } else {
                "—".into()
            },
            &lines,
        ]));
    }
    let e2 = name(MEASURED);
    table(
        &format!(
            "View update time with journal readers (tag changes on other members, seen in {e2}'s \
             `members/<id>.json`; ms)"
        ),
        &with_stats(&["condition", "interval"], &["missed"]),
        &rows,
    );
    table(
        "CPU while measuring (% of one core, 10 ms ticks)",
        &[
            "condition",
            "seconds",
            "load events written",
            &format!("{e2}'s daemon"),
            "the 8 watchers",
            "journal lines each watcher printed",
        ],
        &cpu_rows,
    );
    let (ev, rd) = (p50s[1], p50s[2]);
    table(
        "Readers' cost (events flowing in both)",
        &["figure", "without readers", "with 8 readers", "ratio"],
        &[
            row([
                "p50 file − local `members`",
                &format!("{:.1} ms", ev.0),
                &format!("{:.1} ms", rd.0),
                &format!("{:.2}×", rd.0 / ev.0),
            ]),
            row([
                "p99 file − local `members`",
                &format!("{:.1} ms", ev.1),
                &format!("{:.1} ms", rd.1),
                &format!("{:.2}×", rd.1 / ev.1),
            ]),
            row([
                "mean file − local `members`",
                &format!("{:.1} ms", ev.2),
                &format!("{:.1} ms", rd.2),
                &format!("{:.2}×", rd.2 / ev.2),
            ]),
        ],
    );
    raw_lines(&raw);
    summary.push(row([
        &format!("view update time on {e2} with {READERS} journal readers, p50 / p99"),
        &format!("{:.1} / {:.1} ms", rd.0, rd.1),
        &format!("{:.1} / {:.1} ms (no readers, same events)", ev.0, ev.1),
        &format!("{:.2}× / {:.2}×", rd.0 / ev.0, rd.1 / ev.1),
    ]));
    Ok(())
}

/// Sets tag `probe` on `target` (RPC `tags` on its own agent) and times
/// when the measured node's agent (`members` on a kept connection) and its
/// member file show it, each polled every `FILE_POLL`: spinning on either
/// would take a core from the ten daemons on a small machine.
fn tag_trial(
    rt: &Runtime,
    local: &Client,
    m: &Daemon,
    target: usize,
    trial: usize,
    rng: &mut Rng,
) -> Result<Trial> {
    let who = name(target);
    let value = format!("t{trial}-{}", rng.below(1 << 30));
    let file = m.path(&format!("{}/{who}.json", files::MEMBERS));
    let set = BTreeMap::from([(PROBE_TAG.to_owned(), value.clone())]);
    let t0 = Instant::now();
    let deadline = t0 + TRIAL_TIMEOUT;
    let tagger = rt.spawn(async move {
        let client = Client::connect(rpc_addr(target), None).await?;
        client.tags(&set, &[]).await
    });
    let polled = poll_members_and_file(rt, local, &who, &file, &value, deadline, Some(FILE_POLL));
    rt.block_on(tagger)
        .context("tags task")?
        .with_context(|| format!("tags on {who}"))?;
    let (agent, file_seen) = polled?;
    let t = Trial {
        agent: agent.map(|at| at - t0),
        file: file_seen.map(|at| at - t0),
    };
    if t.agent.is_none() || t.file.is_none() {
        progress!(
            "trial {trial}: {who} {PROBE_TAG}={value} missed: members {:?}, file {:?}",
            t.agent,
            t.file
        );
    }
    // A random pause, so changes land at random points of the poll period.
    std::thread::sleep(Duration::from_millis(20 + rng.below(60) as u64));
    Ok(t)
}

// ---- output and small helpers ---------------------------------------------------

/// CPU time (ms) of this process and of every descendant reaped so far
/// (each process's count includes the descendants it reaped).
fn own_tree_cpu_ms() -> f64 {
    let usage = |who| {
        // SAFETY: rusage is plain integers, valid when zeroed.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage(2) fills the struct we own.
        unsafe { libc::getrusage(who, &mut ru) };
        let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
        ms(ru.ru_utime) + ms(ru.ru_stime)
    };
    usage(libc::RUSAGE_SELF) + usage(libc::RUSAGE_CHILDREN)
}
