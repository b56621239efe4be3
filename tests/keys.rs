//! Gossip encryption end to end, with real `serfnode agent` daemons and
//! their real `serf agent`s: a shared key lets nodes in and keeps keyless or
//! wrong-keyed ones out; `serfnode keys` rotates the key across a running
//! cluster (and the keyring files keep the rotation for a restart);
//! status.json tells whether gossip is encrypted; and the key shows on no
//! command line.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use serfnode_testkit::keys::random_key;
use support::node::{detach, is_mounted, Daemon, DaemonOpts, SERFNODE};
use support::serf::unique_ip;

const T: Duration = Duration::from_secs(15);

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn arg(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

fn node(name: &str, join: Option<&Daemon>, args: Vec<String>) -> DaemonOpts {
    DaemonOpts {
        name: name.into(),
        join: join.map(|n| vec![n.bind_addr()]).unwrap_or_default(),
        args,
        ..DaemonOpts::default()
    }
}

fn ids(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

/// `serfnode keys ARGS` against the agent at `rpc`, `stdin` fed in.
fn keys(rpc: SocketAddr, auth: Option<&Path>, args: &[&str], stdin: &str) -> Output {
    let mut cmd = Command::new(SERFNODE);
    cmd.arg("keys")
        .args(args)
        .arg(format!("--rpc-addr={rpc}"))
        .env_remove("RPC_PORT")
        .env_remove("SERFNODE_RPC_AUTH_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(file) = auth {
        cmd.arg("--rpc-auth-file").arg(file);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// [`keys`] again (at most 4 times) until `done` holds. On a starved test
/// host a member may answer a keyring query after its deadline (1.6 s with
/// the local profile), which the command rightly reports as a failure
/// ("2/3 nodes reported success"); every keyring command is idempotent.
fn keys_until(
    rpc: SocketAddr,
    auth: Option<&Path>,
    args: &[&str],
    stdin: &str,
    done: impl Fn(&Output) -> bool,
) -> Output {
    let mut out = keys(rpc, auth, args, stdin);
    for _ in 0..3 {
        if done(&out) {
            break;
        }
        eprintln!("keys {args:?} again after {out:?}");
        out = keys(rpc, auth, args, stdin);
    }
    out
}

fn ok(out: &Output) -> bool {
    out.status.success()
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// `keys list`: key → "n/total".
fn list(rpc: SocketAddr, auth: Option<&Path>) -> Vec<(String, String)> {
    let out = keys_until(rpc, auth, &["list"], "", ok);
    assert!(out.status.success(), "keys list: {out:?}");
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(
        lines
            .next()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["KEY", "NODES"]),
        "{stdout}"
    );
    let mut rows: Vec<(String, String)> = lines
        .map(|l| {
            let mut cols = l.split_whitespace();
            (
                cols.next().unwrap().to_owned(),
                cols.next().unwrap().to_owned(),
            )
        })
        .collect();
    rows.sort();
    rows
}

fn rows(keys: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut rows: Vec<_> = keys
        .iter()
        .map(|(k, n)| (k.to_string(), n.to_string()))
        .collect();
    rows.sort();
    rows
}

fn proc_file(pid: i32, file: &str) -> String {
    text(&std::fs::read(format!("/proc/{pid}/{file}")).unwrap()).replace('\0', " ")
}

/// A daemon given its key in SERF_ENCRYPT_KEY (DaemonOpts has no environment):
/// killed, reaped and unmounted on drop.
struct EnvNode {
    child: std::process::Child,
    mount: PathBuf,
    log: PathBuf,
    ip: std::net::IpAddr,
    _dir: tempfile::TempDir,
}

impl EnvNode {
    fn start(name: &str, key: &str) -> EnvNode {
        let dir = tempfile::tempdir().unwrap();
        let ip = unique_ip();
        let mount = dir.path().join("mnt");
        let log = dir.path().join("serfnode.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(SERFNODE)
            .args(["agent", "--node", name, "--profile", "local"])
            .arg(format!("--bind={ip}:7946"))
            .arg(format!("--rpc-addr={ip}:7373"))
            .args(["--hosts-file", "none", "--mount"])
            .arg(&mount)
            .env("SERF_ENCRYPT_KEY", key)
            .env("SERFNODE_LOG", "info")
            .env_remove("SERF_ENCRYPT_KEY_FILE")
            .env_remove("SERF_KEYRING_FILE")
            .env_remove("PEER")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let node = EnvNode {
            child,
            mount,
            log,
            ip,
            _dir: dir,
        };
        let connected = support::poll_for(T, || {
            std::fs::read(node.mount.join("status.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|s| s["agent"]["connected"] == true)
        })
        .is_ok();
        assert!(connected, "never connected:\n{}", node.log());
        node
    }

    fn status(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.mount.join("status.json")).unwrap()).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for EnvNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if is_mounted(&self.mount) {
            detach(&self.mount);
        }
        if std::thread::panicking() {
            eprintln!("--- env node log ---\n{}", self.log());
        }
    }
}

#[test]
fn a_shared_key_lets_nodes_in_and_keeps_others_out() {
    let dir = tempfile::tempdir().unwrap();
    let key = write(dir.path(), "key", &format!("{}\n", random_key(32)));
    let wrong = write(dir.path(), "wrong", &random_key(32));
    let with = |file: &Path| vec!["--encrypt-key-file".into(), arg(file)];

    let a = Daemon::start(node("alpha", None, with(&key)));
    let b = Daemon::start(node("bravo", Some(&a), with(&key)));
    for n in [&a, &b] {
        n.wait_json("serfnodes_by_id.json", T, |v| ids(v) == ["alpha", "bravo"]);
    }

    // Keyless and wrong-keyed nodes keep trying to join, and never get in.
    let keyless = Daemon::start(node("keyless", Some(&a), vec![]));
    let wrong = Daemon::start(node("wrong", Some(&a), with(&wrong)));
    std::thread::sleep(Duration::from_secs(3));
    for (n, why) in [
        (&keyless, "encryption is not configured"),
        (&wrong, "No installed keys could decrypt"),
    ] {
        assert_eq!(
            ids(&n.json("serfnodes_by_id.json")),
            [n.name.as_str()],
            "{}",
            n.log()
        );
        assert!(n.log().contains(why), "{}", n.log());
    }
    assert_eq!(keyless.json("status.json")["encrypted"], false);
    for n in [&a, &b] {
        assert_eq!(ids(&n.json("serfnodes_by_id.json")), ["alpha", "bravo"]);
        assert_eq!(n.json("status.json")["total"], 2, "{}", n.log());
        assert_eq!(n.json("status.json")["encrypted"], true);
    }
}

#[test]
fn keys_rotate_across_the_cluster_and_the_keyring_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let old = random_key(32);
    let new = random_key(16);
    let old_file = write(dir.path(), "old", &old);
    let auth = write(dir.path(), "rpc-auth", "rotation-secret");
    let ring = |name: &str| dir.path().join(format!("{name}.keyring"));
    let args = |name: &str| {
        vec![
            "--encrypt-key-file".into(),
            arg(&old_file),
            "--keyring-file".into(),
            arg(&ring(name)),
        ]
    };
    let mut a_args = args("alpha");
    a_args.extend(["--rpc-auth-file".into(), arg(&auth)]);
    let a = Daemon::start(node("alpha", None, a_args));
    let b = Daemon::start(node("bravo", Some(&a), args("bravo")));
    let c = Daemon::start(node("charlie", Some(&a), args("charlie")));
    let whole = |nodes: &[&Daemon]| {
        for n in nodes {
            n.wait_json("serfnodes_by_id.json", T, |v| {
                ids(v) == ["alpha", "bravo", "charlie"]
            });
        }
    };
    whole(&[&a, &b, &c]);
    // The keyrings were made from the key, owner-only.
    let keyring = |name: &str| -> Vec<String> {
        serde_json::from_slice(&std::fs::read(ring(name)).unwrap()).unwrap()
    };
    assert_eq!(keyring("bravo"), [old.as_str()]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ring("bravo"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // With an RPC key file, the agent config file lies beside it, 0600.
    let config = dir.path().join("rpc-auth.json");
    let mode = std::fs::metadata(&config).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let config: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert_eq!(config["rpc_auth"], "rotation-secret");
    assert_eq!(config["keyring_file"], arg(&ring("alpha")));
    assert!(config.get("encrypt_key").is_none(), "{config}");

    let rpc = a.rpc_addr();
    let auth = Some(auth.as_path());
    // Without the RPC key the agent refuses.
    let refused = keys(
        rpc,
        Some(&write(dir.path(), "bad-auth", "nope")),
        &["list"],
        "",
    );
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        text(&refused.stderr).contains("nvalid authentication"),
        "{refused:?}"
    );

    assert_eq!(list(rpc, auth), rows(&[(&old, "3/3")]));

    // 1. Install the new key everywhere (read from stdin).
    let out = keys_until(rpc, auth, &["install", "-"], &format!("{new}\n"), ok);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "key installed on 3/3 nodes\n");
    assert_eq!(list(rpc, auth), rows(&[(&old, "3/3"), (&new, "3/3")]));

    // 2. Encrypt with it.
    let out = keys_until(rpc, auth, &["use", "-"], &new, ok);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "key now the primary key of 3/3 nodes\n");
    assert_eq!(list(rpc, auth), rows(&[(&old, "3/3"), (&new, "3/3")]));
    // The primary one cannot be removed: every node says so, exit non-zero.
    let out = keys_until(rpc, auth, &["remove", "-"], &new, |out| {
        text(&out.stderr).contains("3/3 nodes reported failure")
    });
    assert!(!out.status.success(), "{out:?}");
    let stderr = text(&out.stderr);
    for name in ["alpha", "bravo", "charlie"] {
        assert!(
            stderr.contains(&format!("{name}: Removing the primary key is not allowed")),
            "{stderr}"
        );
    }
    assert!(stderr.contains("3/3 nodes reported failure"), "{stderr}");

    // 3. Drop the old one.
    let out = keys_until(rpc, auth, &["remove", &old], "", ok);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(list(rpc, auth), rows(&[(&new, "3/3")]));
    whole(&[&a, &b, &c]);
    for name in ["alpha", "bravo", "charlie"] {
        assert_eq!(keyring(name), [new.as_str()], "{name}'s keyring file");
    }

    // A node restarted with its keyring alone (only the new key) rejoins;
    // one with the old key alone stays out.
    let ip = c.ip;
    drop(c);
    a.wait_json("serfnodes_by_id.json", T, |v| ids(v) == ["alpha", "bravo"]);
    let c = Daemon::start(DaemonOpts {
        ip: Some(ip),
        ..node(
            "charlie",
            Some(&a),
            vec!["--keyring-file".into(), arg(&ring("charlie"))],
        )
    });
    whole(&[&a, &b, &c]);
    assert_eq!(c.json("status.json")["encrypted"], true);
    let stale = Daemon::start(node(
        "stale",
        Some(&b),
        vec!["--encrypt-key-file".into(), arg(&old_file)],
    ));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ids(&stale.json("serfnodes_by_id.json")), ["stale"]);
    assert_eq!(a.json("status.json")["total"], 3);
}

#[test]
fn status_tells_whether_gossip_is_encrypted_and_a_keyless_start_warns() {
    let plain = Daemon::start(node("plain", None, vec![]));
    assert_eq!(plain.json("status.json")["encrypted"], false);
    let log = plain.log();
    assert!(
        log.contains("WARN") && log.contains("gossip is not encrypted"),
        "{log}"
    );
    assert!(log.contains("--encrypt-key-file"), "{log}");
    // Its agent has no keyring: `keys list` shows why, and fails.
    let out = keys(plain.rpc_addr(), None, &["list"], "");
    assert!(!out.status.success(), "{out:?}");
    assert!(
        text(&out.stderr).contains("plain: Keyring is empty (encryption not enabled)"),
        "{out:?}"
    );

    let key = random_key(24);
    let sealed = EnvNode::start("sealed", &key);
    assert_eq!(sealed.status()["encrypted"], true);
    assert!(!sealed.log().contains("not encrypted"), "{}", sealed.log());
    let rpc = SocketAddr::new(sealed.ip, 7373);
    assert_eq!(list(rpc, None), rows(&[(&key, "1/1")]));

    // A bad key stops the start, naming where it came from.
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad", "c2hvcnQ=");
    let out = Command::new(SERFNODE)
        .args(["agent", "--node", "bad", "--hosts-file", "none", "--mount"])
        .arg(dir.path().join("mnt"))
        .arg("--encrypt-key-file")
        .arg(&bad)
        .env_remove("SERF_ENCRYPT_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "encryption key file {}: the key is 5 bytes; it must be 16, 24 or 32",
            bad.display()
        )),
        "{stderr}"
    );
}

#[test]
fn the_key_shows_on_no_command_line() {
    let key = random_key(32);
    let sealed = EnvNode::start("env-keyed", &key);
    let dir = tempfile::tempdir().unwrap();
    let file_key = random_key(32);
    let key_file = write(dir.path(), "key", &file_key);
    let filed = Daemon::start(node(
        "file-keyed",
        None,
        vec!["--encrypt-key-file".into(), arg(&key_file)],
    ));

    for (daemon, key) in [(sealed.child.id() as i32, &key), (filed.pid(), &file_key)] {
        let serf = support::node::agent_pid(daemon);
        let daemon_cmdline = proc_file(daemon, "cmdline");
        let serf_cmdline = proc_file(serf, "cmdline");
        assert!(!daemon_cmdline.contains(key.as_str()), "{daemon_cmdline}");
        assert!(!serf_cmdline.contains(key.as_str()), "{serf_cmdline}");
        assert!(!serf_cmdline.contains("-encrypt"), "{serf_cmdline}");
        // Nor does the agent inherit it through its environment.
        assert!(!proc_file(serf, "environ").contains(key.as_str()));
        // It gets it in its config file, held in memory: nothing on disk.
        let config = serf_cmdline
            .split(' ')
            .find_map(|a| a.strip_prefix("-config-file=/proc/self/fd/"))
            .expect("an in-memory config file");
        let fd = format!("/proc/{serf}/fd/{config}");
        let target = std::fs::read_link(&fd).unwrap();
        assert!(
            target
                .to_string_lossy()
                .starts_with("/memfd:serf-agent-config"),
            "{target:?}"
        );
        let json: Value = serde_json::from_slice(&std::fs::read(&fd).unwrap()).unwrap();
        assert_eq!(json["encrypt_key"], key.as_str());
    }
}
