//! A child's mount fed by its parent over the replica socket, on the host
//! (the container tests run the same binary inside Docker): the child sees
//! the parent's view, its writes raise events through the parent with the
//! same errnos, it keeps serving the last view (stale) while the parent's
//! daemon is down, and the wrapper returns the application's exit status
//! with CAP_SYS_ADMIN dropped.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::node::{eventually, is_mounted, raw_write, Node, NodeOpts, SERFNODE};

const T: Duration = Duration::from_secs(30);

struct Wrapped {
    mount: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Wrapped {
    fn start(share: &Path, name: &str, extra: &[&str], cmd: &[&str]) -> Wrapped {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("mnt");
        let child = Command::new(SERFNODE)
            .args(["child", "--name", name, "--me-link", "none"])
            .arg("--socket")
            .arg(share.join("replica.sock"))
            .arg("--mount")
            .arg(&mount)
            .args(extra)
            .arg("--")
            .args(cmd)
            .env("SERFNODE_LOG", "info,serfnode=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Wrapped {
            mount,
            child,
            _dir: dir,
        }
    }

    fn json(&self, file: &str) -> Option<Value> {
        serde_json::from_slice(&std::fs::read(self.mount.join(file)).ok()?).ok()
    }

    fn wait_json(&self, file: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + T;
        loop {
            if let Some(v) = self.json(file).filter(|v| pred(v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{file} in the child never matched: {:?}",
                self.json(file)
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn finish(mut self, timeout: Duration) -> (i32, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut out = String::new();
                use std::io::Read;
                self.child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                assert!(!is_mounted(&self.mount), "child mount left behind");
                return (status.code().unwrap_or(-1), out);
            }
            assert!(Instant::now() < deadline, "wrapper did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Wrapped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if is_mounted(&self.mount) {
            support::node::detach(&self.mount);
        }
    }
}

fn parent(name: &str, share: &Path) -> Node {
    Node::start(NodeOpts {
        name: name.into(),
        role: "web".into(),
        args: vec!["--share".into(), share.to_str().unwrap().into()],
        ..NodeOpts::default()
    })
}

#[test]
fn a_child_mirrors_its_parent_and_writes_through_it() {
    let share = tempfile::tempdir().unwrap();
    let p = parent("mother", share.path());
    let other = Node::start(NodeOpts {
        name: "aunt".into(),
        role: "db".into(),
        join: vec![p.bind_addr()],
        ..NodeOpts::default()
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
    eventually(T, "the parent logged the child's event", || {
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
