//! Hostile input, end to end on real agents and the real binary: tag values,
//! member names, write-node lines and query file names chosen to break
//! things. Whatever comes in, every file stays valid JSON showing the raw
//! value, nothing reaches the hosts file or escapes the mount, writers get
//! their errno, and no read or write hangs.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use serfnode::names::{is_host_name, member_file_name};
use support::hosts::Block;
use support::node::{raw_write, Daemon, DaemonOpts, SERFNODE};
use support::serf::{Agent, AgentOpts};
use support::stream::{rpc, Observer, Seen};
use support::wait_for;

const T: Duration = Duration::from_secs(30);
/// No single read or write of the mount may take longer than this.
const HANG: Duration = Duration::from_secs(10);
const OUTSIDE: &str = "127.0.0.1\tlocalhost\n# kept by the user\n10.10.10.10\tmanual-entry\n";

// ---------------------------------------------------------------- helpers

/// A node `a` and a node `b` joined to it, both seeing the two members.
fn pair(a: &str, b: &str) -> (Daemon, Daemon) {
    let a = Daemon::start(DaemonOpts {
        name: a.into(),
        ..DaemonOpts::default()
    });
    let b = Daemon::start(DaemonOpts {
        name: b.into(),
        join: vec![a.bind_addr()],
        ..DaemonOpts::default()
    });
    for n in [&a, &b] {
        n.wait_json("serfnodes_by_id.json", T, |v| {
            v.as_object().is_some_and(|m| m.len() == 2)
        });
    }
    (a, b)
}

/// Reads `path` in a thread; fails the test if the read takes over [`HANG`].
/// Returns the content or the errno, and how long it took.
fn bounded_read(path: PathBuf) -> (Result<Vec<u8>, i32>, Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let began = Instant::now();
    let shown = path.display().to_string();
    std::thread::spawn(move || {
        let res = std::fs::read(&path).map_err(|e| e.raw_os_error().unwrap_or(-1));
        let _ = tx.send(res);
    });
    let res = rx
        .recv_timeout(HANG)
        .unwrap_or_else(|_| panic!("read of {shown} still blocked after {HANG:?}"));
    (res, began.elapsed())
}

/// `members/`: every entry is a plain file name whose document is valid
/// JSON naming a member; returns id → (file name, document). Panics on an
/// entry that could walk a path, an unreadable document, or two files
/// claiming one id.
fn member_files(node: &Daemon) -> BTreeMap<String, (String, Value)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(node.path("members")).unwrap() {
        let entry = entry.unwrap();
        let file = entry.file_name().into_string().unwrap_or_else(|f| {
            panic!("members/ entry {f:?} is not UTF-8");
        });
        assert!(
            !file.contains('/') && !file.contains('\0') && file != "." && file != "..",
            "members/ entry {file:?}"
        );
        assert!(file.len() <= 255 && file.ends_with(".json"), "{file:?}");
        assert!(entry.file_type().unwrap().is_file(), "{file:?} not a file");
        let doc = node.json(&format!("members/{file}"));
        let id = doc["id"].as_str().expect("id is a string").to_owned();
        assert_eq!(file, member_file_name(&id), "file of {id:?}");
        let dup = out.insert(id.clone(), (file, doc));
        assert!(dup.is_none(), "two files for {id:?}");
    }
    out
}

/// Every document of the mount parses as JSON (and `events` line by line).
fn all_documents_are_json(node: &Daemon) {
    for file in [
        "serfnodes_by_id.json",
        "serfnodes_by_role.json",
        "status.json",
        "me.json",
        "parent.json",
        "children_by_name.json",
    ] {
        node.json(file);
    }
    member_files(node);
    let journal = node.read("events").unwrap();
    let text = std::str::from_utf8(&journal).expect("the journal is UTF-8");
    for line in text.lines() {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("journal line is not json ({e}): {line:?}"));
    }
}

/// The daemon still runs and follows its agent.
fn daemon_fine(node: &Daemon, members: usize) {
    // SAFETY: signal 0 only checks that our child process exists.
    assert_eq!(unsafe { libc::kill(node.pid(), 0) }, 0, "serfnode died");
    let status = node.json("status.json");
    assert_eq!(status["agent"]["connected"], true, "{status}");
    assert_eq!(status["agent"]["stale"], false, "{status}");
    assert_eq!(status["members"]["alive"], members, "{status}");
}

/// role → address, as the hosts file's managed block says (none without
/// one); panics on a block not closed or a line that is not
/// `ip<TAB>host-name`.
fn hosts_block(text: &str) -> BTreeMap<String, String> {
    let Some(block) = Block::find(text) else {
        return BTreeMap::new();
    };
    let roles = block.strict_roles(text);
    for (role, ip) in &roles {
        assert!(ip.parse::<std::net::IpAddr>().is_ok(), "{ip:?} in\n{text}");
        assert!(is_host_name(role), "{role:?} in\n{text}");
    }
    roles
}

/// Starts agents concurrently (each start waits for its RPC).
fn start_agents(opts: Vec<(AgentOpts, Vec<OsString>)>) -> Vec<Agent> {
    std::thread::scope(|s| {
        let handles: Vec<_> = opts
            .into_iter()
            .map(|(o, extra)| s.spawn(move || Agent::start_os(o, &extra)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Names of the entries of `dir` (not recursive).
fn listing(dir: &Path) -> BTreeSet<OsString> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect()
}

// ------------------------------------------------------------ 1. tag values

/// Role and tag values with newlines, spaces, '#', quotes, control
/// characters, unicode and long values, from agents that start with them and
/// from a tag update over RPC: the files show each raw value faithfully as
/// valid JSON, the hosts file gets none of those roles and keeps the good
/// ones; a 512-byte tag is refused by Serf itself and changes nothing.
#[test]
fn hostile_tag_values_are_shown_raw_and_never_reach_the_hosts_file() {
    let a = Daemon::start(DaemonOpts {
        name: "tags-a".into(),
        role: "web".into(),
        hosts: Some(OUTSIDE.into()),
        ..DaemonOpts::default()
    });
    let b = Daemon::start(DaemonOpts {
        name: "tags-b".into(),
        role: "db".into(),
        join: vec![a.bind_addr()],
        ..DaemonOpts::default()
    });
    let long_r = "r".repeat(254);
    let long_u = "ü".repeat(150);
    let hostile_roles: Vec<&str> = vec![
        "evil role",
        "new\nline",
        "x#y",
        "quo\"te's",
        "ünïcødé ☃",
        "tab\tbed",
        "cr\rlf",
        "back\\slash",
        "ctl\u{1}\u{7f}\u{1b}[2J",
        "-dash",
        ".dot",
        &long_r,
        &long_u,
        "evil\n6.6.6.6\tinjected",
        "",
    ];
    let mut specs: Vec<BTreeMap<String, String>> = hostile_roles
        .iter()
        .map(|r| tags(&[("role", r), ("timestamp", "1")]))
        .collect();
    // Other tags, hostile in their keys and values.
    specs[0].extend(tags(&[
        ("note", "\"},{\"x\":1} </script>\u{2028}\u{2029}"),
        ("weird key #\n", "v"),
        (
            "ports",
            "80t|x|u|t|99999999999999999999999t1|8080t80,\n|443u",
        ),
        ("service_port", "not a port\n"),
    ]));
    // A good role, with a service address that is not one: no line.
    specs.push(tags(&[
        ("role", "svcbad"),
        ("service", "not-an-ip\n6.6.6.6\tsvc"),
    ]));
    // A good, unusual role: kept.
    specs.push(tags(&[("role", "ok_role.v-2")]));
    // A web member claiming seniority with a timestamp that is not a number:
    // it is the youngest, the older web member keeps the hosts line.
    specs.push(tags(&[
        ("role", "web"),
        ("timestamp", "NaN"),
        ("service", "6.6.6.6"),
    ]));
    // Its role turns hostile later, over RPC.
    specs.push(tags(&[("role", "flip-ok")]));
    let agents = start_agents(
        specs
            .iter()
            .map(|t| {
                let opts = AgentOpts {
                    tags: t.clone(),
                    join: Some(a.bind_addr()),
                    ..AgentOpts::default()
                };
                (opts, Vec::new())
            })
            .collect(),
    );
    let n = 2 + agents.len();
    let (ok, flip) = (&agents[agents.len() - 3], &agents[agents.len() - 1]);

    // A tag update to a hostile role, and one over Serf's 512-byte limit.
    let flipped = "flip\n6.6.6.6\tflipped";
    rpc(flip.rpc_addr(), async |c| {
        c.tags(&tags(&[("role", flipped)]), &[]).await.unwrap();
        let big = tags(&[("big", &"b".repeat(512))]);
        let refused = c.tags(&big, &[]).await;
        assert!(refused.is_err(), "a 512-byte tag was taken");
        let e = refused.unwrap_err().to_string();
        assert!(e.contains("exceeds") || e.contains("limit"), "{e}");
        // The agent still answers after refusing.
        assert!(!c.members().await.unwrap().is_empty());
    });
    let mut want_tags = specs.clone();
    *want_tags.last_mut().unwrap() = tags(&[("role", flipped)]);

    for node in [&a, &b] {
        node.wait_json("serfnodes_by_id.json", T, |v| {
            v.as_object().is_some_and(|m| m.len() == n) && v[flip.name()]["role"] == flipped
        });
    }
    let want_hosts: BTreeMap<String, String> = [
        ("web".to_string(), a.ip.to_string()),
        ("db".to_string(), b.ip.to_string()),
        ("ok_role.v-2".to_string(), ok.ip().to_string()),
    ]
    .into();
    for node in [&a, &b] {
        wait_for(T, &format!("hosts block on {}", node.name), || {
            hosts_block(&node.hosts_text()) == want_hosts
        });
    }

    for node in [&a, &b] {
        all_documents_are_json(node);
        daemon_fine(node, n);
        let by_id = node.json("serfnodes_by_id.json");
        let by_role = node.json("serfnodes_by_role.json");
        let members = member_files(node);
        assert_eq!(members.len(), n);
        for (agent, want) in agents.iter().zip(&want_tags) {
            let id = agent.name();
            let role = want["role"].as_str();
            // by_id: the raw role and timestamp.
            assert_eq!(by_id[id]["role"], role, "{id}");
            assert_eq!(
                by_id[id]["timestamp"],
                want.get("timestamp").map_or("", String::as_str),
                "{id}"
            );
            if let Some(service) = want.get("service") {
                assert_eq!(by_id[id]["service_ip"], service.as_str());
            }
            // by_role: listed under the raw role, the same Node info.
            let listed = by_role[role].as_array().unwrap_or_else(|| {
                panic!("role {role:?} missing from by_role: {by_role}");
            });
            assert!(
                listed.iter().any(|m| m == &by_id[id]),
                "{id} under {role:?}"
            );
            // members/<id>.json: every raw tag, nothing else.
            let (_, doc) = &members[id];
            assert_eq!(doc["tags"], json!(want), "{id}");
            assert_eq!(doc["role"], role);
            assert_eq!(doc["status"], "alive");
        }
        // Garbage in `ports` is skipped, the rest decoded as it is.
        let ports = &by_id[agents[0].name()]["ports"];
        let want_ports = json!({
            "80/tcp": [],
            "99999999999999999999999/tcp": ["1"],
            "8080/tcp": ["80", "\n"],
            "443/udp": [],
        });
        assert_eq!(ports, &want_ports);
        // The NaN-timestamp web member is listed after the real one.
        let web: Vec<&str> = by_role["web"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(web, [a.name.as_str(), agents[agents.len() - 2].name()]);

        // The hosts file: the good roles only, the rest byte for byte.
        let text = node.hosts_text();
        let outside = if node.name == a.name {
            OUTSIDE
        } else {
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n"
        };
        assert!(text.starts_with(outside), "outside lines kept:\n{text}");
        let extra = ["6.6.6.6", "injected", "flip", "svcbad"];
        for bad in hostile_roles.iter().filter(|r| !r.is_empty()).chain(&extra) {
            assert!(!text.contains(bad), "{bad:?} written:\n{text}");
        }
        let log = std::fs::read_to_string(node.mount.parent().unwrap().join("serfnode.log"));
        assert!(
            log.unwrap().contains("is not a host name"),
            "refusals are logged"
        );
    }
    // The refused tag changed nothing anywhere.
    let doc = &member_files(&a)[flip.name()].1;
    assert!(doc["tags"].get("big").is_none(), "{doc}");
}

// --------------------------------------------------------- 2. member names

/// Member names with '/', '..', '.', a leading '-', control characters,
/// unicode and over 255 bytes: each member gets exactly one plain file in
/// `members/` showing its raw name as `id`, by_id has the raw names as keys,
/// and nothing is created outside the mount.
#[test]
fn hostile_member_names_stay_inside_members() {
    let a = Daemon::start(DaemonOpts {
        name: "names-a".into(),
        ..DaemonOpts::default()
    });
    let around = a.mount.parent().unwrap().to_path_buf();
    let before = listing(&around);
    let root_before = listing(&a.mount);
    let long = "n".repeat(300);
    let long_slashes = format!("{}/..", "x/".repeat(140));
    let names: Vec<&str> = vec![
        "a/b",
        "..",
        ".",
        "...",
        "-leading",
        "\u{1}ctl",
        "a\tb",
        "a\nb",
        "ünïcødé ☃",
        &long,
        &long_slashes,
        "../../../../tmp/escaped",
        "a%2Fb",
        "%",
        "sp ace",
        "members",
        "status.json",
        "\u{1b}]0;title\u{7}",
    ];
    let agents = start_agents(
        names
            .iter()
            .map(|name| {
                let opts = AgentOpts {
                    join: Some(a.bind_addr()),
                    ..AgentOpts::default()
                };
                (opts, vec![OsString::from(format!("-node={name}"))])
            })
            .collect(),
    );
    let n = names.len() + 1;
    let want: BTreeSet<String> = names
        .iter()
        .map(|s| s.to_string())
        .chain([a.name.clone()])
        .collect();
    let by_id = a.wait_json("serfnodes_by_id.json", T, |v| {
        v.as_object().is_some_and(|m| m.len() == n)
    });
    let keys: BTreeSet<String> = by_id.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, want, "by_id keys are the raw names");
    for name in &names {
        assert_eq!(by_id[name]["id"], *name);
    }

    let members = member_files(&a);
    let ids: BTreeSet<String> = members.keys().cloned().collect();
    assert_eq!(ids, want, "one file per member, each with its raw id");
    assert_eq!(members["a/b"].0, "a%2Fb.json");
    assert_eq!(members[".."].0, "%2E%2E.json");
    assert_eq!(members["."].0, "%2E.json");
    assert!(members[long.as_str()].0.len() <= 255);
    assert_ne!(members["a/b"].0, members["a%2Fb"].0);
    for (id, (file, doc)) in &members {
        // Reading the file by its name (not through the listing) works too.
        assert_eq!(a.json(&format!("members/{file}"))["id"], id.as_str());
        assert_eq!(doc["status"], "alive", "{id:?}");
    }
    // Names that would walk a path are only names: nothing there.
    assert!(a.read("members/../../../../tmp/escaped.json").is_err());
    assert!(!Path::new("/tmp/escaped.json").exists());
    assert!(!Path::new("/tmp/escaped").exists());

    all_documents_are_json(&a);
    daemon_fine(&a, n);
    assert_eq!(listing(&a.mount), root_before, "the mount's root changed");
    assert_eq!(listing(&around), before, "files appeared beside the mount");
    drop(agents);
}

/// Joins an agent whose name (and, for `tag`, a role tag) is not UTF-8, as
/// Serf allows any bytes: `bad\xff\xfe`, role `r\xc3`.
fn join_non_utf8(to: std::net::SocketAddr, name: bool, tag: bool) -> Agent {
    let mut extra = Vec::new();
    if name {
        extra.push(OsString::from_vec(b"-node=bad\xff\xfe".to_vec()));
    }
    if tag {
        extra.push(OsString::from_vec(b"-tag=role=r\xc3".to_vec()));
    }
    let opts = AgentOpts {
        join: Some(to),
        ..AgentOpts::default()
    };
    Agent::start_os(opts, &extra)
}

/// The daemon keeps following the cluster (here attached to an agent whose
/// output it does not read) when members' names or tags are not UTF-8:
/// the ordinary members stay listed, later joins are seen.
#[test]
fn members_with_non_utf8_names_or_tags_do_not_blind_the_daemon() {
    let agent = Agent::start(AgentOpts::named("bytes-a"));
    let a = Daemon::start(DaemonOpts {
        name: "bytes-a".into(),
        attach: Some(agent.rpc_addr()),
        ..DaemonOpts::default()
    });
    let good = Agent::start(AgentOpts::named("bytes-good").join(&agent));
    a.wait_json("serfnodes_by_id.json", T, |v| {
        v.as_object().is_some_and(|m| m.len() == 2)
    });
    let _bad_name = join_non_utf8(agent.bind_addr(), true, false);
    let _bad_tag = join_non_utf8(agent.bind_addr(), false, true);
    // An ordinary member joining afterwards must still be seen.
    let late = Agent::start(AgentOpts::named("bytes-late").join(&agent));
    let by_id = a.wait_json("serfnodes_by_id.json", T, |v| {
        v.as_object().is_some_and(|m| m.len() >= 5) && v.get(late.name()).is_some()
    });
    assert!(by_id.get(good.name()).is_some());
    // The names that are not UTF-8 are shown with U+FFFD in place of the bytes.
    assert!(
        by_id
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.contains('\u{fffd}')),
        "{by_id}"
    );
    all_documents_are_json(&a);
    daemon_fine(&a, 5);
}

/// A member whose name is not UTF-8 joins: the local agent, whose log
/// carries that name, keeps running (serfnode keeps reading its output).
#[test]
fn a_member_with_a_non_utf8_name_does_not_kill_the_local_agent() {
    let a = Daemon::start(DaemonOpts {
        name: "pipe-a".into(),
        ..DaemonOpts::default()
    });
    let _bad = join_non_utf8(a.bind_addr(), true, false);
    let log = a.mount.parent().unwrap().join("serfnode.log");
    std::thread::sleep(Duration::from_secs(3));
    let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    assert!(!text.contains("serf agent exited"), "{}", a.log());
    daemon_fine(&a, 2);
}

/// `serfnode members` prints one row per member, whatever the names and
/// roles hold: a newline or an escape sequence cannot forge rows or drive
/// the operator's terminal.
#[test]
fn operator_members_table_is_one_row_per_member() {
    let a = Daemon::start(DaemonOpts {
        name: "table-a".into(),
        ..DaemonOpts::default()
    });
    let _agents = start_agents(vec![
        (
            AgentOpts {
                join: Some(a.bind_addr()),
                ..AgentOpts::default()
            }
            .tag("role", "web\nforged  6.6.6.6:1  alive  admin"),
            vec![],
        ),
        (
            AgentOpts {
                join: Some(a.bind_addr()),
                ..AgentOpts::default()
            },
            vec![OsString::from("-node=x\u{1b}[2J\ny")],
        ),
    ]);
    a.wait_json("serfnodes_by_id.json", T, |v| {
        v.as_object().is_some_and(|m| m.len() == 3)
    });
    let out = std::process::Command::new(SERFNODE)
        .args(["members", "--mount"])
        .arg(&a.mount)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1 + 3, "{text}");
    assert!(!text.contains('\u{1b}'), "{text:?}");
}

// ---------------------------------------------------- 3. write node lines

/// Bad event names are EINVAL, sizes at the limit pass and one byte over is
/// EMSGSIZE, huge lines are EMSGSIZE, bytes that are not JSON are EINVAL;
/// nothing refused is sent, and the write node works after all of it.
#[test]
fn write_node_refuses_hostile_lines_with_their_errno() {
    let (a, b) = pair("lines-a", "lines-b");
    let mut seen = Observer::on(&b);
    let node = a.path("parent");
    let write = |bytes: &[u8]| {
        let began = Instant::now();
        let res = raw_write(&node, bytes);
        assert!(began.elapsed() < HANG, "write took {:?}", began.elapsed());
        res
    };

    // Names: path parts, empty, spaces, control bytes, unicode, 129 bytes,
    // not a string at all.
    let e129 = "e".repeat(129);
    for name in [
        json!("a/b"),
        json!(".."),
        json!("../x"),
        json!("."),
        json!(".hidden"),
        json!(""),
        json!(" "),
        json!("a b"),
        json!("a\u{0}b"),
        json!("tab\t"),
        json!("new\nline"),
        json!("é"),
        json!(e129),
        json!(1),
        json!(null),
        json!(["x"]),
        json!({"a": 1}),
    ] {
        let line = format!("[{name},1]\n");
        assert_eq!(write(line.as_bytes()), Err(libc::EINVAL), "name {name}");
    }
    // Bytes that are not (UTF-8) JSON.
    for bad in [
        &b"\x00\x01\x02\x03\n"[..],
        b"\xff\xfe\xfd\n",
        b"[\"ev\",\"\xff\xfe\"]\n",
        b"[\"ev\",\"\xc3\"]\n",
        b"[\"ev\",\"a\x00b\"]\n",
        b"[\"ev\",\"\\ud800\"]\n",
        b"[\"ev\",1]\x00\n",
        b"[\"ev\",1,]\n",
        b"[\"ev\" 1]\n",
    ] {
        assert_eq!(
            write(bad),
            Err(libc::EINVAL),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    seen.quiet_for(Duration::from_millis(500));

    // A 128-byte name is fine, and arrives.
    let e128 = "e".repeat(128);
    let line = format!("[\"{e128}\",1]\n");
    assert_eq!(write(line.as_bytes()), Ok(line.len()));
    assert_eq!(seen.next(), (e128, json!(1), Some(a.name.clone())));
    // Valid JSON that merely looks hostile passes through unchanged.
    let odd = json!({"nul": "\u{0}", "ls": "\u{2028}", "quote": "\"]\n[\"x\",1]", "ü": [1e300]});
    let line = format!("[\"odd\",{odd}]\n");
    assert_eq!(write(line.as_bytes()), Ok(line.len()));
    assert_eq!(seen.next(), ("odd".into(), odd, Some(a.name.clone())));

    // Exactly at the limit: name + enveloped payload = 472 bytes. One more
    // is EMSGSIZE.
    let envelope = format!(r#"{{"serfnode":{{"node":"{}"}},"payload":}}"#, a.name).len();
    let room = 472 - "lim".len() - envelope - 2;
    let at = "x".repeat(room);
    let fits = format!("[\"lim\",\"{at}\"]\n");
    let over = format!("[\"lim\",\"{at}x\"]\n");
    assert_eq!(write(over.as_bytes()), Err(libc::EMSGSIZE));
    assert_eq!(write(fits.as_bytes()), Ok(fits.len()));
    assert_eq!(seen.next(), ("lim".into(), json!(at), Some(a.name.clone())));
    // Far over: a 100 KB line is one line, too big: EMSGSIZE; 100 KB of
    // garbage is one line, not JSON: EINVAL.
    let huge = format!("[\"huge\",\"{}\"]\n", "x".repeat(100_000));
    assert_eq!(write(huge.as_bytes()), Err(libc::EMSGSIZE));
    let garbage = format!("{}\n", "g".repeat(100_000));
    assert_eq!(write(garbage.as_bytes()), Err(libc::EINVAL));
    // 1 MB without a newline: over the 64 KiB bound on a pending line.
    let mb = format!("[\"mb\",\"{}\"]", "x".repeat(1 << 20));
    assert_eq!(write(mb.as_bytes()), Err(libc::EMSGSIZE));
    let mb_open = format!("[\"mb\",\"{}", "x".repeat(1 << 20));
    assert_eq!(write(mb_open.as_bytes()), Err(libc::EMSGSIZE));
    // ... and with one: still one line, too big.
    assert_eq!(write(format!("{mb}\n").as_bytes()), Err(libc::EMSGSIZE));
    seen.quiet_for(Duration::from_millis(700));

    // Nothing of the refused writes lingers: the next line is taken whole.
    assert_eq!(write(b"[\"after\",2]\n"), Ok(12));
    assert_eq!(
        seen.next(),
        ("after".into(), json!(2), Some(a.name.clone()))
    );
    seen.quiet_for(Duration::from_millis(500));
    all_documents_are_json(&a);
    daemon_fine(&a, 2);
}

/// One write(2) of 1 MiB holding 400 valid lines (padded with JSON
/// whitespace, so that lines straddle the kernel's page and request
/// boundaries): all accepted in order (a short count is continued), and
/// another member sees every event exactly once.
#[test]
fn a_megabyte_of_lines_in_one_write_is_taken_in_order() {
    const LINES: usize = 400;
    const TOTAL: usize = 1 << 20;
    let (a, b) = pair("mb-a", "mb-b");
    let mut local = Observer::on(&a);
    let mut remote = Observer::on(&b);
    let mut buf = Vec::with_capacity(TOTAL);
    for i in 0..LINES {
        let head = format!("[\"mb\",{{\"i\":{i}}}");
        let left = TOTAL - buf.len() - (LINES - i - 1) * 2600;
        let pad = if i + 1 == LINES {
            left - head.len() - 2
        } else {
            2500 + (i * 37) % 200
        };
        buf.extend_from_slice(head.as_bytes());
        buf.extend(std::iter::repeat_n(b' ', pad));
        buf.extend_from_slice(b"]\n");
    }
    assert_eq!(buf.len(), TOTAL);

    let began = Instant::now();
    let mut done = 0;
    while done < buf.len() {
        match raw_write(&a.path("parent"), &buf[done..]) {
            Ok(n) => {
                assert!(n > 0);
                done += n;
                assert_eq!(buf[done - 1], b'\n', "a short write ends at a line");
            }
            // Past the event rate: the writer waits and goes on.
            Err(libc::EAGAIN) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("write at {done}: errno {e}"),
        }
    }
    assert!(began.elapsed() < HANG, "took {:?}", began.elapsed());

    let want: Vec<Value> = (0..LINES).map(|i| json!({ "i": i })).collect();
    let here: Vec<Value> = local
        .collect(LINES, Duration::from_secs(5))
        .into_iter()
        .map(|(name, payload, _)| {
            assert_eq!(name, "mb");
            payload
        })
        .collect();
    assert_eq!(here, want, "the writer's agent got them in order");
    let there = remote.collect(LINES, Duration::from_secs(5));
    let mut got: Vec<u64> = there
        .iter()
        .map(|(_, p, _)| p["i"].as_u64().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, (0..LINES as u64).collect::<Vec<_>>(), "each once");
    remote.quiet_for(Duration::from_millis(700));
    daemon_fine(&a, 2);
}

// ---------------------------------------------------- 4. many writers

/// `n` threads, released at once, each opening the write node and writing
/// one event `["many", {"id": i}]`. Returns the accepted ids; every write
/// must succeed in full or fail with EAGAIN.
fn concurrent_writers(node: &Daemon, n: usize) -> BTreeSet<u64> {
    let path = Arc::new(node.path("parent"));
    let start = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (path, start) = (path.clone(), start.clone());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let line = format!("[\"many\",{{\"id\":{i}}}]\n");
                    start.wait();
                    (i as u64, line.len(), raw_write(&path, line.as_bytes()))
                })
                .unwrap()
        })
        .collect();
    let mut accepted = BTreeSet::new();
    for t in threads {
        match t.join().unwrap() {
            (i, len, Ok(n)) => {
                assert_eq!(n, len, "writer {i}: short write of one line");
                accepted.insert(i);
            }
            (_, _, Err(libc::EAGAIN)) => {}
            (i, _, Err(e)) => panic!("writer {i}: errno {e}"),
        }
    }
    accepted
}

fn ids(seen: &[Seen]) -> Vec<u64> {
    seen.iter()
        .map(|(name, p, _)| {
            assert_eq!(name, "many");
            p["id"].as_u64().unwrap()
        })
        .collect()
}

/// A thousand writers at once: each gets success or EAGAIN, and the
/// writer's agent raises every accepted event exactly once; another member
/// sees none twice and none that was refused.
#[test]
fn a_thousand_writers_at_once_each_get_an_answer() {
    const N: usize = 1000;
    let (a, b) = pair("many-a", "many-b");
    let mut local = Observer::on(&a);
    let mut remote = Observer::on(&b);
    let began = Instant::now();
    let accepted = concurrent_writers(&a, N);
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "{:?}",
        began.elapsed()
    );
    assert!(!accepted.is_empty(), "every writer got EAGAIN");

    let mut here = ids(&local.collect(accepted.len(), Duration::from_secs(3)));
    local.quiet_for(Duration::from_millis(300));
    here.sort();
    assert_eq!(
        here,
        accepted.iter().copied().collect::<Vec<_>>(),
        "each accepted event raised once"
    );

    let mut there = ids(&remote.drain(Duration::from_secs(2)));
    let unique: BTreeSet<u64> = there.iter().copied().collect();
    there.sort();
    assert_eq!(unique.len(), there.len(), "an event arrived twice");
    assert!(unique.is_subset(&accepted), "a refused event arrived");
    all_documents_are_json(&a);
    daemon_fine(&a, 2);
}

/// Concurrent writers whose events fit in Serf's 512-event window: another
/// member sees every accepted event exactly once.
#[test]
fn concurrent_writers_events_reach_another_member_exactly_once() {
    const N: usize = 400;
    let (a, b) = pair("burst-a", "burst-b");
    let mut remote = Observer::on(&b);
    // Past the event rate the rest are refused (EAGAIN): what was accepted
    // must all arrive.
    let accepted = concurrent_writers(&a, N);
    assert!(!accepted.is_empty());
    let mut there = ids(&remote.collect(accepted.len(), Duration::from_secs(5)));
    remote.quiet_for(Duration::from_millis(700));
    there.sort();
    assert_eq!(there, accepted.iter().copied().collect::<Vec<_>>());
    daemon_fine(&b, 2);
}

/// The full property for a thousand writers: every accepted event reaches
/// another member exactly once.
#[test]
fn every_event_of_a_thousand_writers_reaches_another_member() {
    const N: usize = 1000;
    let (a, b) = pair("lost-a", "lost-b");
    let mut remote = Observer::on(&b);
    // Past the event rate the rest are refused (EAGAIN): what was accepted
    // must all arrive.
    let accepted = concurrent_writers(&a, N);
    assert!(!accepted.is_empty());
    let mut there = ids(&remote.collect(accepted.len(), Duration::from_secs(5)));
    there.sort();
    assert_eq!(there, accepted.iter().copied().collect::<Vec<_>>());
}

// ---------------------------------------------------- 5. query file names

/// Query files with hostile names, arguments and options: ENOENT for what
/// does not parse, ENAMETOOLONG for what the kernel cannot name, answers
/// for the odd-but-valid; no read ever blocks past its bound.
#[test]
fn hostile_query_file_names_fail_fast() {
    let a = Daemon::start(DaemonOpts {
        name: "query-a".into(),
        role: "web".into(),
        ..DaemonOpts::default()
    });
    let q = |rel: &str| bounded_read(a.path(&format!("query/{rel}")));
    let long_name = "q".repeat(129);
    let enoent: Vec<String> = vec![
        "..%2Fx/1".into(),
        "%2E%2E/1".into(),
        ".hidden/1".into(),
        "a%2Fb/1".into(),
        "sp ace/1".into(),
        "é/1".into(),
        format!("{long_name}/1"),
        "where/1;bogus=1".into(),
        "where/1;timeout=x".into(),
        "where/1;timeout=-1".into(),
        "where/1;timeout=0".into(),
        "where/1;timeout=inf".into(),
        "where/1;timeout=NaN".into(),
        "where/1;timeout=".into(),
        "where/1;=".into(),
        "where/1;;".into(),
        "where/1;role".into(),
        "where/1;role=%zz".into(),
        "where/%zz".into(),
        "where/%".into(),
        "where/%2".into(),
        "where/%%".into(),
        "where/%ff".into(),
        "where/%C3".into(),
        "where/%C3%28".into(),
    ];
    for rel in &enoent {
        let (res, took) = q(rel);
        assert_eq!(res.err(), Some(libc::ENOENT), "query/{rel}");
        assert!(took < Duration::from_secs(2), "query/{rel} took {took:?}");
    }
    // Paths over PATH_MAX: the kernel refuses them before asking.
    for rel in [
        format!("where/{}", "a".repeat(4096)),
        format!("{}/1", "q".repeat(4096)),
        format!("where/{}", "a/".repeat(2100)),
    ] {
        let (res, took) = q(&rel);
        assert_eq!(res.err(), Some(libc::ENAMETOOLONG), "{} bytes", rel.len());
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    // Arguments the kernel passes (FUSE takes names up to PATH_MAX) but
    // that make a query over Serf's 1 KiB limit: refused at once.
    for rel in [
        format!("where/{}", "a".repeat(2000)),
        format!("nobody/{}", "a".repeat(3000)),
    ] {
        let (res, took) = q(&rel);
        assert!(res.is_err(), "{} bytes answered", rel.len());
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    // Path parts are the kernel's: `..` walks up inside the mount.
    assert_eq!(q("where/..").0.err(), Some(libc::EISDIR));
    assert_eq!(q("../nothing").0.err(), Some(libc::ENOENT));
    assert!(q("where/../../status.json").0.is_ok());

    // Odd but valid: each answered, as JSON, within its bound.
    let long_arg = "a".repeat(300);
    let longer_arg = "a".repeat(800);
    for (rel, payload) in [
        (
            format!("where/{long_arg};timeout=1"),
            json!({"role": long_arg}),
        ),
        (
            format!("nobody/{longer_arg};timeout=0.2"),
            json!(longer_arg),
        ),
        ("where/%00".into(), json!({"role": "\u{0}"})),
        ("where/%2F..%2F..%3B%25".into(), json!({"role": "/../..;%"})),
        ("where/web;node=".into(), json!({"role": "web"})),
        ("where/web;role=".into(), json!({"role": "web"})),
        ("nobody/ünï%0A;timeout=0.2".into(), json!("ünï\n")),
    ] {
        let (res, took) = q(&rel);
        let bytes = res.unwrap_or_else(|e| panic!("query/{rel}: errno {e}"));
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["payload"], payload, "query/{rel}");
        assert!(took < Duration::from_secs(3), "query/{rel} took {took:?}");
    }
    // A timeout too small for the clock: refused or answered, at once.
    let (res, took) = q("where/web;timeout=1e-300");
    assert!(matches!(res, Ok(_) | Err(libc::ENOENT)), "{res:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    daemon_fine(&a, 1);
}

/// A timeout too large for any clock is capped like any other (README: at
/// most 5 s), not fatal. (At HEAD, `Duration::from_secs_f64` panicked on it
/// in the FUSE lookup.)
#[test]
fn a_huge_query_timeout_is_capped() {
    let a = Daemon::start(DaemonOpts {
        name: "qhuge-a".into(),
        role: "web".into(),
        ..DaemonOpts::default()
    });
    for rel in ["where/web;timeout=1e20", "where/web;timeout=1e300"] {
        let (res, took) = bounded_read(a.path(&format!("query/{rel}")));
        let bytes = res.unwrap_or_else(|e| panic!("query/{rel}: errno {e}"));
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["complete"], true, "{v}");
        assert!(took < Duration::from_secs(6), "{took:?}");
    }
    // Nobody answers: the read ends at the 5 s cap, not at the asked time.
    let (res, took) = bounded_read(a.path("query/nobody/1;timeout=1e300"));
    let v: Value = serde_json::from_slice(&res.unwrap()).unwrap();
    assert_eq!(v["complete"], false, "{v}");
    assert_eq!(v["missing"], json!(["qhuge-a"]));
    assert!(took >= Duration::from_millis(4500), "{took:?}");
    assert!(took < Duration::from_secs(7), "{took:?}");
    daemon_fine(&a, 1);
}

/// A query argument the kernel passes but that is over Serf's query size
/// limit gets an errno that says so, as the write node's EMSGSIZE does.
#[test]
fn an_oversized_query_argument_says_too_long() {
    let a = Daemon::start(DaemonOpts {
        name: "qbig-a".into(),
        role: "web".into(),
        ..DaemonOpts::default()
    });
    for rel in [
        format!("where/{}", "a".repeat(2000)),
        format!("nobody/{}", "a".repeat(3000)),
    ] {
        let (res, _) = bounded_read(a.path(&format!("query/{rel}")));
        let errno = res.err();
        assert!(
            [libc::EMSGSIZE, libc::E2BIG, libc::ENAMETOOLONG]
                .map(Some)
                .contains(&errno),
            "{} bytes: errno {errno:?}",
            rel.len()
        );
    }
}

/// `%XX` takes two hex digits: `%+1` is not an escape, so ENOENT like `%zz`.
#[test]
fn a_plus_sign_is_not_a_hex_digit() {
    let a = Daemon::start(DaemonOpts {
        name: "qplus-a".into(),
        role: "web".into(),
        ..DaemonOpts::default()
    });
    let (res, _) = bounded_read(a.path("query/where/%+1"));
    assert_eq!(res.err(), Some(libc::ENOENT));
}
