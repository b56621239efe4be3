//! Events that do work, end to end on real agents: handlers by name in every
//! member (user events, member events, queries), the handler timeout, the
//! query files and built-in queries, the journal, and the operator commands.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::node::{raw_write, Daemon, DaemonOpts, SERFNODE};
use support::stream::rpc;
use support::wait_for;

const T: Duration = Duration::from_secs(30);

/// A handlers directory whose scripts record what they got under `out`.
struct Handlers {
    dir: tempfile::TempDir,
    out: PathBuf,
}

impl Handlers {
    fn new() -> Handlers {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::create_dir(dir.path().join("handlers")).unwrap();
        Handlers { dir, out }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("handlers")
    }

    /// Installs `name` as a bash script; `$OUT` is the output directory.
    fn add(&self, name: &str, body: &str) {
        let path = self.path().join(name);
        let script = format!("#!/bin/bash\nOUT={}\n{body}\n", self.out.display());
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn out(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.out.join(file)).ok()
    }

    fn wait(&self, file: &str) -> String {
        let mut got = None;
        wait_for(T, &format!("handler output {file}"), || {
            got = self.out(file);
            got.is_some()
        });
        got.unwrap()
    }
}

/// A handler that records its stdin and SERF* environment, named per node.
const RECORD: &str = r#"cat > "$OUT/.$SERF_SELF_NAME.$$"
env | grep -E '^SERF' | sort > "$OUT/.$SERF_SELF_NAME.$$.env"
mv "$OUT/.$SERF_SELF_NAME.$$.env" "$OUT/$(basename "$0").$SERF_SELF_NAME.env"
mv "$OUT/.$SERF_SELF_NAME.$$" "$OUT/$(basename "$0").$SERF_SELF_NAME""#;

fn node(
    name: &str,
    role: &str,
    join: Option<&Daemon>,
    handlers: &Handlers,
    extra: &[&str],
) -> Daemon {
    let mut args = vec![format!("--handlers={}", handlers.path().display())];
    args.extend(extra.iter().map(|s| s.to_string()));
    Daemon::start(DaemonOpts {
        name: name.into(),
        role: role.into(),
        join: join.map(|n| vec![n.bind_addr()]).unwrap_or_default(),
        args,
        ..DaemonOpts::default()
    })
}

fn env_of(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn wait_members(nodes: &[&Daemon], n: usize) {
    for node in nodes {
        node.wait_json("serfnodes_by_id.json", T, |v| {
            v.as_object().is_some_and(|m| m.len() == n)
        });
    }
}

fn serfnode(args: &[&str]) -> (bool, String, String) {
    support::node::operator(args, b"")
}

#[test]
fn handlers_run_in_every_member_with_payload_and_environment() {
    let hs: Vec<Handlers> = (0..3).map(|_| Handlers::new()).collect();
    for h in &hs {
        h.add("deploy", RECORD);
        for ev in [
            "member-join",
            "member-leave",
            "member-failed",
            "member-update",
        ] {
            h.add(ev, RECORD);
        }
    }
    let a = node("ha", "web", None, &hs[0], &[]);
    let b = node("hb", "db", Some(&a), &hs[1], &[]);
    let c = node("hc", "web", Some(&a), &hs[2], &[]);
    wait_members(&[&a, &b, &c], 3);

    // A user event written on ha runs `deploy` on all three.
    let line = b"[\"deploy\",{\"version\":7}]\n";
    assert_eq!(raw_write(&a.path("parent"), line), Ok(line.len()));
    for (h, n) in hs.iter().zip([&a, &b, &c]) {
        let stdin = h.wait(&format!("deploy.{}", n.name));
        assert_eq!(
            serde_json::from_str::<Value>(&stdin).unwrap(),
            json!({"version": 7}),
            "stdin on {}",
            n.name
        );
        let env = env_of(&h.wait(&format!("deploy.{}.env", n.name)));
        assert_eq!(env["SERF_EVENT"], "user");
        assert_eq!(env["SERF_USER_EVENT"], "deploy");
        assert!(env["SERF_USER_LTIME"].parse::<u64>().is_ok(), "{env:?}");
        assert_eq!(env["SERF_SELF_NAME"], n.name);
        assert_eq!(env["SERF_TAG_ROLE"], env["SERF_SELF_ROLE"]);
        assert_eq!(env["SERFNODE_FROM_NODE"], "ha", "{env:?}");
        assert!(!env.contains_key("SERFNODE_FROM_CHILD"));
    }
    assert_eq!(env_of(&hs[1].wait("deploy.hb.env"))["SERF_SELF_ROLE"], "db");

    // Member events: a join, a tag update, a leave and a failure, each with
    // the members concerned on stdin.
    let hd = Handlers::new();
    let mut d = node("hd", "cache", Some(&a), &hd, &[]);
    wait_members(&[&a, &b, &c, &d], 4);
    wait_for(T, "member-join of hd on ha", || {
        hs[0]
            .out("member-join.ha")
            .is_some_and(|s| s.contains("\"hd\""))
    });
    let joined: Value = serde_json::from_str(&hs[0].out("member-join.ha").unwrap()).unwrap();
    assert!(joined.as_array().unwrap().iter().any(|m| m["id"] == "hd"));
    assert_eq!(
        env_of(&hs[0].wait("member-join.ha.env"))["SERF_EVENT"],
        "member-join"
    );

    rpc(d.rpc_addr(), async |c| {
        c.tags(&[("extra".to_string(), "1".to_string())].into(), &[])
            .await
            .unwrap()
    });
    wait_for(T, "member-update of hd on hb", || {
        hs[1]
            .out("member-update.hb")
            .is_some_and(|s| s.contains("\"extra\":\"1\""))
    });

    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(T).success());
    wait_for(T, "member-leave of hd on hc", || {
        hs[2]
            .out("member-leave.hc")
            .is_some_and(|s| s.contains("\"hd\""))
    });

    let mut e = node("he", "cache", Some(&a), &Handlers::new(), &[]);
    wait_members(&[&a], 4);
    e.crash();
    wait_for(T, "member-failed of he on ha", || {
        hs[0]
            .out("member-failed.ha")
            .is_some_and(|s| s.contains("\"he\""))
    });
}

#[test]
fn a_stuck_handler_is_killed_at_its_timeout_while_events_keep_flowing() {
    let h = Handlers::new();
    h.add("stuck", r#"sleep 1000 & echo $! > "$OUT/stuck.pid"; wait"#);
    h.add("quick", r#"cat > "$OUT/quick.$(cat)""#);
    let a = node(
        "stuck-a",
        "web",
        None,
        &h,
        &["--handler-timeout=3", "--handler-concurrency=2"],
    );
    let node = a.path("parent");
    assert!(raw_write(&node, b"[\"stuck\",1]\n").is_ok());
    let pid: i32 = h.wait("stuck.pid").trim().parse().unwrap();
    // While it hangs, other events run their handlers and the view moves.
    for i in 0..5 {
        let line = format!("[\"quick\",{i}]\n");
        assert!(raw_write(&node, line.as_bytes()).is_ok());
    }
    let b = Daemon::start(DaemonOpts {
        name: "stuck-b".into(),
        join: vec![a.bind_addr()],
        ..DaemonOpts::default()
    });
    for i in 0..5 {
        h.wait(&format!("quick.{i}"));
    }
    assert!(
        std::process::Command::new("kill")
            .args(["-0", &pid.to_string()])
            .status()
            .unwrap()
            .success(),
        "the stuck handler's sleep ended before its timeout"
    );
    a.wait_json("serfnodes_by_id.json", T, |v| v.get("stuck-b").is_some());
    // At the timeout its whole process group is killed, and logged.
    wait_for(T, "the stuck handler's sleep is killed", || {
        // SAFETY: kill with signal 0 only checks that the process exists.
        unsafe { libc::kill(pid, 0) != 0 }
    });
    wait_for(T, "the kill is logged", || {
        let log = a.log();
        log.contains("stuck") && log.contains("killed")
    });
    drop(b);
}

/// A query read until it is complete, at most three times: a query travels
/// by gossip, best effort, and on a loaded machine a member can miss one
/// (the answer then says who is `missing`, and asking again is what a user
/// does). Who answers is never retried away: any answer with a member too
/// many fails the caller's checks.
fn ask(node: &Daemon, file: &str) -> Value {
    let mut answer = node.json(file);
    for _ in 0..2 {
        if answer["complete"] == true {
            break;
        }
        eprintln!(
            "{file} on {}: incomplete, asking again: {answer}",
            node.name
        );
        answer = node.json(file);
    }
    answer
}

#[test]
fn queries_reach_every_member_and_builtins_answer() {
    let hs: Vec<Handlers> = (0..3).map(|_| Handlers::new()).collect();
    for h in &hs {
        h.add(
            "echo-q",
            r#"echo "{\"node\":\"$SERF_SELF_NAME\",\"got\":$(cat)}""#,
        );
        h.add("big", r#"head -c 5000 /dev/zero | tr '\0' 'x'"#);
    }
    let a = node("qa", "web", None, &hs[0], &[]);
    let b = node("qb", "db", Some(&a), &hs[1], &[]);
    let c = node("qc", "web", Some(&a), &hs[2], &[]);
    wait_members(&[&a, &b, &c], 3);

    // where/<role>: every member of that role answers with its node info.
    let by_id = a.json("serfnodes_by_id.json");
    let answers = ask(&b, "query/where/web");
    assert_eq!(answers["complete"], true, "{answers}");
    assert_eq!(answers["missing"], json!([]));
    assert_eq!(answers["responses"]["qa"], by_id["qa"]);
    assert_eq!(answers["responses"]["qc"], by_id["qc"]);
    assert_eq!(answers["responses"].as_object().unwrap().len(), 2);
    let ports = ask(&a, "query/ports/db");
    assert_eq!(ports["responses"], json!({"qb": {}}));

    // A query with handlers: each member's stdout is its answer.
    let answers = ask(&a, r#"query/echo-q/{"x":1}"#);
    assert_eq!(answers["complete"], true, "{answers}");
    for n in ["qa", "qb", "qc"] {
        assert_eq!(answers["responses"][n], json!({"node": n, "got": {"x": 1}}));
    }
    // Filters: one node, or one role.
    let one = ask(&a, "query/echo-q/null;node=qb");
    assert_eq!(one["responses"].as_object().unwrap().len(), 1, "{one}");
    assert_eq!(one["responses"]["qb"]["got"], Value::Null);
    let dbs = ask(&c, "query/echo-q/2;role=db");
    assert_eq!(
        dbs["responses"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["qb"]
    );

    // Past Serf's response limit the answer is cut, with a marker.
    let big = a.json("query/big/null;node=qa;timeout=3");
    let text = big["responses"]["qa"].as_str().unwrap();
    assert!(
        text.len() <= 1024 && text.contains("truncated"),
        "{}",
        text.len()
    );

    // Nobody answers a query nobody handles: incomplete at the timeout.
    let none = a.json("query/nobody/null;timeout=0.5");
    assert_eq!(none["complete"], false);
    assert_eq!(none["missing"], json!(["qa", "qb", "qc"]));
    // Bad names and options are ENOENT; the reader never waits long.
    for bad in [
        "query/..%2Fx/1",
        "query/echo-q/1;bogus=1",
        "query/echo-q/1;timeout=x",
    ] {
        let err = a.read(bad).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{bad}");
    }

    // The operator command reads the same file.
    let mount = a.mount.display().to_string();
    let (ok, out, err) = serfnode(&["query", "where", "db", "--mount", &mount]);
    assert!(ok, "{err}");
    let printed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(printed["responses"]["qb"], by_id["qb"]);
    let (ok, out, err) = serfnode(&[
        "query",
        "echo-q",
        r#"{"p":"a/b;c"}"#,
        "--node",
        "qc",
        "--timeout",
        "3",
        "--mount",
        &mount,
    ]);
    assert!(ok, "{err}");
    let printed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(printed["responses"]["qc"]["got"], json!({"p": "a/b;c"}));
}

fn lines(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn journal_readers_see_events_in_order_resume_and_see_gaps() {
    let h = Handlers::new();
    let a = node("ja", "web", None, &h, &["--journal-size=5"]);
    let node = a.path("parent");
    let mount = a.mount.display().to_string();

    // `serfnode watch` from the start follows everything that comes (and
    // dies with this test's thread, should the test fail).
    let mut cmd = Command::new(SERFNODE);
    cmd.args(["watch", "--mount", &mount, "--from", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    serfnode_testkit::process::set_death_signal_and_nice(&mut cmd, Some(libc::SIGKILL), None);
    let mut watch = cmd.spawn().unwrap();
    let mut watch_out = watch.stdout.take().unwrap();
    // Every line the watcher prints, until the last event. A watcher the
    // ring (5 lines) outruns is told so by a gap line: checked below. The
    // reading thread ends when the watcher is killed, so a watcher that
    // never prints the last event fails the test at `T` instead of hanging.
    let (lines_tx, watched) = std::sync::mpsc::channel::<Value>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(&mut watch_out).lines() {
            let Ok(line) = line else { break };
            let v: Value = serde_json::from_str(&line).unwrap();
            let last = v["name"] == "j" && v["payload"] == 11;
            if lines_tx.send(v).is_err() || last {
                break;
            }
        }
    });

    // The watcher is following once it printed an event raised after it
    // started: from there on it reads `events_since/<its last>`, and
    // anything the ring drops before it reads is a gap line. (Before its
    // first read, `--from 0` is "whatever the ring holds": a watcher that a
    // loaded machine starts late would begin further on, with no marker.)
    assert!(raw_write(&node, b"[\"ready\",0]\n").is_ok());
    let mut seen = Vec::new();
    while !seen.iter().any(|v: &Value| v["name"] == "ready") {
        match watched.recv_timeout(T) {
            Ok(v) => seen.push(v),
            Err(_) => panic!("the watcher printed no `ready` within {T:?}: {seen:?}"),
        }
    }
    let ready = seen.last().unwrap()["seq"].as_u64().unwrap();

    for i in 0..3 {
        assert!(raw_write(&node, format!("[\"j\",{i}]\n").as_bytes()).is_ok());
    }
    let mut first = Vec::new();
    wait_for(T, "three events journaled", || {
        first = lines(&a.read("events").unwrap());
        first.iter().filter(|e| e["name"] == "j").count() == 3
    });
    let users: Vec<&Value> = first.iter().filter(|e| e["name"] == "j").collect();
    for (i, e) in users.iter().enumerate() {
        assert_eq!(e["name"], "j");
        assert_eq!(e["payload"], i);
        assert_eq!(e["from"]["node"], "ja");
        assert!(e["ltime"].is_u64() && e["time"].is_f64(), "{e}");
    }
    let seqs: Vec<u64> = first.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let s0 = users[0]["seq"].as_u64().unwrap();

    // Resume from a sequence: only what came after.
    let after = lines(&a.read(&format!("events_since/{s0}")).unwrap());
    let payloads: Vec<&Value> = after.iter().map(|e| &e["payload"]).collect();
    assert_eq!(payloads, [&json!(1), &json!(2)]);
    assert_eq!(after[0]["seq"], s0 + 1);
    let head = *seqs.last().unwrap();
    assert!(a.read(&format!("events_since/{head}")).unwrap().is_empty());

    // Past the ring's size a slow reader is told what it lost.
    for i in 3..12 {
        assert!(raw_write(&node, format!("[\"j\",{i}]\n").as_bytes()).is_ok());
    }
    let mut resumed = Vec::new();
    wait_for(T, "the ring moved on", || {
        resumed = lines(&a.read(&format!("events_since/{s0}")).unwrap());
        resumed.last().is_some_and(|e| e["payload"] == 11)
    });
    assert_eq!(resumed[0]["type"], "gap", "{resumed:?}");
    assert_eq!(resumed[0]["first_lost"], s0 + 1);
    assert_eq!(resumed.len(), 6, "a gap line and the 5 kept: {resumed:?}");
    assert_eq!(
        resumed[0]["seq"].as_u64().unwrap() + 1,
        resumed[1]["seq"].as_u64().unwrap()
    );
    assert_eq!(lines(&a.read("events").unwrap()).len(), 5);

    // The watcher, started before, saw every event in order, or was told
    // by a gap line exactly which it missed (the ring holds 5, so a watcher
    // slowed down by a loaded machine can fall behind: never silently).
    let deadline = std::time::Instant::now() + T;
    while seen.last().map(|v: &Value| v["payload"].clone()) != Some(json!(11)) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match watched.recv_timeout(left) {
            Ok(v) => seen.push(v),
            Err(_) => break,
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    reader.join().unwrap();
    assert_eq!(
        seen.last().map(|v| v["payload"].clone()),
        Some(json!(11)),
        "the watcher printed event 11 within {T:?}: {seen:?}"
    );
    let mut accounted = std::collections::BTreeSet::new();
    let mut payloads = Vec::new();
    let mut last_seq = 0;
    let seen: Vec<Value> = seen
        .into_iter()
        .filter(|v| v["seq"].as_u64() >= Some(ready))
        .collect();
    for v in &seen {
        let seq = v["seq"].as_u64().unwrap();
        assert!(seq > last_seq, "out of order: {seen:?}");
        match v["type"].as_str() {
            Some("user") if v["name"] == "j" => {
                payloads.push(v["payload"].as_u64().unwrap());
                accounted.insert(seq);
            }
            Some("gap") => {
                // `null`: the start is unknown, so everything before.
                let first = v["first_lost"].as_u64().unwrap_or(0);
                accounted.extend(first..=seq);
            }
            _ => {
                accounted.insert(seq);
            }
        }
        last_seq = seq;
    }
    assert!(payloads.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    // Every sequence number from `ready` on is an event the watcher printed
    // or one a gap line names.
    assert!(
        (ready..=last_seq).all(|n| accounted.contains(&n)),
        "a number neither printed nor in a gap: {seen:?}"
    );
    if seen.iter().all(|v| v["type"] != "gap") {
        assert_eq!(payloads, (0..12).collect::<Vec<u64>>());
    }
}

#[test]
fn hostile_event_names_run_nothing() {
    let h = Handlers::new();
    h.add(".hidden", r#"touch "$OUT/hidden-ran""#);
    // A script outside the handlers directory, reachable by a crafted name.
    let outside = h.dir.path().join("evil");
    std::fs::write(
        &outside,
        format!("#!/bin/sh\ntouch {}/evil-ran\n", h.out.display()),
    )
    .unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
    h.add("ok", r#"touch "$OUT/ok-ran""#);
    let a = node("hostile", "web", None, &h, &[]);
    // The write node refuses such names outright...
    for name in ["../evil", ".hidden", "a/b", ""] {
        let line = format!("[{},1]\n", json!(name));
        assert_eq!(
            raw_write(&a.path("parent"), line.as_bytes()),
            Err(libc::EINVAL),
            "{name}"
        );
    }
    // ...and events raised around it (any agent can) run nothing either.
    rpc(a.rpc_addr(), async |c| {
        for name in ["../evil", ".hidden", "handlers/../../evil"] {
            c.event(name, b"1", false).await.unwrap();
        }
        c.event("ok", b"1", false).await.unwrap();
    });
    h.wait("ok-ran");
    wait_for(T, "the hostile events are journaled as data", || {
        let journal = String::from_utf8_lossy(&a.read("events").unwrap()).into_owned();
        journal.contains("\"../evil\"") && journal.contains("\"ok\"")
    });
    assert!(h.out("hidden-ran").is_none());
    assert!(h.out("evil-ran").is_none());
}

#[test]
fn operator_commands_talk_to_the_local_daemon() {
    let h = Handlers::new();
    let a = node("opa", "web", None, &h, &[]);
    let b = node("opb", "db", Some(&a), &Handlers::new(), &[]);
    wait_members(&[&a, &b], 2);
    let mount = a.mount.display().to_string();

    let (ok, out, err) = serfnode(&["members", "--mount", &mount]);
    assert!(ok, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert!(rows[0].starts_with("NAME"), "{out}");
    assert!(rows[1].starts_with("opa ") && rows[1].contains("alive") && rows[1].contains("web"));
    assert!(
        rows[2].starts_with("opb ") && rows[2].contains("db"),
        "{out}"
    );
    let (ok, out, _) = serfnode(&["members", "--json", "--mount", &mount]);
    assert!(ok);
    let members: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(members[1]["id"], "opb");
    assert_eq!(members[1]["status"], "alive");

    h.add("poke", r#"cat > "$OUT/.poke"; mv "$OUT/.poke" "$OUT/poke""#);
    let (ok, _, err) = serfnode(&["event", "poke", r#"{"n":1}"#, "--mount", &mount]);
    assert!(ok, "{err}");
    assert_eq!(h.wait("poke"), r#"{"n":1}"#);
    let (ok, _, err) = serfnode(&["event", "bad/name", "1", "--mount", &mount]);
    assert!(!ok && err.contains("Invalid argument"), "{err}");

    let (ok, out, err) = serfnode(&["status", "--mount", &mount]);
    assert!(ok, "{err}");
    assert!(
        out.contains("node        opa") && out.contains("agent       connected"),
        "{out}"
    );
    assert!(out.contains("2 alive"), "{out}");
    let (ok, out, _) = serfnode(&["status", "--json", "--mount", &mount]);
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["node"], "opa");

    let missing = Path::new("/nonexistent-serfnode-mount");
    let (ok, _, err) = serfnode(&["status", "--mount", &missing.display().to_string()]);
    assert!(
        !ok && err.contains("/nonexistent-serfnode-mount/status.json"),
        "{err}"
    );
}

#[test]
fn builtin_queries_take_the_role_either_way_and_same_named_handlers_never_run() {
    // Handlers named after the built-in queries, in every member: they
    // must never run, not even while a daemon starts.
    let hs: Vec<Handlers> = (0..2).map(|_| Handlers::new()).collect();
    for h in &hs {
        for name in ["where", "ports"] {
            h.add(name, &format!(r#"touch "$OUT/{name}-ran"; echo handler"#));
        }
    }
    let db = node("bq-db", "db", None, &hs[0], &[]);
    // Someone asks where the web members are, over and over, while the
    // web member's daemon starts and joins.
    let asking = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let asker = {
        let (path, asking) = (db.path("query/where/web;timeout=0.2"), asking.clone());
        std::thread::spawn(move || {
            while asking.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::read(&path);
            }
        })
    };
    let web = node("bq-web", "web", Some(&db), &hs[1], &[]);
    wait_members(&[&db, &web], 2);
    std::thread::sleep(Duration::from_secs(1));
    asking.store(false, std::sync::atomic::Ordering::Relaxed);
    asker.join().unwrap();

    let by_id = db.json("serfnodes_by_id.json");
    let mount = db.mount.display().to_string();
    let ask = |args: &[&str]| -> Value {
        let mut all = vec!["query"];
        all.extend(args);
        all.extend(["--mount", &mount]);
        let (ok, out, err) = serfnode(&all);
        assert!(ok, "serfnode {}: {err}", all.join(" "));
        serde_json::from_str(&out).unwrap()
    };
    // The role as the argument, as --role, or both: the same question.
    for args in [
        &["where", "web"][..],
        &["where", "--role", "web"],
        &["where", "web", "--role", "web"],
    ] {
        let answers = ask(args);
        assert_eq!(answers["complete"], true, "{args:?}: {answers}");
        assert_eq!(
            answers["responses"],
            json!({"bq-web": by_id["bq-web"]}),
            "{args:?}"
        );
    }
    assert_eq!(
        ask(&["ports", "--role", "db"])["responses"],
        json!({"bq-db": {}})
    );
    // No role at all: every member says where it is.
    let everyone = ask(&["where"]);
    assert_eq!(everyone["complete"], true, "{everyone}");
    assert_eq!(everyone["responses"], by_id);
    // Two roles that differ are refused, naming both.
    let (ok, _, err) = serfnode(&["query", "where", "web", "--role", "db", "--mount", &mount]);
    assert!(
        !ok && err.contains("\"web\"") && err.contains("\"db\""),
        "{err}"
    );

    for (h, n) in hs.iter().zip([&db, &web]) {
        for name in ["where", "ports"] {
            assert!(
                h.out(&format!("{name}-ran")).is_none(),
                "the {name} handler ran on {}",
                n.name
            );
        }
    }
}
