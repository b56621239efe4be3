//! Nothing accepted lost, nothing raised twice, nothing lost silently: the
//! write node under refusals (the event rate), writers that flush in the
//! middle of lines, an agent or a parent daemon that stops answering, and
//! the journal when the agent drops records or the parent's daemon restarts
//! with its clock stepped back. Real agents, real mounts, the real binary
//! (children as `serfnode child` processes on the host).

mod support;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::child::{parent, parent_with, Wrapped};
use support::node::{
    faketime_env, journal_lines, raw_write, signal_pid, stop_pid, Daemon, DaemonOpts,
};
use support::stream::rpc;
use support::wait_for;

const T: Duration = Duration::from_secs(30);

/// One writer holding its fd, as a program does (offsets advance).
struct Fd(File);

impl Fd {
    fn open(path: &Path) -> Fd {
        Fd(std::fs::OpenOptions::new().write(true).open(path).unwrap())
    }

    /// One write(2): the count, or the errno.
    fn write(&self, bytes: &[u8]) -> Result<usize, i32> {
        // SAFETY: write(2) from a live buffer on an open fd.
        let n = unsafe { libc::write(self.0.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap())
        } else {
            Ok(n as usize)
        }
    }
}

/// The user events named `name` in a journal.
fn named(lines: &[Value], name: &str) -> Vec<Value> {
    lines
        .iter()
        .filter(|l| l["type"] == "user" && l["name"] == name)
        .cloned()
        .collect()
}

/// Waits until `node`'s journal holds every user event in `names`, then a
/// little longer (events journal within milliseconds), and returns it.
fn settled(node: &Daemon, names: &[&str]) -> Vec<Value> {
    wait_for(T, &format!("{names:?} journaled on {}", node.name), || {
        let lines = node.journal("events");
        names.iter().all(|n| !named(&lines, n).is_empty())
    });
    std::thread::sleep(Duration::from_millis(500));
    node.journal("events")
}

fn rated(name: &str, rate: u32) -> Daemon {
    Daemon::start(DaemonOpts {
        name: name.into(),
        args: vec!["--event-rate".into(), rate.to_string()],
        ..DaemonOpts::default()
    })
}

#[test]
fn a_refused_end_of_line_is_taken_whole_when_retried_and_dropped_when_the_writer_moves_on() {
    // One event a second: every second line of a quick writer is refused.
    let a = rated("retrier", 1);
    let w = Fd::open(&a.path("parent"));
    let refill = || std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(w.write(b"[\"a\",1]\n"), Ok(8));
    assert_eq!(w.write(b"[\"b\",2"), Ok(6), "a fragment is taken");
    assert_eq!(w.write(b"]\n"), Err(libc::EAGAIN), "over the rate");
    assert_eq!(w.write(b"]\n"), Err(libc::EAGAIN), "still over the rate");
    refill();
    assert_eq!(w.write(b"]\n"), Ok(2), "the retry completes the line");

    // Gave up on a refused line and wrote another: the refused one is not
    // raised and leaves nothing behind.
    assert_eq!(w.write(b"[\"c\",3"), Ok(6));
    assert_eq!(w.write(b"]\n"), Err(libc::EAGAIN));
    refill();
    assert_eq!(w.write(b"[\"d\",4]\n"), Ok(8), "a new line stands alone");

    // A write(2) the kernel splits at a page boundary whose second part is
    // refused: the writer sees a short count, and its retry of the rest,
    // after a pause, completes the line whose head the first part took.
    // 30 bytes written so far; the line below starts 40 bytes before the
    // first page boundary.
    let blank = vec![b'\n'; 4096 - 40 - 8 - 30];
    assert_eq!(w.write(&blank), Ok(blank.len()), "empty lines are skipped");
    assert_eq!(
        w.write(b"[\"e\",5]\n"),
        Err(libc::EAGAIN),
        "the bucket is empty"
    );
    refill();
    assert_eq!(w.write(b"[\"e\",5]\n"), Ok(8));
    let line = format!("[\"f\",\"{}\"]\n", "x".repeat(100));
    let first = 40;
    assert_eq!(w.write(line.as_bytes()), Ok(first), "the page's part only");
    assert_eq!(w.write(&line.as_bytes()[first..]), Err(libc::EAGAIN));
    refill();
    assert_eq!(w.write(&line.as_bytes()[first..]), Ok(line.len() - first));

    let lines = settled(&a, &["a", "b", "d", "e", "f"]);
    for name in ["a", "b", "d", "e", "f"] {
        assert_eq!(named(&lines, name).len(), 1, "{name} once: {lines:?}");
    }
    assert!(named(&lines, "c").is_empty(), "{lines:?}");
}

/// A Python writer with an 8 KiB buffer: flushes cut lines anywhere; on
/// EAGAIN (BlockingIOError) it waits and flushes again, as an application
/// retrying a full pipe would. Prints how many times it was refused.
const PY_WRITER: &str = r#"
import json, sys, time
path, n = sys.argv[1], int(sys.argv[2])
f = open(path, "wb", buffering=8192)
refused = 0
for i in range(n):
    b = (json.dumps(["py", {"i": i, "pad": "x" * 150}]) + "\n").encode()
    while b:
        try:
            f.write(b)
            b = b""
        except BlockingIOError as e:
            b = b[e.characters_written:]
            refused += 1
            time.sleep(0.2)
while True:
    try:
        f.flush()
        break
    except BlockingIOError:
        refused += 1
        time.sleep(0.2)
f.close()
print(refused)
"#;

#[test]
fn block_buffered_writers_that_flush_mid_line_lose_and_repeat_nothing() {
    let a = rated("buffered", 20);
    let node = a.path("parent");
    let n = 60;
    let out = Command::new("python3")
        .args(["-c", PY_WRITER])
        .arg(&node)
        .arg(n.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python writer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(refused > 0, "the writer never met the event rate");

    // dd writes 7 bytes at a time: every line arrives in pieces.
    // After a second the bucket is full again (20).
    std::thread::sleep(Duration::from_millis(1200));
    let dd: String = (0..15).map(|i| format!("[\"dd\",{i}]\n")).collect();
    let script = format!(
        "printf '%s' '{dd}' | dd bs=7 of={} status=none",
        node.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let lines = settled(&a, &["py", "dd"]);
    let got: Vec<u64> = named(&lines, "py")
        .iter()
        .map(|l| l["payload"]["i"].as_u64().unwrap())
        .collect();
    assert_eq!(got, (0..n).collect::<Vec<u64>>(), "refused {refused} times");
    let got: Vec<u64> = named(&lines, "dd")
        .iter()
        .map(|l| l["payload"].as_u64().unwrap())
        .collect();
    assert_eq!(got, (0..15).collect::<Vec<u64>>());
}

#[test]
fn a_write_the_stopped_agent_may_still_take_is_etimedout_and_raised_once() {
    let a = Daemon::start(DaemonOpts {
        name: "frozen-agent".into(),
        ..DaemonOpts::default()
    });
    let agent = a.wait_agent_pid();
    stop_pid(agent);
    let began = Instant::now();
    let first = raw_write(&a.path("parent"), b"[\"late\",1]\n");
    let took = began.elapsed();
    // A writer retries what it is told was not sent.
    let retried =
        (first == Err(libc::EAGAIN)).then(|| raw_write(&a.path("parent"), b"[\"late\",1]\n"));
    signal_pid(agent, libc::SIGCONT);
    let lines = settled(&a, &["late"]);
    let raised = named(&lines, "late").len();
    assert_eq!(
        (first, raised),
        (Err(libc::ETIMEDOUT), 1),
        "the write may have been raised, so never EAGAIN; retried: {retried:?}"
    );
    assert!(took < Duration::from_secs(8), "the write waited {took:?}");
}

#[test]
fn through_a_child_a_write_of_unknown_outcome_is_etimedout_never_eagain() {
    let share = tempfile::tempdir().unwrap();
    let mut p = parent("frozen-parent", share.path());
    let kid = Wrapped::start(share.path(), "kid", &[], &["sleep", "600"]);
    kid.wait_json("status.json", |v| v["agent"]["connected"] == true);
    let node = kid.path("parent");

    // The parent's agent stops answering: the parent cannot know, the
    // child passes that on.
    let agent = p.wait_agent_pid();
    stop_pid(agent);
    let stopped_agent = raw_write(&node, b"[\"late1\",1]\n");
    signal_pid(agent, libc::SIGCONT);
    assert_eq!(stopped_agent, Err(libc::ETIMEDOUT), "agent stopped");
    let lines = settled(&p, &["late1"]);
    assert_eq!(named(&lines, "late1").len(), 1);

    // The parent's daemon stops: the request reached it and may yet be
    // raised; the child waits out the parent's own bound, then says so.
    // A query read meanwhile is bounded too (7 s in a child).
    stop_pid(p.pid());
    let query = kid.path("query/nobody/x");
    let reader = std::thread::spawn(move || {
        let began = Instant::now();
        let read = std::fs::read(&query).map_err(|e| e.raw_os_error());
        (read.err(), began.elapsed())
    });
    let began = Instant::now();
    let stopped_parent = raw_write(&node, b"[\"late2\",1]\n");
    let took = began.elapsed();
    let (query_errno, query_took) = reader.join().unwrap();
    signal_pid(p.pid(), libc::SIGCONT);
    assert_eq!(stopped_parent, Err(libc::ETIMEDOUT), "parent stopped");
    assert!(took < Duration::from_secs(9), "the write waited {took:?}");
    assert_eq!(query_errno, Some(Some(libc::EAGAIN)));
    assert!(
        query_took < Duration::from_secs(9),
        "the read waited {query_took:?}"
    );
    let lines = settled(&p, &["late2"]);
    assert_eq!(
        named(&lines, "late2").len(),
        1,
        "raised once the parent resumed"
    );

    // The link lost with the request in flight: unknown as well.
    stop_pid(p.pid());
    let path = node.clone();
    let writer = std::thread::spawn(move || raw_write(&path, b"[\"late3\",1]\n"));
    std::thread::sleep(Duration::from_secs(1));
    p.crash();
    assert_eq!(writer.join().unwrap(), Err(libc::ETIMEDOUT), "link lost");
    // With the link down, nothing can be sent: EAGAIN.
    kid.wait_json("status.json", |v| v["agent"]["stale"] == true);
    assert_eq!(raw_write(&node, b"[\"down\",1]\n"), Err(libc::EAGAIN));
}

#[test]
fn events_the_agent_drops_for_a_stopped_daemon_leave_a_gap_line() {
    let a = Daemon::start(DaemonOpts {
        name: "slow-reader".into(),
        args: vec!["--journal-size".into(), "20000".into()],
        ..DaemonOpts::default()
    });
    assert_eq!(raw_write(&a.path("parent"), b"[\"before\",1]\n"), Ok(13));
    settled(&a, &["before"]);
    // While the daemon is stopped its agent queues 512 records for it, and
    // the socket holds some more; past that the agent drops them.
    // Each record ~560 bytes: 9,000 are more than the socket buffers and
    // the 512 slots hold (a few MB), while their log lines (~70 bytes each)
    // still fit the agent's log pipe, which the stopped daemon cannot read.
    let n = 9_000;
    stop_pid(a.pid());
    let payload = format!("\"{}\"", "x".repeat(470));
    let sent = rpc(a.rpc_addr(), async |c| {
        let mut sent = 0;
        for _ in 0..n {
            if c.event("flood", payload.as_bytes(), false).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    a.signal(libc::SIGCONT);
    wait_for(T, "the agent to report dropping records", || {
        a.full_log().contains("Dropping event to")
    });
    // Once the flood has drained (the journal stops growing), a new event
    // goes through again.
    let mut last = 0;
    wait_for(T, "the flood to drain", || {
        std::thread::sleep(Duration::from_millis(500));
        let now = a.journal("events").len();
        std::mem::replace(&mut last, now) == now
    });
    assert_eq!(raw_write(&a.path("parent"), b"[\"after\",1]\n"), Ok(12));
    let lines = settled(&a, &["after"]);
    let flood = named(&lines, "flood").len();
    assert!(
        flood < sent,
        "{flood} of {sent} journaled: nothing dropped?"
    );
    let first = lines.iter().position(|l| l["name"] == "before").unwrap();
    let last = lines.iter().position(|l| l["name"] == "after").unwrap();
    let gaps: Vec<&Value> = lines[first..last]
        .iter()
        .filter(|l| l["type"] == "gap")
        .collect();
    assert!(
        !gaps.is_empty(),
        "{flood} of {sent} events journaled, and no gap line says so"
    );
    eprintln!(
        "{flood} of {sent} flood events journaled, {} gap lines",
        gaps.len()
    );
}

#[test]
fn a_childs_journal_flows_on_after_its_parent_restarts_with_its_clock_back() {
    let clock = tempfile::tempdir().unwrap();
    let offset = clock.path().join("offset");
    std::fs::write(&offset, "+0\n").unwrap();
    let env = faketime_env(&offset);
    let share = tempfile::tempdir().unwrap();
    let mut p = parent_with("rewound", share.path(), &[], env);
    let kid = Wrapped::start(share.path(), "kid", &[], &["sleep", "600"]);
    kid.wait_json("status.json", |v| v["agent"]["connected"] == true);
    let child_journal = |file: &str| journal_lines(&std::fs::read(kid.path(file)).unwrap());
    let has = |file: &str, name: &str| !named(&child_journal(file), name).is_empty();

    assert_eq!(raw_write(&p.path("parent"), b"[\"before\",1]\n"), Ok(13));
    wait_for(T, "before in the child's journal", || {
        has("events", "before")
    });
    let before = named(&child_journal("events"), "before")[0]["seq"]
        .as_u64()
        .unwrap();

    // The parent's daemon restarts an hour back: its new numbers are far
    // below the ones the child holds.
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(T).success());
    std::fs::write(&offset, "-1h\n").unwrap();
    p.relaunch();
    p.wait_connected();
    kid.wait_json("status.json", |v| v["agent"]["connected"] == true);
    assert_eq!(raw_write(&p.path("parent"), b"[\"after\",1]\n"), Ok(12));
    wait_for(T, "after in the child's journal", || has("events", "after"));

    let lines = child_journal("events");
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let at = |name: &str| lines.iter().position(|l| l["name"] == name).unwrap();
    let gap = lines[at("before")..at("after")]
        .iter()
        .find(|l| l["type"] == "gap")
        .unwrap_or_else(|| panic!("no gap line between the runs: {lines:?}"));
    assert_eq!(gap["first_lost"], Value::Null, "{gap}");
    // A reader of the child that saved `before` resumes across the restart.
    // (The old run's own leave may come first.)
    let resumed = child_journal(&format!("events_since/{before}"));
    let after = resumed.iter().position(|l| l["name"] == "after");
    let gap = resumed.iter().position(|l| l["type"] == "gap");
    assert!(gap.is_some() && gap < after, "{resumed:?}");
}
