//! How the daemon starts and stops as people run it: every signal that
//! means "stop" (SIGTERM, SIGINT, SIGHUP from a closed terminal or ssh
//! session, SIGQUIT), also when a terminal sends it to the whole
//! foreground job at once, ends in a graceful leave (the others see the
//! node `left`, not `failed`), an unmounted mount point (no "Transport
//! endpoint is not connected" left behind) and exit code 0;
//! `scripts/quickstart`'s Ctrl-C, typed into a real terminal (tmux), does
//! that for all three nodes; and `status.json` / `serfnode status` tell a
//! clean start from an outage, with an exit status a health check can use.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::node::{is_mounted, Daemon, DaemonOpts, SERFNODE};
use support::serf::{unique_ip, Agent, AgentOpts};
use support::wait_for;

const T: Duration = Duration::from_secs(30);

fn observer() -> Daemon {
    Daemon::start(DaemonOpts {
        name: "observer".into(),
        role: "observer".into(),
        ..DaemonOpts::default()
    })
}

fn member(obs: &Daemon, name: &str) -> String {
    obs.json(&format!("members/{name}.json"))["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Starts a node that joins `obs` and waits until `obs` sees it.
fn joined(obs: &Daemon, name: &str, session: bool) -> Daemon {
    let node = Daemon::start(DaemonOpts {
        name: name.into(),
        role: "web".into(),
        join: vec![obs.bind_addr()],
        session,
        ..DaemonOpts::default()
    });
    obs.wait_json(&format!("members/{name}.json"), T, |m| {
        m["status"] == "alive"
    });
    node
}

/// What a clean stop leaves: exit 0, its agent's graceful leave, the
/// mount point an ordinary directory again, the hosts block gone, and the
/// node `left` for the others. Collects what did not hold.
fn check_clean_stop(obs: &Daemon, node: &mut Daemon, how: &str, failed: &mut Vec<String>) {
    let status = node.wait_exit(T);
    let mut bad = Vec::new();
    if !status.success() {
        bad.push(format!("exit status {status}"));
    }
    if !node
        .full_log()
        .contains("serf agent left the cluster and stopped (exit code 0)")
    {
        bad.push("no graceful leave of its agent".to_owned());
    }
    if is_mounted(&node.mount) {
        bad.push("still mounted".to_owned());
    }
    if let Err(e) = std::fs::read_dir(&node.mount) {
        bad.push(format!("mount point unusable: {e}"));
    }
    if node.hosts_text().contains("# BEGIN serfnode") {
        bad.push("hosts block left".to_owned());
    }
    let left = support::poll_for(T, || member(obs, &node.name) == "left").is_ok();
    if !left {
        bad.push(format!(
            "the observer sees it {:?}, not left",
            member(obs, &node.name)
        ));
    }
    if !bad.is_empty() {
        failed.push(format!("{how}: {}\n{}", bad.join("; "), node.log()));
    }
}

#[test]
fn every_stop_signal_ends_in_a_graceful_leave_also_from_a_terminal() {
    let mut failed = Vec::new();
    // One node per way of stopping, each with an observer of its own. With
    // one observer for all, the last node's leave once in six runs never
    // reached it: the observer saw the node fail, with no one left to tell
    // it otherwise. (Likely: a leave's intent is gossiped to a few random
    // members, and memberlist also gossips to members gone in the last
    // 30 s, here the nodes stopped before.) A pair leaves the observer the
    // only member to tell.
    let cases: [(&str, bool); 5] = [
        ("hup", false),
        ("quit", false),
        ("ctrl-c", true),
        ("ctrl-backslash", true),
        ("ctrl-c-and-term", true),
    ];
    let mut pairs: Vec<(Daemon, Daemon)> = cases
        .iter()
        .map(|(name, session)| {
            let obs = observer();
            let node = joined(&obs, name, *session);
            (obs, node)
        })
        .collect();
    for ((name, _), (obs, node)) in cases.iter().zip(&mut pairs) {
        match *name {
            // A closed terminal or ssh session.
            "hup" => node.signal(libc::SIGHUP),
            "quit" => node.signal(libc::SIGQUIT),
            // The terminal signals the whole foreground job: the daemon and
            // the agent it runs.
            "ctrl-c" => node.signal_group(libc::SIGINT),
            "ctrl-backslash" => node.signal_group(libc::SIGQUIT),
            // A script that traps Ctrl-C and signals its job once more:
            // both signals arrive together.
            _ => {
                node.signal_group(libc::SIGINT);
                node.signal(libc::SIGTERM);
            }
        }
        check_clean_stop(obs, node, name, &mut failed);
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

/// `serfnode status --mount MOUNT`: exit code and stdout.
fn status(mount: &Path) -> (Option<i32>, String) {
    let out = Command::new(SERFNODE)
        .args(["status", "--mount"])
        .arg(mount)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_clean_start_is_no_outage_and_status_fails_while_the_agent_is_unreachable() {
    // A clean start: the agent is not listening for a moment, which is no
    // outage.
    let node = Daemon::start(DaemonOpts::default());
    let s = node.json("status.json");
    let mut failed = Vec::new();
    if s["agent"]["last_error"] != serde_json::Value::Null
        || s["agent"]["stale_since"] != serde_json::Value::Null
    {
        failed.push(format!("clean start reported as an outage: {s}"));
    }
    if node.full_log().contains("agent unreachable") {
        failed.push(format!("clean start logged as an outage:\n{}", node.log()));
    }
    let (code, out) = status(&node.mount);
    if code != Some(0) || out.contains("last outage") {
        failed.push(format!("status of a healthy node: exit {code:?}\n{out}"));
    }

    // Attached to an agent that is not there yet: starting, not healthy,
    // still no outage.
    let ip = unique_ip();
    let attached = Daemon::spawn(DaemonOpts {
        attach: Some(std::net::SocketAddr::new(ip, 7373)),
        ..DaemonOpts::default()
    });
    let s = attached.wait_json("status.json", T, |s| s["agent"]["starting"] == true);
    let (code, out) = status(&attached.mount);
    if code != Some(1)
        || !out.contains("starting")
        || s["agent"]["last_error"] != serde_json::Value::Null
    {
        failed.push(format!(
            "status before the agent is up: exit {code:?}\n{out}\n{s}"
        ));
    }
    let mut agent = Agent::start(AgentOpts {
        ip: Some(ip),
        ..AgentOpts::default()
    });
    attached.wait_connected();
    assert_eq!(status(&attached.mount).0, Some(0));

    // The agent gone: status.json says so, and `serfnode status` fails,
    // until it is back.
    agent.kill();
    attached.wait_json("status.json", T, |s| s["agent"]["connected"] == false);
    let (code, out) = status(&attached.mount);
    if code != Some(1) || !out.contains("unreachable") {
        failed.push(format!("status with the agent gone: exit {code:?}\n{out}"));
    }
    let _agent = Agent::start(AgentOpts {
        ip: Some(ip),
        ..AgentOpts::default()
    });
    attached.wait_connected();
    let (code, out) = status(&attached.mount);
    if code != Some(0) || !out.contains("last outage") {
        failed.push(format!(
            "status once the agent is back: exit {code:?}\n{out}"
        ));
    }
    // No daemon at all: an error, exit 1.
    let (code, _) = status(Path::new("/nonexistent-serfnode-mount"));
    if code != Some(1) {
        failed.push(format!("status with no daemon: exit {code:?}"));
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

/// A private tmux server running `scripts/quickstart`, and what the script
/// started: killed, unmounted and removed on drop, also on failure.
struct Quickstart {
    socket: String,
    dir: tempfile::TempDir,
}

impl Quickstart {
    fn out(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out")).unwrap_or_default()
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tmux")
    }

    fn node_dir(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("node{n}"))
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
        // tmux leaves its socket behind when the server ends by itself.
        let dir = std::env::var("TMUX_TMPDIR").unwrap_or_else(|_| "/tmp".into());
        // SAFETY: getuid(2) cannot fail.
        let uid = unsafe { libc::getuid() };
        let _ = std::fs::remove_file(format!("{dir}/tmux-{uid}/{}", self.socket));
        // The nodes run in sessions of their own: kill them by the pids
        // the script printed.
        for line in self.out().lines() {
            let pid = line
                .rsplit_once("(pid ")
                .and_then(|(_, p)| p.trim_end_matches(')').parse::<i32>().ok());
            if let Some(pid) = pid {
                // SAFETY: kill(2); the pid is a node this test started (its
                // session leader: the group goes with it).
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
        }
        for n in 1..=3 {
            let mnt = self.node_dir(n).join("mnt");
            if is_mounted(&mnt) {
                support::node::detach(&mnt);
            }
        }
        if std::thread::panicking() {
            eprintln!("--- quickstart output ---\n{}", self.out());
            for n in 1..=3 {
                let log = std::fs::read_to_string(self.node_dir(n).join("log"));
                eprintln!("--- node{n} log ---\n{}", log.unwrap_or_default());
            }
        }
    }
}

#[test]
fn quickstart_ctrl_c_in_a_terminal_makes_every_node_leave() {
    let repo = env!("CARGO_MANIFEST_DIR");
    // Three addresses of a /24 no other test uses: the script numbers its
    // nodes .1 to .3.
    let net = match unique_ip() {
        std::net::IpAddr::V4(ip) => {
            let [a, b, c, _] = ip.octets();
            format!("{a}.{b}.{}", c.wrapping_add(128))
        }
        ip => panic!("unique_ip gave {ip}"),
    };
    let qs = Quickstart {
        socket: format!("serfnode-test-{}", std::process::id()),
        dir: tempfile::tempdir().unwrap(),
    };
    let dir = qs.dir.path().display().to_string();
    let script = format!(
        "cd {repo} && DIR={dir} NET={net} SERFNODE_BIN={SERFNODE} scripts/quickstart \
         >{dir}/out 2>&1; echo $? >{dir}/exit"
    );
    let started = qs.tmux(&[
        "new-session",
        "-d",
        "-s",
        "qs",
        "-x",
        "160",
        "-y",
        "40",
        &script,
    ]);
    assert!(started.status.success(), "tmux: {started:?}");
    wait_for(Duration::from_secs(60), "quickstart running", || {
        qs.out().contains("Ctrl-C stops all three nodes")
    });
    // An observer that stays: it sees how each node goes.
    let obs = Agent::start(AgentOpts {
        join: Some(format!("{net}.1:7946").parse().unwrap()),
        ..AgentOpts::default()
    });
    wait_for(T, "the observer sees the three nodes", || {
        ["node1", "node2", "node3"]
            .iter()
            .all(|n| obs.member_status(n).as_deref() == Some("alive"))
    });

    // Ctrl-C typed into the terminal.
    let keys = qs.tmux(&["send-keys", "-t", "qs", "C-c"]);
    assert!(keys.status.success(), "tmux send-keys: {keys:?}");
    wait_for(T, "quickstart to exit", || {
        qs.dir.path().join("exit").exists()
    });
    let out = qs.out();
    assert!(out.contains("quickstart: stopped"), "{out}");
    let mut failed = Vec::new();
    for n in 1..=3 {
        let name = format!("node{n}");
        let log = std::fs::read_to_string(qs.node_dir(n).join("log")).unwrap();
        if log.contains("second signal") {
            failed.push(format!("{name} got a second signal"));
        }
        if !log.contains("serf agent left the cluster and stopped (exit code 0)") {
            failed.push(format!("{name}: no graceful leave in its log"));
        }
        let left =
            support::poll_for(T, || obs.member_status(&name).as_deref() == Some("left")).is_ok();
        if !left {
            let seen = obs.member_status(&name);
            failed.push(format!("the observer sees {name} {seen:?}"));
        }
        if is_mounted(&qs.node_dir(n).join("mnt")) {
            failed.push(format!("{name} still mounted"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
