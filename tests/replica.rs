//! A child's mount fed by its parent over the replica socket, on the host
//! (the container tests run the same binary inside Docker): the child sees
//! the parent's view, its writes raise events through the parent with the
//! same errnos, it keeps serving the last view (stale) while the parent's
//! daemon is down, and the wrapper returns the application's exit status
//! with CAP_SYS_ADMIN dropped and starts it with the forwarded signals at
//! their defaults.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::child::{parent, Wrapped};
use support::node::{raw_write, Daemon, DaemonOpts};
use support::wait_for;

const T: Duration = Duration::from_secs(30);

#[test]
fn a_child_mirrors_its_parent_and_writes_through_it() {
    let share = tempfile::tempdir().unwrap();
    let p = parent("mother", share.path());
    let other = Daemon::start(DaemonOpts {
        name: "aunt".into(),
        role: "db".into(),
        join: vec![p.bind_addr()],
        ..DaemonOpts::default()
    });
    p.wait_json("serfnodes_by_id.json", T, |v| {
        v.as_object().unwrap().len() == 2
    });

    let child = Wrapped::start(share.path(), "kid", &[], &["sleep", "600"]);
    let by_id = child.wait_json("serfnodes_by_id.json", |v| {
        v.as_object().is_some_and(|o| o.len() == 2)
    });
    assert_eq!(by_id, p.json("serfnodes_by_id.json"));
    assert_eq!(
        child.json("serfnodes_by_role.json"),
        Some(p.json("serfnodes_by_role.json"))
    );
    let status = child.json("status.json").unwrap();
    assert_eq!(status["agent"]["connected"], true, "{status}");
    assert_eq!(child.json("me.json").unwrap()["id"], "mother");

    // Changes reach the child: a member leaves.
    let mut other = other;
    other.signal(libc::SIGTERM);
    assert!(other.wait_exit(T).success());
    child.wait_json("members/aunt.json", |v| v["status"] == "left");

    // Writes go through the parent, errnos come back unchanged.
    let node = child.mount.join("parent");
    assert_eq!(raw_write(&node, b"[\"from-kid\",{\"n\":1}]\n"), Ok(21));
    assert_eq!(raw_write(&node, b"[\"bad name\",1]\n"), Err(libc::EINVAL));
    let big = format!("[\"big\",\"{}\"]\n", "x".repeat(600));
    assert_eq!(raw_write(&node, big.as_bytes()), Err(libc::EMSGSIZE));
    let mixed = "[\"ok\",1]\nnot json\n";
    assert_eq!(raw_write(&node, mixed.as_bytes()), Ok(9));
    wait_for(T, "the parent logged the child's event", || {
        p.log().contains("child kid")
    });
}

#[test]
fn a_child_keeps_serving_while_the_parent_daemon_restarts() {
    let share = tempfile::tempdir().unwrap();
    let mut p = parent("phoenix-parent", share.path());
    let child = Wrapped::start(share.path(), "reader", &[], &["sleep", "600"]);
    child.wait_json("status.json", |v| v["agent"]["connected"] == true);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let path = child.mount.join("serfnodes_by_id.json");
    let s = stop.clone();
    let reader = std::thread::spawn(move || {
        let (mut reads, mut failures) = (0, Vec::new());
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            match std::fs::read(&path).map(|b| serde_json::from_slice::<Value>(&b)) {
                Ok(Ok(_)) => reads += 1,
                other => failures.push(format!("{other:?}")),
            }
        }
        (reads, failures)
    });

    p.crash();
    let status = child.wait_json("status.json", |v| v["agent"]["stale"] == true);
    assert!(
        status["agent"]["last_error"]
            .as_str()
            .unwrap()
            .contains("parent serfnode unreachable"),
        "{status}"
    );
    assert_eq!(
        raw_write(&child.mount.join("parent"), b"[\"meanwhile\",1]\n"),
        Err(libc::EAGAIN)
    );
    p.relaunch();
    p.wait_connected();
    child.wait_json("status.json", |v| v["agent"]["connected"] == true);
    assert_eq!(
        raw_write(&child.mount.join("parent"), b"[\"after\",1]\n"),
        Ok(12)
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, failures) = reader.join().unwrap();
    assert!(reads > 100, "{reads} reads");
    assert!(
        failures.is_empty(),
        "{} failed reads: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
}

#[test]
fn the_wrapper_returns_the_exit_status_and_drops_sys_admin() {
    let share = tempfile::tempdir().unwrap();
    let _p = parent("caps", share.path());
    let cap_eff = "grep CapEff /proc/self/status; exit 7";
    let w = Wrapped::start(share.path(), "dropped", &[], &["sh", "-c", cap_eff]);
    let (code, out) = w.finish(T);
    assert_eq!(code, 7, "{out}");
    let eff = u64::from_str_radix(out.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(eff & (1 << 21), 0, "CAP_SYS_ADMIN still effective: {out}");

    let w = Wrapped::start(
        share.path(),
        "kept",
        &["--keep-caps"],
        &["sh", "-c", cap_eff],
    );
    let (code, out) = w.finish(T);
    assert_eq!(code, 7);
    let eff = u64::from_str_radix(out.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_ne!(
        eff & (1 << 21),
        0,
        "privileged child lost CAP_SYS_ADMIN: {out}"
    );

    // A signal to the wrapper reaches the application: 128 + SIGTERM.
    let w = Wrapped::start(share.path(), "stopped", &[], &["sleep", "600"]);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(w.child.id() as i32, libc::SIGTERM) };
    let (code, _) = w.finish(T);
    assert_eq!(code, 128 + libc::SIGTERM);
}

#[test]
fn the_application_starts_with_the_forwarded_signals_at_their_defaults() {
    // Under `nohup` (or any supervisor that ignores signals) an ignored
    // signal stays ignored across exec: an application the wrapper started
    // could neither die of SIGHUP nor trap it. The wrapper catches what it
    // forwards before it starts the application, and exec resets caught
    // signals to their default action.
    let share = tempfile::tempdir().unwrap();
    let _p = parent("nohup", share.path());
    let forwarded = [libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2, libc::SIGWINCH];
    let w = Wrapped::start_ignoring(
        share.path(),
        "ignoring",
        &[],
        &["grep", "^SigIgn", "/proc/self/status"],
        &forwarded,
    );
    let (code, out) = w.finish(T);
    assert_eq!(code, 0, "{out}");
    let ignored = u64::from_str_radix(out.split_whitespace().nth(1).unwrap(), 16).unwrap();
    for sig in forwarded {
        assert_eq!(
            ignored & (1 << (sig - 1)),
            0,
            "signal {sig} reached the application ignored: {out}"
        );
    }
}
