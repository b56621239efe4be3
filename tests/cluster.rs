//! The core on one host, end to end: real `serfnode agent` daemons, each with
//! its real `serf agent` on its own loopback address, serving real FUSE
//! mounts. Files follow join, tag update, leave and failure; roles group
//! oldest first; SIGTERM leaves and unmounts; a crashed run's dead mount is
//! detached at the next start.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::node::{Daemon, DaemonOpts};

const T: Duration = Duration::from_secs(30);

fn opts(name: &str, role: &str, join: Option<&Daemon>) -> DaemonOpts {
    DaemonOpts {
        name: name.into(),
        role: role.into(),
        join: join.map(|n| vec![n.bind_addr()]).unwrap_or_default(),
        ..DaemonOpts::default()
    }
}

fn ids(by_id: &Value) -> Vec<String> {
    by_id.as_object().unwrap().keys().cloned().collect()
}

fn role_ids(by_role: &Value, role: &str) -> Vec<String> {
    by_role[role]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| n["id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn files_follow_join_tag_update_leave_and_failure() {
    let a = Daemon::start(opts("alpha", "web", None));
    let b = Daemon::start(opts("bravo", "db", Some(&a)));
    let mut c = Daemon::start(opts("charlie", "web", Some(&a)));

    // Join: every node sees all three, with roles and addresses.
    for n in [&a, &b, &c] {
        n.wait_json("serfnodes_by_id.json", T, |v| {
            ids(v) == ["alpha", "bravo", "charlie"]
        });
    }
    let by_id = a.json("serfnodes_by_id.json");
    assert_eq!(by_id["bravo"]["role"], "db");
    assert_eq!(by_id["bravo"]["serf_ip"], b.ip.to_string());
    assert_eq!(by_id["bravo"]["service_ip"], b.ip.to_string());
    assert_eq!(by_id["bravo"]["serf_port"], "7946");
    assert_eq!(by_id["charlie"]["ports"], serde_json::json!({}));

    // Grouped by role, oldest first: alpha started before charlie.
    let by_role = b.json("serfnodes_by_role.json");
    assert_eq!(role_ids(&by_role, "web"), ["alpha", "charlie"]);
    assert_eq!(role_ids(&by_role, "db"), ["bravo"]);
    let ts = |id: &str| {
        by_id[id]["timestamp"]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    assert!(ts("alpha") < ts("charlie"));

    assert_eq!(
        c.json("me.json"),
        serde_json::json!({"id": "charlie", "inspect": null})
    );
    assert_eq!(c.json("children_by_name.json"), serde_json::json!({}));
    let status = a.json("status.json");
    assert_eq!(status["node"], "alpha");
    assert_eq!(status["members"]["alive"], 3);

    // Tag update (member-update) reaches the files of the others.
    let out = std::process::Command::new("serf")
        .args([
            "tags",
            &format!("-rpc-addr={}", c.rpc_addr()),
            "-set",
            "role=cache",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let by_role = a.wait_json("serfnodes_by_role.json", T, |v| {
        role_ids(v, "cache") == ["charlie"]
    });
    assert_eq!(role_ids(&by_role, "web"), ["alpha"]);
    assert_eq!(a.json("members/charlie.json")["tags"]["role"], "cache");

    // Leave: SIGTERM → the node leaves, unmounts and exits 0.
    c.signal(libc::SIGTERM);
    let status = c.wait_exit(T);
    assert!(status.success(), "exit status {status:?}\n{}", c.log());
    assert!(!c.is_mounted(), "mount left behind");
    a.wait_json("members/charlie.json", T, |v| v["status"] == "left");
    let by_id = a.wait_json("serfnodes_by_id.json", T, |v| ids(v) == ["alpha", "bravo"]);
    assert!(by_id.get("charlie").is_none());

    // Failure: a crashed node turns failed on the others.
    let mut b = b;
    b.crash();
    a.wait_json("members/bravo.json", T, |v| v["status"] == "failed");
    a.wait_json("serfnodes_by_id.json", T, |v| ids(v) == ["alpha"]);
    let status = a.json("status.json");
    assert_eq!(status["members"]["failed"], 1);
    assert_eq!(status["members"]["left"], 1);
    let mut listed: Vec<String> = std::fs::read_dir(a.path("members"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    assert_eq!(listed, ["alpha.json", "bravo.json", "charlie.json"]);
}

#[test]
fn sigterm_leaves_unmounts_and_clears_the_hosts_block() {
    let a = Daemon::start(opts("solo-a", "web", None));
    let mut b = Daemon::start(opts("solo-b", "db", Some(&a)));
    b.wait_json("serfnodes_by_id.json", T, |v| ids(v).len() == 2);
    support::wait_for(T, "hosts block on b", || b.hosts_text().contains("\tweb\n"));
    b.signal(libc::SIGTERM);
    assert!(b.wait_exit(T).success(), "{}", b.log());
    assert!(!b.is_mounted());
    // The block's bytes become a padding line (the file never shrinks).
    let hosts = b.hosts_text();
    assert!(
        hosts
            .lines()
            .all(|l| !l.contains("serfnode") || l.trim_end() == serfnode::surface::hosts::PAD),
        "block left behind:\n{hosts}"
    );
    assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"), "{hosts}");
    a.wait_json("members/solo-b.json", T, |v| v["status"] == "left");
}

#[test]
fn a_dead_mount_from_a_crash_is_detached_at_start() {
    let mut a = Daemon::start(opts("phoenix", "web", None));
    a.crash();
    // The crashed daemon's mount is still there, answering ENOTCONN.
    assert!(a.is_mounted());
    let err = std::fs::metadata(a.path("status.json")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");

    a.relaunch();
    a.wait_connected();
    a.wait_json("serfnodes_by_id.json", T, |v| ids(v) == ["phoenix"]);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let here = mounts
        .lines()
        .filter(|l| l.split(' ').nth(4) == a.mount.to_str())
        .count();
    assert_eq!(here, 1, "exactly one live mount:\n{mounts}");
}

#[test]
fn a_second_live_daemon_refuses_the_same_mount() {
    let a = Daemon::start(opts("first", "web", None));
    let mut b = Daemon::spawn(DaemonOpts {
        name: "second".into(),
        mount: Some(a.mount.clone()),
        ..DaemonOpts::default()
    });
    let status = b.wait_exit(T);
    assert!(!status.success());
    assert!(
        b.log().contains(a.mount.to_str().unwrap()),
        "error names the mount:\n{}",
        b.log()
    );
    a.wait_json("status.json", T, |v| v["agent"]["connected"] == true);
}

#[test]
fn poll_wakes_a_waiting_reader_when_its_file_changes() {
    use std::os::unix::io::AsRawFd;
    let a = Daemon::start(opts("waiter", "web", None));
    a.wait_json("serfnodes_by_id.json", T, |v| ids(v) == ["waiter"]);
    let f = std::fs::File::open(a.path("serfnodes_by_id.json")).unwrap();
    let poll = |timeout_ms| {
        let mut fd = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut fd, 1, timeout_ms) };
        assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
        fd.revents
    };
    assert_eq!(poll(0) & libc::POLLPRI, 0, "no change yet");

    let _b = Daemon::start(opts("waker", "db", Some(&a)));
    let revents = poll(T.as_millis() as i32);
    assert_ne!(
        revents & libc::POLLPRI,
        0,
        "woken by the join: {revents:#x}"
    );
    // The open fd still reads its own complete version; a reopen sees the join.
    let old: Value = serde_json::from_reader(&f).unwrap();
    assert_eq!(ids(&old), ["waiter"]);
    assert_eq!(ids(&a.json("serfnodes_by_id.json")), ["waiter", "waker"]);
}

#[test]
fn a_second_signal_exits_at_once_without_leaving_a_mount() {
    let mut a = Daemon::start(opts("hasty", "web", None));
    // A leave that hangs (the agent stopped): the stop would take its 3 s.
    let agent = a.agent_pid().expect("serf runs under serfnode");
    // SAFETY: kill(2) of the daemon's agent, found by pid just now.
    unsafe { libc::kill(agent, libc::SIGSTOP) };
    a.signal(libc::SIGTERM);
    // The same request delivered twice at once (a terminal's Ctrl-C and a
    // script's trap) is not a second signal.
    std::thread::sleep(Duration::from_millis(20));
    a.signal(libc::SIGINT);
    std::thread::sleep(Duration::from_millis(1200));
    a.signal(libc::SIGTERM);
    let status = a.wait_exit(Duration::from_secs(1));
    assert_eq!(status.code(), Some(130), "{status:?}\n{}", a.log());
    assert!(
        a.full_log().contains("SIGINT: already stopping"),
        "{}",
        a.log()
    );
    assert!(!a.is_mounted());
}

#[test]
fn an_rpc_auth_key_guards_the_agent_and_stays_off_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("rpc-auth");
    let a = Daemon::start(DaemonOpts {
        name: "guarded".into(),
        args: vec!["--rpc-auth-file".into(), key_file.to_str().unwrap().into()],
        ..DaemonOpts::default()
    });
    a.wait_json("serfnodes_by_id.json", T, |v| ids(v) == ["guarded"]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert!(key.len() >= 32, "{key:?}");

    let members = |auth: Option<&str>| {
        let mut cmd = std::process::Command::new("serf");
        cmd.args(["members", &format!("-rpc-addr={}", a.rpc_addr())]);
        if let Some(k) = auth {
            cmd.arg(format!("-rpc-auth={k}"));
        }
        cmd.output().unwrap()
    };
    let without = members(None);
    assert!(!without.status.success());
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("uthentication")
            || String::from_utf8_lossy(&without.stdout).contains("uthentication"),
        "{without:?}"
    );
    assert!(members(Some(key.trim())).status.success());

    // The key reaches the agent through its config file, not its argv.
    let serf = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("-node=guarded"))
        })
        .expect("the agent's process");
    let cmdline = std::fs::read(format!("/proc/{serf}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(key.trim()));
}
