//! Concurrency and scale, for a minute (`SERFNODE_SOAK_SECS`, default 60):
//! eight readers in tight loops over every kind of file of node A, writers
//! raising events through A's write node, and raw agents joining, changing
//! tags, leaving and being killed all the while. No read may be torn, no
//! event the write node accepted may be lost, and A's daemon must not grow.
//!
//! Each event carries a unique id and is counted on another member, B, from
//! B's agent's event stream. It must also be in A's own journal: A's agent
//! streamed it back, so the agent had it (what a successful write promises).
//!
//! Serf's gossip alone does not bring every user event to every member
//! while members come and go, at any rate. Each member sends an event to a
//! few random members only (A, local profile: RetransmitMult 2 ×
//! ⌈log10(N+1)⌉ for the N members it knows in any state, so 2, then 4 from
//! 10, 6 from 99), and some of those pass nothing on: a member that just
//! joined got the recent events in its join's state exchange (so the
//! gossiped copy is no news to it), and a killed member takes what it is
//! sent until it is declared dead and for 15-30 s more. An event that
//! reached only such members gets to B by push-pull anti-entropy alone
//! (every 15-30 s, with one random member), and only while it is among the
//! last 512 Lamport times (Serf's `EventBuffer`). Measured here without
//! help, at 20-50 events/s, a few events in a thousand never reached B, in
//! bursts within seconds of a kill; with a kill every other agent, as in
//! `churn.rs`, about a third. So every [`REPAIR_EVERY`] B's agent pulls A's
//! state (a join with replay: a push-pull on demand) and the test notes the
//! events gossip had not brought within [`GRACE`] (a figure about Serf);
//! every accepted event must reach B, by gossip or from A's state.
//!
//! `SERFNODE_SOAK_RATE` sets the writers' total rate (default
//! [`DEFAULT_RATE`] events/s); `SERFNODE_SOAK_KILL_GAP_MS` how often an
//! agent is killed rather than let leave (default [`KILL_GAP`]).

mod support;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use serfnode::cluster::rpc::{Client, StreamRecord};
use support::node::{raw_write, rss_kib, Daemon, DaemonOpts};
use support::serf::{Agent, AgentOpts};
use tokio::runtime::Runtime;

const DEFAULT_SECS: u64 = 60;
/// Events/s over all writers. An event gossip missed must still be within
/// the 512-event window when B pulls, so at most ~80/s with these pulls; and
/// from ~100/s the default-profile agents' gossip queues back up (they send
/// the newest first) and B gets events too late to take them.
const DEFAULT_RATE: f64 = 50.0;
const READERS: usize = 8;
const WRITERS: u64 = 3;
const CHURNERS: usize = 3;
/// How long each churned agent stays.
const LIFE: Duration = Duration::from_millis(500);
/// At most one kill per this long; the other agents leave gracefully.
const KILL_GAP: Duration = Duration::from_secs(10);
/// How often B pulls A's state.
const REPAIR_EVERY: Duration = Duration::from_secs(3);
/// How long gossip has to bring an event to B before it counts as missed.
const GRACE: Duration = Duration::from_secs(2);
/// Serf's `EventBuffer`: B takes no event this many Lamport times older than
/// the newest it saw, not even from A's state.
const EVENT_BUFFER: f64 = 512.0;
/// How long B may take, after the writers stop, to count every event.
const DRAIN: Duration = Duration::from_secs(30);
const RSS_EVERY: Duration = Duration::from_secs(2);
const T: Duration = Duration::from_secs(30);

/// What the readers read, in turn (`members` is every file in it).
const FILES: [&str; 5] = [
    "serfnodes_by_id.json",
    "serfnodes_by_role.json",
    "status.json",
    "members",
    "events",
];

/// An event's id: its writer and its number there.
type Id = (u64, u64);

fn env_or<V: std::str::FromStr>(var: &str, default: V) -> V {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---- readers ---------------------------------------------------------------

#[derive(Default)]
struct Reads {
    /// Complete reads per entry of [`FILES`] (members: per member file).
    by_file: [u64; FILES.len()],
    /// Member files listed but gone when opened (reaped meanwhile).
    vanished: u64,
    torn: u64,
    /// The first few torn reads or failed reads, for the failure message.
    examples: Vec<String>,
    /// `generation`s seen in `status.json`.
    generations: BTreeSet<u64>,
    /// The soak events seen in A's journal: what A's own agent streamed
    /// back, so what it accepted.
    journaled: HashSet<Id>,
}

impl Reads {
    fn total(&self) -> u64 {
        self.by_file.iter().sum()
    }

    fn tear(&mut self, path: &Path, why: String, bytes: &[u8]) {
        self.torn += 1;
        if self.examples.len() < 5 {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]);
            self.examples.push(format!(
                "{} ({} bytes): {why}: {text:?}",
                path.display(),
                bytes.len()
            ));
        }
    }

    fn add(&mut self, other: Reads) {
        for (a, b) in self.by_file.iter_mut().zip(other.by_file) {
            *a += b;
        }
        self.vanished += other.vanished;
        self.torn += other.torn;
        self.examples.extend(other.examples);
        self.generations.extend(other.generations);
        self.journaled.extend(other.journaled);
    }
}

/// The journal: one JSON object per line, each line ended by a newline,
/// sequence numbers going up by exactly one. Adds the ids of the soak
/// events in it to `ids`.
fn check_journal(bytes: &[u8], ids: &mut HashSet<Id>) -> Result<(), String> {
    let Some(body) = bytes.strip_suffix(b"\n") else {
        return if bytes.is_empty() {
            Ok(())
        } else {
            Err("no final newline".into())
        };
    };
    let mut prev: Option<u64> = None;
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let v: Value = serde_json::from_slice(line).map_err(|e| format!("line {i}: {e}"))?;
        let seq = v["seq"]
            .as_u64()
            .ok_or_else(|| format!("line {i} has no seq"))?;
        if let Some(p) = prev {
            if seq != p + 1 {
                return Err(format!("line {i}: seq {seq} after {p}"));
            }
        }
        prev = Some(seq);
        if v["type"] == "user" && v["name"] == "soak" {
            if let (Some(w), Some(n)) = (v["payload"]["w"].as_u64(), v["payload"]["n"].as_u64()) {
                ids.insert((w, n));
            }
        }
    }
    Ok(())
}

/// Reads whole files of `root` in a tight loop until `stop`, starting the
/// round at `first`.
fn reader(root: PathBuf, first: usize, stop: Arc<AtomicBool>) -> Reads {
    let mut reads = Reads::default();
    let mut turn = first;
    while !stop.load(Ordering::Relaxed) {
        let k = turn % FILES.len();
        turn += 1;
        let path = root.join(FILES[k]);
        if FILES[k] == "members" {
            let entries = match std::fs::read_dir(&path) {
                Ok(e) => e,
                Err(e) => {
                    reads.tear(&path, format!("readdir: {e}"), b"");
                    continue;
                }
            };
            for entry in entries {
                let file = match entry {
                    Ok(e) => e.path(),
                    Err(e) => {
                        reads.tear(&path, format!("readdir entry: {e}"), b"");
                        continue;
                    }
                };
                match std::fs::read(&file) {
                    Ok(bytes) => {
                        reads.by_file[k] += 1;
                        if let Err(e) = serde_json::from_slice::<Value>(&bytes) {
                            reads.tear(&file, e.to_string(), &bytes);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => reads.vanished += 1,
                    Err(e) => reads.tear(&file, format!("read: {e}"), b""),
                }
            }
            continue;
        }
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                reads.tear(&path, format!("read: {e}"), b"");
                continue;
            }
        };
        reads.by_file[k] += 1;
        if FILES[k] == "events" {
            if let Err(e) = check_journal(&bytes, &mut reads.journaled) {
                reads.tear(&path, e, &bytes);
            }
            continue;
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => {
                if let Some(g) = v["generation"].as_u64() {
                    reads.generations.insert(g);
                }
            }
            Err(e) => reads.tear(&path, e.to_string(), &bytes),
        }
    }
    reads
}

// ---- writers ---------------------------------------------------------------

/// The events the write node accepted, with when their write returned.
type Ledger = Arc<Mutex<HashMap<Id, Instant>>>;

#[derive(Default)]
struct Written {
    /// Ids whose line was not accepted (never written again: a retry takes
    /// a fresh id, so an id refused yet delivered shows up as such).
    refused: Vec<u64>,
    writes: u64,
    eagain: u64,
    short: u64,
    /// Anything a well-formed line should never meet.
    errors: Vec<String>,
}

/// Raises `["soak",{"w":w,"n":n}]` events through the write node at `rate`
/// events/s, one to `w + 1` lines per write(2), until `stop`; records the
/// accepted ones in `ledger`.
fn writer(w: u64, node: PathBuf, rate: f64, ledger: Ledger, stop: Arc<AtomicBool>) -> Written {
    let mut out = Written::default();
    let mut next_id = 0u64;
    let (mut t0, mut paced) = (Instant::now(), 0u64);
    while !stop.load(Ordering::Relaxed) {
        let batch = 1 + out.writes % (w + 1);
        let ids: Vec<u64> = (next_id..next_id + batch).collect();
        next_id += batch;
        let lines: Vec<String> = ids
            .iter()
            .map(|n| format!("[\"soak\",{{\"w\":{w},\"n\":{n}}}]\n"))
            .collect();
        let res = raw_write(&node, lines.concat().as_bytes());
        let done = Instant::now();
        out.writes += 1;
        let covered = match res {
            Ok(len) => {
                // A short count covers exactly the accepted lines.
                let mut covered = 0;
                let mut at = 0;
                for line in &lines {
                    if at + line.len() > len {
                        break;
                    }
                    at += line.len();
                    covered += 1;
                }
                if at != len {
                    out.errors
                        .push(format!("short count {len} not at a line end ({lines:?})"));
                }
                if covered < lines.len() {
                    out.short += 1;
                }
                covered
            }
            Err(libc::EAGAIN) => {
                out.eagain += 1;
                0
            }
            Err(errno) => {
                out.errors.push(format!(
                    "{}: {lines:?}",
                    std::io::Error::from_raw_os_error(errno)
                ));
                0
            }
        };
        ledger
            .lock()
            .unwrap()
            .extend(ids[..covered].iter().map(|&n| ((w, n), done)));
        out.refused.extend(&ids[covered..]);
        if covered < ids.len() {
            // EAGAIN: retry later (with fresh ids).
            std::thread::sleep(Duration::from_millis(100));
        }
        // Pace to `rate`; after a stall, start over instead of bursting.
        paced += batch;
        let due = t0 + Duration::from_secs_f64(paced as f64 / rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > Duration::from_secs(1) {
            (t0, paced) = (now, 0);
        }
    }
    out
}

// ---- the counting member ---------------------------------------------------

#[derive(Default)]
struct Counted {
    /// Id → how many times it arrived, and when first.
    seen: HashMap<Id, (u32, Instant)>,
    /// User events that are not ours, or not from A: described.
    foreign: Vec<String>,
}

/// Counts the soak events B's agent streams to an RPC subscriber.
struct Counter {
    rt: Runtime,
    /// B's agent.
    client: Client,
    counted: Arc<Mutex<Counted>>,
    /// Records our own RPC client dropped for lagging (would void the count).
    dropped: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
}

impl Counter {
    fn on(node: &Daemon, origin: &str) -> Counter {
        let rt = Runtime::new().unwrap();
        let counted = Arc::new(Mutex::new(Counted::default()));
        let dropped = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(AtomicBool::new(false));
        let addr = node.rpc_addr();
        let origin = origin.to_owned();
        let (c, d, x) = (counted.clone(), dropped.clone(), closed.clone());
        let client = rt.block_on(async move {
            let client = Client::connect(addr, None).await.unwrap();
            let mut sub = client.stream("user").await.unwrap();
            tokio::spawn(async move {
                while let Some(rec) = sub.recv().await {
                    d.store(sub.dropped(), Ordering::Relaxed);
                    let StreamRecord::User { name, payload, .. } = rec else {
                        continue;
                    };
                    let (payload, from) = serfnode::event::unwrap(&payload);
                    let id = (payload["w"].as_u64(), payload["n"].as_u64());
                    let mut c = c.lock().unwrap();
                    match (name.as_str(), from, id) {
                        ("soak", Some(from), (Some(w), Some(n))) if from.node == origin => {
                            c.seen.entry((w, n)).or_insert((0, Instant::now())).0 += 1;
                        }
                        (_, from, _) => {
                            let desc = format!("{name} {payload} from {from:?}");
                            c.foreign.push(desc);
                        }
                    }
                }
                d.store(sub.dropped(), Ordering::Relaxed);
                x.store(true, Ordering::Relaxed);
            });
            client
        });
        Counter {
            rt,
            client,
            counted,
            dropped,
            closed,
        }
    }

    /// The accepted events not counted yet, of those accepted before `cutoff`.
    fn missing(&self, ledger: &Ledger, cutoff: Instant) -> Vec<(Id, Instant)> {
        let ledger = ledger.lock().unwrap();
        let counted = self.counted.lock().unwrap();
        ledger
            .iter()
            .filter(|(id, at)| **at <= cutoff && !counted.seen.contains_key(id))
            .map(|(id, at)| (*id, *at))
            .collect()
    }

    /// Serf's anti-entropy, now: B's agent pulls `peer`'s state, the recent
    /// events included, as a join with replay does.
    fn pull_from(&self, peer: SocketAddr) -> Result<(), String> {
        match self
            .rt
            .block_on(self.client.join(&[peer.to_string()], true))
        {
            Ok(1) => Ok(()),
            Ok(n) => Err(format!("join reached {n} members")),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// B's pulls of A's state, and what gossip had not brought before them.
#[derive(Default)]
struct Repairs {
    /// Events gossip had not brought to B within [`GRACE`], with when they
    /// were accepted.
    missed: HashMap<Id, Instant>,
    pulls: u64,
    /// Pulls that failed (the next one makes up for it), and why.
    failed: Vec<String>,
}

impl Repairs {
    fn run(&mut self, counter: &Counter, ledger: &Ledger, a: SocketAddr) {
        self.missed
            .extend(counter.missing(ledger, Instant::now() - GRACE));
        self.pulls += 1;
        if let Err(e) = counter.pull_from(a) {
            self.failed.push(e);
        }
    }
}

// ---- churn -----------------------------------------------------------------

#[derive(Default, Debug)]
struct Churned {
    started: u64,
    left: u64,
    killed: u64,
    retagged: u64,
    /// When agents were killed, in seconds into the soak.
    kills: Vec<f64>,
}

/// How the membership churns.
#[derive(Clone)]
struct Churn {
    /// When the soak started (kill times are counted from it).
    t0: Instant,
    /// How long each churned agent stays.
    life: Duration,
    /// At most one kill per this long, across all churners.
    kill_gap: Duration,
    last_kill: Arc<Mutex<Instant>>,
    /// Where agents join, in turn.
    hubs: [SocketAddr; 2],
    stop: Arc<AtomicBool>,
}

/// Raw agents, one after another: each joins (A or B in turn) with fresh
/// tags, changes its tags halfway through its life, then leaves gracefully
/// or, when no agent was killed for the kill gap, is killed.
fn churner(k: usize, plan: Churn) -> Churned {
    let mut out = Churned::default();
    let mut n = 0u64;
    while !plan.stop.load(Ordering::Relaxed) {
        let mut agent = Agent::start(AgentOpts {
            tags: [
                ("role".to_string(), format!("churn-{k}-{}", n % 4)),
                ("timestamp".into(), n.to_string()),
            ]
            .into(),
            join: Some(plan.hubs[(n % 2) as usize]),
            ..AgentOpts::default()
        });
        out.started += 1;
        std::thread::sleep(plan.life / 2);
        agent.set_tags(&[("role", &format!("churn-{k}-moved-{}", n % 3))]);
        out.retagged += 1;
        std::thread::sleep(plan.life / 2);
        let kill = {
            let mut last = plan.last_kill.lock().unwrap();
            let due = last.elapsed() >= plan.kill_gap;
            if due {
                *last = Instant::now();
            }
            due
        };
        if kill {
            agent.kill();
            out.killed += 1;
            out.kills.push(plan.t0.elapsed().as_secs_f64());
        } else {
            agent.stop();
            out.left += 1;
        }
        n += 1;
    }
    out
}

// ---- the soak --------------------------------------------------------------

fn mean(xs: &[u64]) -> f64 {
    xs.iter().sum::<u64>() as f64 / xs.len().max(1) as f64
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Times as seconds into the soak, to a tenth, each once.
fn seconds_into(t0: Instant, times: impl Iterator<Item = Instant>) -> Vec<f64> {
    let tenths: BTreeSet<u64> = times
        .map(|t| t.saturating_duration_since(t0).as_millis() as u64 / 100)
        .collect();
    tenths.into_iter().map(|t| t as f64 / 10.0).collect()
}

#[test]
fn eight_readers_writers_and_churn_for_a_minute_lose_nothing() {
    let secs: u64 = env_or("SERFNODE_SOAK_SECS", DEFAULT_SECS);
    let rate: f64 = env_or("SERFNODE_SOAK_RATE", DEFAULT_RATE);
    let kill_gap = Duration::from_millis(env_or(
        "SERFNODE_SOAK_KILL_GAP_MS",
        KILL_GAP.as_millis() as u64,
    ));
    // An event gossip missed must still be within B's window when B pulls.
    let behind = rate * (REPAIR_EVERY + GRACE).as_secs_f64();
    assert!(
        behind < EVENT_BUFFER * 0.8,
        "at {rate}/s an event missed by gossip may be {behind:.0} events old when B \
         pulls A's state; B takes none past {EVENT_BUFFER}"
    );
    let soak = Duration::from_secs(secs);

    let mut a = Daemon::start(DaemonOpts {
        name: "soak-a".into(),
        role: "soak".into(),
        ..DaemonOpts::default()
    });
    let b = Daemon::start(DaemonOpts {
        name: "soak-b".into(),
        role: "count".into(),
        join: vec![a.bind_addr()],
        ..DaemonOpts::default()
    });
    for n in [&a, &b] {
        n.wait_json("serfnodes_by_id.json", T, |v| {
            v.as_object().unwrap().len() == 2
        });
    }
    let counter = Counter::on(&b, &a.name);
    let generation_before = a.json("status.json")["generation"].as_u64().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Ledger::default();
    let started = Instant::now();
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (root, stop) = (a.mount.clone(), stop.clone());
            std::thread::spawn(move || reader(root, r, stop))
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (node, ledger, stop) = (a.path("parent"), ledger.clone(), stop.clone());
            let each = rate / WRITERS as f64;
            std::thread::spawn(move || writer(w, node, each, ledger, stop))
        })
        .collect();
    let plan = Churn {
        t0: started,
        life: LIFE,
        kill_gap,
        last_kill: Arc::new(Mutex::new(started)),
        hubs: [a.bind_addr(), b.bind_addr()],
        stop: stop.clone(),
    };
    let churners: Vec<_> = (0..CHURNERS)
        .map(|k| {
            let plan = plan.clone();
            std::thread::spawn(move || churner(k, plan))
        })
        .collect();
    let sampler = {
        let (pid, stop) = (a.pid(), stop.clone());
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                samples.push(rss_kib(pid).expect("A's daemon runs"));
                next += RSS_EVERY;
                while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            samples
        })
    };

    // Meanwhile: B pulls A's state every few seconds.
    let mut repairs = Repairs::default();
    let end = started + soak;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep(REPAIR_EVERY.min(end - now));
        repairs.run(&counter, &ledger, a.bind_addr());
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();

    let mut reads = Reads::default();
    let mut per_reader = Vec::new();
    for r in readers {
        let got = r.join().unwrap();
        per_reader.push(got.by_file);
        reads.add(got);
    }
    let mut refused = HashSet::new();
    let (mut writes, mut eagain, mut short, mut errors) = (0, 0, 0, Vec::new());
    for (w, handle) in writers.into_iter().enumerate() {
        let got = handle.join().unwrap();
        refused.extend(got.refused.iter().map(|&n| (w as u64, n)));
        writes += got.writes;
        eagain += got.eagain;
        short += got.short;
        errors.extend(got.errors);
    }
    let rss = sampler.join().unwrap();
    let mut churn = Churned::default();
    for c in churners {
        let got = c.join().unwrap();
        churn.started += got.started;
        churn.left += got.left;
        churn.killed += got.killed;
        churn.retagged += got.retagged;
        churn.kills.extend(got.kills);
    }
    churn.kills.sort_by(f64::total_cmp);
    let generation_after = a.json("status.json")["generation"].as_u64().unwrap();

    // The last events get their grace and a last pull; then every accepted
    // event must be at B, within a bound.
    let drain_start = Instant::now();
    std::thread::sleep(GRACE);
    loop {
        repairs.run(&counter, &ledger, a.bind_addr());
        let all = support::poll_for(REPAIR_EVERY, || {
            counter.missing(&ledger, Instant::now()).is_empty()
        })
        .is_ok();
        if all || drain_start.elapsed() > DRAIN {
            break;
        }
    }
    let drained_in = drain_start.elapsed();
    // Duplicates would come within gossip's ~100 ms.
    std::thread::sleep(Duration::from_millis(500));
    let accepted = ledger.lock().unwrap().clone();

    // The journal's last events, which the readers may have stopped before.
    let tail = std::fs::read(a.path("events")).unwrap();
    check_journal(&tail, &mut reads.journaled).unwrap();
    let not_journaled = accepted
        .keys()
        .filter(|id| !reads.journaled.contains(id))
        .count();

    let counted = counter.counted.lock().unwrap();
    let mut missing: Vec<Id> = accepted
        .keys()
        .filter(|id| !counted.seen.contains_key(id))
        .copied()
        .collect();
    missing.sort_unstable();
    let duplicated: Vec<_> = counted
        .seen
        .iter()
        .filter(|(_, (times, _))| *times > 1)
        .map(|(id, (times, _))| (*id, *times))
        .collect();
    let refused_yet_delivered = refused
        .iter()
        .filter(|id| counted.seen.contains_key(id))
        .count();
    let never_written = counted
        .seen
        .keys()
        .filter(|id| !accepted.contains_key(id) && !refused.contains(id))
        .count();
    let mut latency: Vec<Duration> = accepted
        .iter()
        .filter_map(|(id, sent)| {
            counted
                .seen
                .get(id)
                .map(|(_, at)| at.saturating_duration_since(*sent))
        })
        .collect();
    latency.sort_unstable();

    let third = (rss.len() / 3).max(1);
    let first_avg = mean(&rss[..third]);
    let last_avg = mean(&rss[rss.len() - third..]);
    let b_log = b.full_log();
    let (old_events, ipc_drops) = (
        b_log.matches("received old event").count(),
        b_log.matches("Dropping event").count(),
    );

    let secs_f = elapsed.as_secs_f64();
    let n = accepted.len();
    eprintln!(
        "soak: {secs_f:.1} s; {READERS} readers: {} reads ({:.0}/s; by_id {}, by_role {}, \
         status {}, member files {}, events {}), {} torn, {} member files vanished, \
         {} generations seen ({generation_before}..{generation_after}); \
         {WRITERS} writers at {rate}/s: {writes} writes, {n} events accepted ({:.1}/s), \
         {} refused ({eagain} EAGAIN, {short} short), {} errors, {not_journaled} not in \
         A's journal; B counted {} events: {} missing, {} duplicated, \
         {refused_yet_delivered} refused yet delivered, {never_written} never written, \
         latency p50 {:?} p99 {:?} max {:?}, all in {:.1} s after the writers stopped; \
         {} ({:.2}%) not brought by gossip within {GRACE:?}, {} pulls of A's state \
         ({} failed); \
         B's agent: {old_events} too-old drops, {ipc_drops} stream drops; \
         churn: {} agents ({} left, {} killed), {} tag changes; \
         A's RSS KiB every {RSS_EVERY:?}: first third {first_avg:.0}, \
         last third {last_avg:.0}, samples {rss:?}",
        reads.total(),
        reads.total() as f64 / secs_f,
        reads.by_file[0],
        reads.by_file[1],
        reads.by_file[2],
        reads.by_file[3],
        reads.by_file[4],
        reads.torn,
        reads.vanished,
        reads.generations.len(),
        n as f64 / secs_f,
        refused.len(),
        errors.len(),
        counted.seen.len(),
        missing.len(),
        duplicated.len(),
        percentile(&latency, 0.5),
        percentile(&latency, 0.99),
        latency.last().copied().unwrap_or_default(),
        drained_in.as_secs_f64(),
        repairs.missed.len(),
        repairs.missed.len() as f64 * 100.0 / n.max(1) as f64,
        repairs.pulls,
        repairs.failed.len(),
        churn.started,
        churn.left,
        churn.killed,
        churn.retagged,
    );
    eprintln!(
        "soak: kills at {:.1?} s; events gossip had not brought were accepted at {:?} s; \
         failed pulls: {:?}",
        churn.kills,
        seconds_into(started, repairs.missed.values().copied()),
        repairs.failed,
    );

    assert_eq!(
        reads.torn, 0,
        "torn or failed reads, e.g. {:#?}",
        reads.examples
    );
    assert!(errors.is_empty(), "writers met errors: {errors:?}");
    assert_eq!(
        not_journaled, 0,
        "accepted events that A's own agent never streamed back"
    );
    assert!(
        !counter.closed.load(Ordering::Relaxed),
        "B's event stream ended"
    );
    assert_eq!(
        counter.dropped.load(Ordering::Relaxed),
        0,
        "the counting subscriber lagged; the count is void"
    );
    assert!(
        missing.is_empty(),
        "{} of {n} accepted events never reached B (B's agent: {old_events} too-old \
         drops, {ipc_drops} stream drops), e.g. {:?}\n{}",
        missing.len(),
        &missing[..missing.len().min(20)],
        b.log()
    );
    // Serf delivers a user event at most once per member: it remembers
    // (name, payload) per Lamport time for its last 512 times and takes
    // nothing older; and every id here is unique.
    assert!(duplicated.is_empty(), "duplicates: {duplicated:?}");
    assert_eq!(never_written, 0, "B counted ids nobody wrote");
    assert!(
        counted.foreign.is_empty(),
        "unexpected user events: {:?}",
        &counted.foreign[..counted.foreign.len().min(5)]
    );
    drop(counted);

    // The load was real.
    assert!(
        n as f64 >= rate * secs_f * 0.8,
        "writers fell behind: {n} events in {secs_f:.0} s at {rate}/s"
    );
    for (r, by_file) in per_reader.iter().enumerate() {
        assert!(
            by_file.iter().all(|&n| n >= 10),
            "reader {r} barely read: {by_file:?}"
        );
    }
    assert!(
        reads.total() >= 200 * secs,
        "readers too slow: {} reads",
        reads.total()
    );
    let kills_due = soak >= kill_gap * 2;
    assert!(
        churn.started >= secs / 2 && churn.left >= 1 && (churn.killed >= 1 || !kills_due),
        "churn too slow to prove anything: {churn:?}"
    );
    assert!(
        reads.generations.len() >= 20,
        "the view barely moved: {} generations seen",
        reads.generations.len()
    );

    // Memory flat. The first samples are taken under full load already, but
    // the journal ring (1024 events) is still filling and the allocator's
    // per-thread arenas still settling: 1.5× plus 4 MiB absorbs that. A
    // leak of 1 KiB per event (50/s) or of 100 bytes per read (thousands/s)
    // would add several MiB per third and exceed it.
    assert!(rss.len() >= 3, "too few RSS samples: {rss:?}");
    assert!(
        last_avg <= first_avg * 1.5 + 4096.0,
        "A's daemon grew: {first_avg:.0} KiB → {last_avg:.0} KiB, samples {rss:?}"
    );

    // Still answers and shuts down cleanly after all that.
    a.signal(libc::SIGTERM);
    let status = a.wait_exit(T);
    assert!(status.success(), "A exited with {status:?}\n{}", a.log());
    drop(counter);
}
