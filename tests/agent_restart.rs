//! Losing the agent: the files stay served (marked stale) while it is gone,
//! and the view is rebuilt once it is back — whether serfnode restarts its
//! own agent or an attached agent comes back on its own.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::node::{Daemon, DaemonOpts};
use support::serf::{Agent, AgentOpts};
use support::wait_for;

const T: Duration = Duration::from_secs(30);

/// Reads `file` in a loop on another thread, counting reads and failures
/// (unreadable or not JSON) until stopped.
struct Reader {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Reader {
    fn start(path: std::path::PathBuf) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicUsize::new(0));
        let (s, r) = (stop.clone(), reads.clone());
        let thread = std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match std::fs::read(&path) {
                    Ok(b) if serde_json::from_slice::<serde_json::Value>(&b).is_ok() => {}
                    other => {
                        errors.push(format!("{other:?}"));
                    }
                }
                r.fetch_add(1, Ordering::Relaxed);
            }
            errors
        });
        Reader {
            stop,
            reads,
            thread: Some(thread),
        }
    }

    /// Stops the loop; returns (reads, failure descriptions).
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.thread.take().unwrap().join().unwrap();
        (self.reads.load(Ordering::Relaxed), errors)
    }
}

#[test]
fn a_killed_agent_is_restarted_and_the_view_rebuilt_while_files_stay_readable() {
    let b = Daemon::start(DaemonOpts {
        name: "peer".into(),
        ..DaemonOpts::default()
    });
    let a = Daemon::start(DaemonOpts {
        name: "keeper".into(),
        join: vec![b.bind_addr()],
        ..DaemonOpts::default()
    });
    a.wait_json("serfnodes_by_id.json", T, |v| {
        v.as_object().unwrap().len() == 2
    });
    let gen = a.json("status.json")["generation"].as_u64().unwrap();

    let reader = Reader::start(a.path("serfnodes_by_id.json"));
    let first = a.agent_pid().expect("serf runs under serfnode");
    // SAFETY: kill(2) of a process we found by pid.
    unsafe { libc::kill(first, libc::SIGKILL) };
    wait_for(T, "a new serf agent", || {
        a.agent_pid().is_some_and(|p| p != first)
    });
    // Back: connected, newer generation, rejoined through --join.
    let status = a.wait_json("status.json", T, |v| {
        v["agent"]["connected"] == true && v["generation"].as_u64().unwrap() > gen
    });
    assert!(
        status["agent"]["last_error"].is_string(),
        "the outage is recorded: {status}"
    );
    a.wait_json("serfnodes_by_id.json", T, |v| {
        v.as_object().unwrap().len() == 2
    });
    b.wait_json("members/keeper.json", T, |v| v["status"] == "alive");
    let (reads, failures) = reader.finish();
    assert!(reads > 100, "reader looped only {reads} times");
    assert!(
        failures.is_empty(),
        "{} failed reads: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

#[test]
fn an_attached_agent_gone_leaves_a_stale_view_served_until_it_returns() {
    let agent = Agent::start(AgentOpts::default());
    let (rpc, name) = (agent.rpc_addr(), agent.name().to_owned());
    let peer = Agent::start(AgentOpts {
        join: Some(agent.bind_addr()),
        ..AgentOpts::default()
    });
    let a = Daemon::start(DaemonOpts {
        attach: Some(rpc),
        ..DaemonOpts::default()
    });
    a.wait_json("serfnodes_by_id.json", T, |v| {
        v.as_object().unwrap().len() == 2
    });

    let reader = Reader::start(a.path("serfnodes_by_id.json"));
    drop(agent);
    let status = a.wait_json("status.json", T, |v| v["agent"]["stale"] == true);
    assert!(status["agent"]["stale_since"].as_f64().unwrap() > 1.7e9);
    assert!(
        status["agent"]["last_error"]
            .as_str()
            .unwrap()
            .contains(&rpc.to_string()),
        "{status}"
    );
    // The last known members are still served.
    let by_id = a.json("serfnodes_by_id.json");
    assert!(
        by_id.get(&name).is_some() && by_id.get(peer.name()).is_some(),
        "{by_id}"
    );

    // The agent comes back on the same address as a fresh process; the
    // peer may or may not have found it again yet, so the view must follow
    // whatever the new agent itself reports.
    let again = Agent::start(AgentOpts {
        name: Some(name.clone()),
        ip: Some(rpc.ip()),
        ..AgentOpts::default()
    });
    let status = a.wait_json("status.json", T, |v| v["agent"]["connected"] == true);
    assert!(status["agent"]["stale_since"].is_null());
    support::wait_for(T, "the view to match the new agent", || {
        let out = std::process::Command::new("serf")
            .args(["members", &format!("-rpc-addr={rpc}"), "-status=alive"])
            .output()
            .unwrap();
        let mut alive: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        alive.sort();
        let shown: Vec<String> = a
            .json("serfnodes_by_id.json")
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        alive.contains(&name) && shown == alive
    });
    let (reads, failures) = reader.finish();
    assert!(
        reads > 100 && failures.is_empty(),
        "{reads} reads, failures {failures:?}"
    );
    drop(again);
}
