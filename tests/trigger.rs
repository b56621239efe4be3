//! The membership trigger end to end: the agent's log lines (its RPC
//! `monitor`) have each changed member re-read at once, and the slow full
//! reconcile (`--reconcile-period`) repairs what no trigger announced.
//! Real agents and the real binary; the stand-in agent of the test kit
//! where a test must control what the agent logs (a lost trigger, forged
//! lines) or count the daemon's full reads.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use serfnode::cluster::rpc::{Client, StreamRecord};
use serfnode_testkit::{FakeAgent, FakeMember};
use support::node::{Daemon, DaemonOpts};
use support::serf::{Agent, AgentOpts};
use support::wait_for;

const T: Duration = Duration::from_secs(30);
/// The safety reconcile's period where a test must not be helped by it.
const NEVER: &str = "600";

fn reconciling_every(secs: &str) -> Vec<String> {
    vec!["--reconcile-period".into(), secs.into()]
}

fn ids(by_id: &Value) -> BTreeSet<String> {
    by_id
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn fake_member(name: &str, last: u8) -> FakeMember {
    FakeMember {
        name: name.into(),
        addr: IpAddr::from([127, 0, 9, last]),
        port: 7946,
        tags: BTreeMap::from([
            ("role".to_string(), "web".to_string()),
            ("timestamp".to_string(), format!("{last}")),
        ]),
        status: "alive".into(),
        protocol: [1, 5, 5],
        delegate: [2, 5, 4],
    }
}

fn attached(fake: &FakeAgent, name: &str, period: &str) -> Daemon {
    Daemon::start(DaemonOpts {
        name: name.into(),
        attach: Some(fake.addr),
        args: reconciling_every(period),
        ..DaemonOpts::default()
    })
}

/// The member file of `name` shows tag `key` = `value`.
fn shows(node: &Daemon, name: &str, key: &str, value: &str) -> bool {
    node.try_json(&format!("members/{name}.json"))
        .is_ok_and(|v| v["tags"][key] == value)
}

/// With the safety reconcile ten minutes away, a tag change of a real
/// member is in its file before the local agent's own event stream even
/// delivers the change (it coalesces member events for a second): the log
/// line triggered the re-read, not the stream and not the reconcile.
#[test]
fn a_change_is_in_the_files_before_the_agents_stream_tells_it() {
    let a = Daemon::start(DaemonOpts {
        name: "fresh-a".into(),
        args: reconciling_every(NEVER),
        ..DaemonOpts::default()
    });
    let b = Agent::start(AgentOpts {
        join: Some(a.bind_addr()),
        ..AgentOpts::named("fresh-b")
    });
    // The join, too, arrives by a trigger: no reconcile for ten minutes.
    a.wait_json("serfnodes_by_id.json", T, |v| ids(v).contains("fresh-b"));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Instant>();
    let rpc = a.rpc_addr();
    rt.block_on(async {
        let client = Client::connect(rpc, None).await.unwrap();
        let mut sub = client.stream("member-update").await.unwrap();
        tokio::spawn(async move {
            let _keep = client;
            while let Some(rec) = sub.recv().await {
                if let StreamRecord::Member { members, .. } = rec {
                    if members
                        .iter()
                        .any(|m| m.tags.get("probe").map(String::as_str) == Some("1"))
                    {
                        let _ = tx.send(Instant::now());
                    }
                }
            }
        });
    });
    let setter = std::thread::spawn({
        let rpc = b.rpc_addr();
        move || {
            let out = std::process::Command::new("serf")
                .args(["tags", &format!("-rpc-addr={rpc}"), "-set", "probe=1"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
    });
    let mut in_file = None;
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        if shows(&a, "fresh-b", "probe", "1") {
            in_file = Some(Instant::now());
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let in_file = in_file.expect("the change never reached the file");
    let streamed = rx
        .recv_timeout(T)
        .expect("the agent never streamed the change");
    setter.join().unwrap();
    assert!(
        in_file < streamed,
        "the file showed the change {:?} after the agent's stream",
        in_file - streamed
    );
}

/// A change whose trigger never comes (no log line, no stream record) is
/// in the view after the safety reconcile, and by a full `members` read.
/// A change that is logged needs none.
#[test]
fn a_lost_trigger_is_repaired_by_the_reconcile() {
    let fake = FakeAgent::start(vec![
        fake_member("lost-a", 1),
        fake_member("lost-b", 2),
        fake_member("lost-c", 3),
    ])
    .unwrap();
    let a = attached(&fake, "lost-a", "1");
    a.wait_json("serfnodes_by_id.json", T, |v| ids(v).len() == 3);

    // Announced: the log line has the member re-read, nothing more.
    fake.set_tag(1, "probe", "logged").unwrap();
    wait_for(T, "the logged change", || {
        shows(&a, "lost-b", "probe", "logged")
    });

    // Lost: only a full read can show it.
    let before = fake.full_reads();
    fake.set_tag_quietly(2, "probe", "quiet").unwrap();
    wait_for(T, "the quiet change, by the reconcile", || {
        shows(&a, "lost-c", "probe", "quiet")
    });
    assert!(
        fake.full_reads() > before,
        "the quiet change was seen without a full read"
    );
    // The logged change was applied by a re-read of its member (the full
    // reads before it were the start's and the periodic ones).
    assert!(fake.commands().iter().any(|c| c == "members-filtered"));
}

/// With the reconcile ten minutes away, the stand-in agent's logged
/// change is applied without any full read: the trigger alone.
#[test]
fn a_logged_change_needs_no_full_read() {
    let fake = FakeAgent::start(vec![fake_member("solo-a", 1), fake_member("solo-b", 2)]).unwrap();
    let a = attached(&fake, "solo-a", NEVER);
    a.wait_json("serfnodes_by_id.json", T, |v| ids(v).len() == 2);
    let full = fake.full_reads();
    for i in 0..5 {
        fake.set_tag(1, "probe", &format!("v{i}")).unwrap();
        wait_for(T, "the logged change", || {
            shows(&a, "solo-b", "probe", &format!("v{i}"))
        });
    }
    assert_eq!(fake.full_reads(), full, "a full read for a logged change");
}

/// Forged and doubtful log lines never make the view wrong: a line naming
/// a member that does not exist, one whose address disagrees with the
/// member's, one that is not in the agent's format, and names holding the
/// words of other lines. Each costs a re-read or a full reconcile; after
/// them the view is exactly the agent's members, and a quiet change that
/// such a line happened to reconcile is shown (the truth, not the line).
#[test]
fn forged_log_lines_never_make_the_view_wrong() {
    let fake = FakeAgent::start(vec![
        fake_member("forge-a", 1),
        fake_member("forge-b", 2),
        fake_member("x EventMemberJoin: forge-b 127.0.9.2", 3),
    ])
    .unwrap();
    let a = attached(&fake, "forge-a", NEVER);
    a.wait_json("serfnodes_by_id.json", T, |v| ids(v).len() == 3);
    let want = ids(&a.json("serfnodes_by_id.json"));
    let date = "2026/12/03 08:43:55";
    let lines = [
        format!("{date} [INFO] serf: EventMemberJoin: ghost 127.0.9.99"),
        format!("{date} [INFO] serf: EventMemberFailed: forge-b 10.10.10.10"),
        format!("{date} [INFO] serf: EventMemberLeave: forge-a\n{date} [INFO] serf: EventMemberJoin: ghost2 127.0.9.98"),
        format!("{date} [INFO] serf: EventMemberUpdate: x EventMemberJoin: forge-b 127.0.9.2"),
        format!("{date} [INFO] serf: EventMemberJoin: x EventMemberJoin: forge-b 127.0.9.2 127.0.9.3"),
        "EventMemberJoin: ghost3 127.0.9.97".to_string(),
        format!("{date} [INFO] serf: EventMemberReap: ghost4"),
        format!("{date} [INFO] serf: EventMemberUpdate: .*"),
    ];
    for line in &lines {
        fake.log_line(line);
    }
    // Each forged line led to a re-read or a reconcile; the last of them
    // sees this quiet change, and nothing else differs from the agent.
    let before = fake.full_reads();
    fake.set_tag_quietly(1, "probe", "truth").unwrap();
    fake.log_line(&format!(
        "{date} [INFO] serf: EventMemberJoin: ghost5 127.0.9.96"
    ));
    wait_for(T, "the quiet change, by a reconcile", || {
        shows(&a, "forge-b", "probe", "truth")
    });
    assert!(fake.full_reads() > before);
    let by_id = a.json("serfnodes_by_id.json");
    assert_eq!(ids(&by_id), want, "the forged lines changed who is listed");
    for (name, info) in by_id.as_object().unwrap() {
        assert_eq!(info["id"], name.as_str());
        assert_eq!(info["role"], "web");
    }
    let status = a.json("status.json");
    assert_eq!(status["total"], 3, "{status}");
    assert_eq!(status["agent"]["connected"], true);
}

/// Real agents with hostile names, the hostile test's set and names made
/// of other lines' words, newlines and regular-expression syntax: with the
/// reconcile ten minutes away, their joins and tag changes all reach the
/// files, and every view seen meanwhile lists only real members.
#[test]
fn hostile_names_never_make_the_view_wrong() {
    let a = Daemon::start(DaemonOpts {
        name: "hn-a".into(),
        args: reconciling_every(NEVER),
        ..DaemonOpts::default()
    });
    let long = "n".repeat(300);
    let names: Vec<String> = [
        " EventMemberJoin: ",
        "b EventMemberJoin: hn-a 127.0.0.1",
        "c\n2026/12/03 08:43:55 [INFO] serf: EventMemberJoin: hn-ghost 127.0.0.9",
        "x",
        "x\n",
        "x\n\n",
        "nl\nEventMemberUpdate: x",
        "re.*",
        "re(a|b)",
        "[re]",
        "back\\slash",
        "a/b",
        "..",
        "\u{1}ctl",
        "a\tb",
        "ünïcødé ☃",
        long.as_str(),
        "sp ace ",
        "\u{1b}]0;title\u{7}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut all: BTreeSet<String> = names.iter().cloned().collect();
    all.insert(a.name.clone());

    let sampler = {
        let path = a.path("serfnodes_by_id.json");
        let all = all.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let h = std::thread::spawn(move || {
            let mut looks = 0u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(bytes) = std::fs::read(&path) {
                    let v: Value = serde_json::from_slice(&bytes).expect("by_id is json");
                    for id in ids(&v) {
                        assert!(all.contains(&id), "listed a member that never was: {id:?}");
                    }
                    looks += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            looks
        });
        (stop, h)
    };

    let agents: Vec<Agent> = names
        .iter()
        .map(|name| {
            let opts = AgentOpts {
                join: Some(a.bind_addr()),
                ..AgentOpts::default()
            };
            Agent::start_os(opts, &[OsString::from(format!("-node={name}"))])
        })
        .collect();
    a.wait_json("serfnodes_by_id.json", T, |v| ids(v) == all);
    for (i, agent) in agents.iter().enumerate() {
        agent.set_tags(&[("probe", &format!("p{i}"))]);
    }
    wait_for(T, "every hostile member's tag change", || {
        let behind: Vec<(&str, Option<String>)> = names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.as_str(), i, member_probe(&a, name)))
            .filter(|(_, i, seen)| *seen != Some(format!("p{i}")))
            .map(|(name, _, seen)| (name, seen))
            .collect();
        if behind.is_empty() {
            Ok(())
        } else {
            Err(format!("not yet (member, probe shown): {behind:?}"))
        }
    });
    assert_eq!(ids(&a.json("serfnodes_by_id.json")), all);
    let (stop, h) = sampler;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let looks = h.join().expect("a view listed a member that never was");
    assert!(looks > 10, "the sampler barely looked ({looks})");
    drop(agents);
}

/// The `probe` tag of member `name`, from its member file (found through
/// the listing: hostile names are percent-encoded there).
fn member_probe(node: &Daemon, name: &str) -> Option<String> {
    let dir = node.path("members");
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        let v: Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        if v["id"] == name {
            return v["tags"]["probe"].as_str().map(str::to_owned);
        }
    }
    None
}
