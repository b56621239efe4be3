//! serfnode in Docker, as its users run it: three parent containers of the
//! serfnode image on a user-defined bridge network, each launching children
//! (Debian and FROM-scratch busybox images) that share its network
//! namespace, proven from inside the children with `docker exec`.
//!
//! One cluster is shared by the whole scenario, in an order where each step
//! leaves the cluster as the next one needs it:
//!
//! 1. files: every child lists all three nodes with their roles and their
//!    addresses on the network; `me.json`, `/me.json`, `parent.json`; the
//!    children are labelled, share the parent's network namespace and run
//!    their command through `serfnode child`;
//! 2. hosts: `getent hosts <role>` in a child gives the oldest member of the
//!    role (not the first by name);
//! 3. events: a line written to `/serfnode/parent` in a child of one node
//!    arrives as a user event on another node (seen by `serf monitor`);
//! 4. crash: a child exiting with status 3 is restarted (same container)
//!    and its `container` events reach another node; a child container
//!    removed with `docker rm -f` is created again under its name;
//! 5. partition: a parent disconnected from the network turns `failed`,
//!    and `alive` again once reconnected;
//! 6. kill: a killed parent turns `failed` and leaves serfnodes_by_id.json;
//! 7. stop: `docker stop` of a parent exits 0, leaves the cluster and no
//!    child container behind;
//! 8. daemon restart: the serfnode daemon of a parent is killed and comes
//!    back while a child reads its files in a loop: no read fails, the
//!    child is kept (not replaced) and follows the new daemon.
//!
//! Needs the images of scripts/build-images and a Docker Engine that allows
//! /dev/fuse and SYS_ADMIN; fails (does not skip) without them. Everything
//! created is removed on drop, also on failure (see tests/support/docker.rs).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::Value;
use serfnode_testkit::wait_for_every;
use support::docker::{
    busybox_image, debian_image, docker, docker_ok, exec_json, exec_sh, inspect, try_exec_json,
    wait_status, Cluster, Monitor, Parent, UserEvent, DOCKER_POLL, LABEL_CHILD, LABEL_PARENT,
};
use support::{Checks, Clock};

/// For anything that starts containers or waits for gossip; generous for a
/// 2-core machine running 8 containers.
const START: Duration = Duration::from_secs(90);
const T: Duration = Duration::from_secs(45);

/// A child in a serfnode.yml: name, image, command.
struct ChildDef<'a>(&'a str, String, &'a [&'a str]);

fn manifest(role: &str, children: &[ChildDef]) -> String {
    let mut yml = format!("serfnode:\n  role: {role}\nchildren:\n");
    for ChildDef(name, image, command) in children {
        let command: Vec<String> = command.iter().map(|a| format!("{a:?}")).collect();
        yml += &format!(
            "  - {name}:\n      image: {image}\n      command: [{}]\n",
            command.join(", ")
        );
    }
    yml
}

/// `Ok` when `info` (Node info) describes parent `p` with role `role`.
fn node_info_matches(info: &Value, p: &Parent, role: &str) -> Result<(), String> {
    let want = [
        ("id", p.name.as_str()),
        ("role", role),
        ("serf_ip", p.ip.as_str()),
        ("serf_port", "7946"),
        ("service_ip", p.ip.as_str()),
    ];
    for (key, value) in want {
        if info[key] != value {
            return Err(format!("{key} should be {value:?}: {info}"));
        }
    }
    Ok(())
}

/// serfnodes_by_id.json in `child` lists exactly `nodes`, each as it should.
fn lists_exactly(child: &str, nodes: &[(&Parent, &str)]) -> Result<Value, String> {
    let by_id = try_exec_json(child, "/serfnode/serfnodes_by_id.json")?;
    let obj = by_id.as_object().ok_or(format!("not an object: {by_id}"))?;
    if obj.len() != nodes.len() {
        return Err(format!(
            "{} members, want {}: {by_id}",
            obj.len(),
            nodes.len()
        ));
    }
    for (p, role) in nodes {
        let info = obj
            .get(&p.name)
            .ok_or(format!("{} missing: {by_id}", p.name))?;
        node_info_matches(info, p, role)?;
    }
    Ok(by_id)
}

/// The child's argv as Docker runs it: Entrypoint + Cmd.
fn argv(inspect: &Value) -> Vec<String> {
    let part = |k: &str| -> Vec<String> {
        inspect["Config"][k]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| s.as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut v = part("Entrypoint");
    v.extend(part("Cmd"));
    v
}

/// Checks what Docker says about child `child` of `p`, started with
/// `command`, and what the child's own files say about itself.
fn check_child(checks: &Checks, p: &Parent, child: &str, command: &[&str]) {
    let name = p.child(child);
    let i = inspect(&name);
    let labels = &i["Config"]["Labels"];
    checks.eq(&labels[LABEL_PARENT], p.id.as_str(), || {
        format!("{name}: label {LABEL_PARENT}")
    });
    checks.eq(&labels[LABEL_CHILD], child, || {
        format!("{name}: label {LABEL_CHILD}")
    });
    let mode = i["HostConfig"]["NetworkMode"].as_str().unwrap_or_default();
    let netns = mode.strip_prefix("container:").unwrap_or_default();
    checks.check(netns == p.id || netns == p.name, || {
        format!(
            "{name} should run with --net container:{} but NetworkMode is {mode:?}",
            p.name
        )
    });
    let args = argv(&i);
    let sep = args.iter().position(|a| a == "--");
    checks.check(
        args.first().map(String::as_str) == Some("/serfnode-share/serfnode")
            && args.get(1).map(String::as_str) == Some("child")
            && sep.is_some_and(|s| args[s + 1..] == *command),
        || {
            format!(
                "{name} should run `/serfnode-share/serfnode child ... -- {}`, runs {args:?}",
                command.join(" ")
            )
        },
    );

    let me = exec_json(&name, "/serfnode/me.json");
    checks.eq(&me["id"], p.name.as_str(), || {
        format!("me.json in {name}: id")
    });
    checks.eq(&me["inspect"]["Name"], format!("/{name}"), || {
        format!("me.json in {name}: inspect.Name (the child's own inspect)")
    });
    checks.eq(&me["inspect"]["Id"], i["Id"].clone(), || {
        format!("me.json in {name}: inspect.Id (the child's own id)")
    });
    checks.eq(&exec_json(&name, "/me.json"), me.clone(), || {
        format!("/me.json in {name} vs /serfnode/me.json")
    });
    let parent = exec_json(&name, "/serfnode/parent.json");
    checks.eq(&parent["id"], p.name.as_str(), || {
        format!("parent.json in {name}: id")
    });
    checks.eq(&parent["inspect"]["Id"], p.id.as_str(), || {
        format!(
            "parent.json in {name}: inspect.Id should be the parent's (the child's is {})",
            i["Id"]
        )
    });
    let status = exec_json(&name, "/serfnode/status.json");
    checks.eq(&status["agent"]["connected"], true, || {
        format!("status.json in {name}: agent.connected ({status})")
    });
    checks.eq(&status["node"], p.name.as_str(), || {
        format!("status.json in {name}: node")
    });
}

/// The address `getent hosts NAME` gives in `container`.
fn getent(container: &str, name: &str) -> Result<String, String> {
    let out = exec_sh(container, &format!("getent hosts {name}"))?;
    out.split_whitespace()
        .next()
        .map(String::from)
        .ok_or(format!("empty getent output for {name}"))
}

/// The `container` events of child `child` of `p` seen by the monitor.
/// The `container` events `p` raised about `child`, in the order `p` raised
/// them (their Lamport times; gossip brings them in any order).
fn container_events<'a>(events: &'a [UserEvent], p: &Parent, child: &str) -> Vec<&'a Value> {
    let mut seen: Vec<(u64, &Value)> = events
        .iter()
        .filter(|e| e.name == "container")
        .filter_map(|e| Some((e.ltime.expect("a user event's LTime"), e.payload.as_ref()?)))
        .filter(|(_, v)| v["node"] == p.name.as_str() && v["child"] == child)
        .collect();
    seen.sort_by_key(|(ltime, _)| *ltime);
    seen.into_iter().map(|(_, v)| v).collect()
}

#[test]
fn three_parents_serve_their_children_through_events_crashes_restarts_partitions_and_stops() {
    let clock = Clock::new("containers test");
    let checks = Checks::default();
    let mut cluster = Cluster::new();
    clock.phase(&format!(
        "network {} ({}) created",
        cluster.network, cluster.subnet
    ));

    // `old` and `new` share role web; `old` is older but sorts after `new`
    // by name, so resolving `web` to `old` shows age decides, not the name.
    const SLEEP_DEB: &[&str] = &["sleep", "infinity"];
    const SLEEP_BB: &[&str] = &["sleep", "3600"];
    const CRASH: &[&str] = &["sh", "-c", "sleep 1; exit 3"];
    // old's Debian child has a handler for `hello`, run inside that child.
    let handlers = tempfile::tempdir().unwrap();
    let hello = handlers.path().join("hello");
    std::fs::write(
        &hello,
        "#!/bin/sh\n{ cat; echo \" $SERFNODE_FROM_NODE/$SERFNODE_FROM_CHILD $SERF_SELF_NAME\"; } > /tmp/handled.tmp\nmv /tmp/handled.tmp /tmp/handled-hello\n",
    )
    .unwrap();
    std::fs::set_permissions(&hello, std::fs::Permissions::from_mode(0o755)).unwrap();
    let old_yml = manifest(
        "web",
        &[
            ChildDef("deb", debian_image(), SLEEP_DEB),
            ChildDef("bb", busybox_image(), SLEEP_BB),
        ],
    )
    .replace(
        "  - deb:\n",
        &format!(
            "  - deb:\n      handlers: /handlers\n      volumes: [\"{}:/handlers:ro\"]\n",
            handlers.path().display()
        ),
    )
    // old's busybox child may raise hello-* events only, and ask nothing.
    .replace(
        "  - bb:\n",
        "  - bb:\n      allow: {events: [\"hello-*\"], queries: []}\n",
    );
    let old = cluster.start_parent("old", "web", None, &old_yml);
    let (old_deb, old_bb) = (old.child("deb"), old.child("bb"));
    // Its agent (and so its `timestamp`) must start before the others'.
    wait_for_every(DOCKER_POLL, START, "old's first child to list old", || {
        lists_exactly(&old_deb, &[(&old, "web")])
    });
    clock.phase("old is up, its child lists it");

    let db = cluster.start_parent(
        "db",
        "db",
        Some(&old),
        &manifest("db", &[ChildDef("bb", busybox_image(), SLEEP_BB)]),
    );
    let db_bb = db.child("bb");
    // Every user event node db receives, from before `new` starts.
    let monitor = Monitor::start(&db.name, START);
    clock.phase("db is up, serf monitor runs in it");

    let new = cluster.start_parent(
        "new",
        "web",
        Some(&old),
        &manifest(
            "web",
            &[
                ChildDef("deb", debian_image(), SLEEP_DEB),
                ChildDef("crash", busybox_image(), CRASH),
            ],
        ),
    );
    let (new_deb, new_crash) = (new.child("deb"), new.child("crash"));
    let all = [(&old, "web"), (&db, "db"), (&new, "web")];
    // The crashing child's first container: its restarts must keep it.
    let crash_id = wait_for_every(
        DOCKER_POLL,
        START,
        &format!("{new_crash} to be created"),
        || {
            let out = docker(&["inspect", "--format", "{{.Id}}", &new_crash]);
            out.status
                .success()
                .then(|| Value::from(String::from_utf8_lossy(&out.stdout).trim()))
                .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
        },
    );

    // 1. files
    for child in [&old_deb, &old_bb, &db_bb, &new_deb] {
        wait_for_every(
            DOCKER_POLL,
            START,
            &format!("{child} to list all three nodes"),
            || lists_exactly(child, &all),
        );
    }
    clock.phase("files: all four children list the three nodes");
    for (p, child, command) in [
        (&old, "deb", SLEEP_DEB),
        (&old, "bb", SLEEP_BB),
        (&db, "bb", SLEEP_BB),
        (&new, "deb", SLEEP_DEB),
    ] {
        check_child(&checks, p, child, command);
    }
    for child in [&old_deb, &old_bb, &db_bb, &new_deb] {
        let roles = exec_json(child, "/serfnode/serfnodes_by_role.json");
        let ids = |role: &str| -> Vec<String> {
            roles[role]
                .as_array()
                .unwrap_or_else(|| panic!("no role {role} in {child}: {roles}"))
                .iter()
                .map(|n| n["id"].as_str().unwrap_or_default().to_owned())
                .collect()
        };
        checks.check(ids("web") == [old.name.as_str(), new.name.as_str()], || {
            format!("web in {child} should be [old, new], oldest first: {roles}")
        });
        checks.check(ids("db") == [db.name.as_str()], || {
            format!("db in {child}: {roles}")
        });
        checks.check(roles.as_object().map(|o| o.len()) == Some(2), || {
            format!("roles in {child}: {roles}")
        });
    }
    let children = exec_json(&old.name, "/serfnode/children_by_name.json");
    for child in ["deb", "bb"] {
        let info = children
            .get(old.child(child))
            .or_else(|| children.get(child))
            .cloned()
            .unwrap_or_default();
        checks.eq(&info["id"], old.name.as_str(), || {
            format!("children_by_name.json of old: {child}.id ({children})")
        });
        checks.eq(
            &info["inspect"]["Name"],
            format!("/{}", old.child(child)),
            || format!("children_by_name.json of old: {child}.inspect.Name"),
        );
    }
    clock.phase("files: roles, me.json, parent.json, labels, netns, entrypoints checked");

    // 2. hosts
    for child in [&old_deb, &new_deb] {
        wait_for_every(
            DOCKER_POLL,
            T,
            &format!("getent hosts web/db in {child}"),
            || {
                let (web, dbip) = (getent(child, "web")?, getent(child, "db")?);
                if web == old.ip && dbip == db.ip {
                    Ok(())
                } else {
                    Err(format!(
                        "web → {web} (want old {}), db → {dbip} (want {}); new is {}",
                        old.ip, db.ip, new.ip
                    ))
                }
            },
        );
    }
    // The busybox child has no getent: it shares the same /etc/hosts.
    let hosts = exec_sh(&db_bb, "cat /etc/hosts").unwrap();
    assert!(
        hosts.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f == [old.ip.as_str(), "web"]
        }),
        "/etc/hosts in {db_bb} lacks `{} web`:\n{hosts}",
        old.ip
    );
    clock.phase("hosts: web resolves to old (the oldest), db to db");

    // Children share the parent's loopback, so its agent's RPC port is in
    // their reach: it must refuse anyone without the key, which only the
    // parent's own filesystem holds.
    let refused = exec_sh(&old.name, "serf members -rpc-addr=127.0.0.1:7373");
    checks.check(
        refused.as_ref().is_err_and(|e| e.contains("uthentication")),
        || format!("rpc without the key in {}: {refused:?}", old.name),
    );
    let keyless = exec_sh(&old_deb, "test ! -e /var/lib/serfnode/rpc-auth");
    checks.check(keyless.is_ok(), || format!("{old_deb} can see the rpc key"));
    clock.phase("rpc: the agent refuses requests without the parent's key");

    // 3. events written in a child of old, seen on db.
    exec_sh(&old_deb, r#"echo '["hello",{"n":1}]' > /serfnode/parent"#).unwrap();
    exec_sh(
        &old_bb,
        r#"echo '["hello-bb",{"from":"busybox"}]' > /serfnode/parent"#,
    )
    .unwrap();
    let hello = monitor.wait_event(T, "hello", |p| *p == serde_json::json!({"n": 1}));
    let hello_bb = monitor.wait_event(T, "hello-bb", |p| {
        *p == serde_json::json!({"from": "busybox"})
    });
    // Each event says which node and which child raised it.
    for (event, child) in [(&hello, "deb"), (&hello_bb, "bb")] {
        let want = serfnode::event::Raiser {
            node: old.name.clone(),
            child: Some(child.into()),
        };
        checks.check(event.from.as_ref() == Some(&want), || {
            format!("{} came from {:?}, not {want:?}", event.name, event.from)
        });
    }
    clock.phase("events: two child writes on old arrived on db, naming their child");

    // 3b. the events at work inside children: old's deb ran its own handler
    // for `hello`; a child's journal shows the event and who raised it; a
    // child asks the cluster a query by reading a file.
    let handled = wait_for_every(
        DOCKER_POLL,
        T,
        "the hello handler in old's deb child",
        || exec_sh(&old_deb, "cat /tmp/handled-hello"),
    );
    checks.check(
        handled.trim() == format!(r#"{{"n":1}} {}/deb {}"#, old.name, old.name),
        || format!("hello handler in {old_deb} got {handled:?}"),
    );
    let journal = wait_for_every(DOCKER_POLL, T, "hello in new's deb journal", || {
        let text = exec_sh(&new_deb, "cat /serfnode/events")?;
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["name"] == "hello")
            .ok_or(text)
    });
    checks.check(
        journal["from"] == serde_json::json!({"node": old.name, "child": "deb"}),
        || format!("journal line in {new_deb}: {journal}"),
    );
    let answers = exec_sh(&db_bb, "cat /serfnode/query/where/web")
        .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| format!("{e}: {t}")));
    checks.check(
        answers.as_ref().is_ok_and(|a| {
            a["complete"] == true
                && a["responses"][&old.name]["id"] == old.name.as_str()
                && a["responses"][&new.name]["role"] == "web"
                && a["responses"].as_object().is_some_and(|r| r.len() == 2)
        }),
        || format!("query where/web from {db_bb}: {answers:?}"),
    );
    clock.phase("handlers, journal and queries work inside children");

    // 3c. a child is held to its allow list (EACCES), and its identity
    // token shows in no file.
    let denied = exec_sh(&old_bb, r#"echo '["nope",1]' > /serfnode/parent"#);
    checks.check(
        denied
            .as_ref()
            .is_err_and(|e| e.contains("ermission denied")),
        || format!("{old_bb} raising an event outside its allow list: {denied:?}"),
    );
    let asked = exec_sh(&old_bb, "cat /serfnode/query/where/web");
    checks.check(
        asked
            .as_ref()
            .is_err_and(|e| e.contains("ermission denied")),
        || format!("{old_bb} asking a query outside its allow list: {asked:?}"),
    );
    for (container, file) in [
        (&old.name, "/serfnode/children_by_name.json"),
        (&old_deb, "/serfnode/me.json"),
    ] {
        let text = exec_sh(container, &format!("cat {file}")).unwrap_or_default();
        checks.check(
            !text.is_empty() && !text.contains("SERFNODE_CHILD_TOKEN"),
            || format!("{file} in {container} shows a child token or nothing"),
        );
    }
    clock.phase("allow lists: EACCES outside them; tokens in no file");

    // 4. crash: restarts of the same container, events on db.
    let events = wait_for_every(
        DOCKER_POLL,
        T,
        "container events exited(3) then started of new's crash child",
        || {
            let events = monitor.user_events();
            let seen = container_events(&events, &new, "crash");
            let exited = seen
                .iter()
                .position(|v| v["state"] == "exited" && v["exit_code"] == 3);
            match exited {
                Some(i) if seen[i + 1..].iter().any(|v| v["state"] == "started") => {
                    Ok(seen.into_iter().cloned().collect::<Vec<Value>>())
                }
                _ => Err(format!("so far: {seen:?}")),
            }
        },
    );
    for v in &events {
        assert_eq!(v["container"], new_crash.as_str(), "{v}");
        match v["state"].as_str() {
            Some("started") => assert!(v["exit_code"].is_null(), "{v}"),
            Some("exited") => assert_eq!(v["exit_code"], 3, "{v}"),
            _ => panic!("unexpected state in {v}"),
        }
    }
    assert_eq!(
        inspect(&new_crash)["Id"],
        crash_id,
        "the crashing child was replaced, not restarted"
    );
    assert!(
        monitor.saw_log_line("container"),
        "no `user-event: container` line"
    );
    clock.phase(&format!(
        "crash: {} container events of new-crash seen on db",
        events.len()
    ));

    // 4b. removed: a child container removed behind serfnode's back is
    // created again under its name (a new container), not retried forever.
    let deb_id = inspect(&new_deb)["Id"].clone();
    docker_ok(&["rm", "-f", &new_deb]);
    let recreated = wait_for_every(
        DOCKER_POLL,
        START,
        &format!("{new_deb} created again and running"),
        || {
            let out = docker(&["inspect", &new_deb]);
            if !out.status.success() {
                return Err("not there yet".to_string());
            }
            let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
            let v = v[0].clone();
            match (&v["Id"], &v["State"]["Running"]) {
                (id, Value::Bool(true)) if *id != deb_id => Ok(v),
                (id, running) => Err(format!("id {id}, running {running}")),
            }
        },
    );
    assert_eq!(
        recreated["Config"]["Labels"][LABEL_CHILD], "deb",
        "the new container is the child deb"
    );
    wait_for_every(
        DOCKER_POLL,
        T,
        "children_by_name.json of new to show the new deb",
        || {
            let v = try_exec_json(&new.name, "/serfnode/children_by_name.json")?;
            match &v["deb"]["inspect"]["Id"] {
                id if *id == recreated["Id"] => Ok(()),
                id => Err(format!("deb is {id}")),
            }
        },
    );
    wait_for_every(DOCKER_POLL, T, "the new deb to read its files", || {
        try_exec_json(&new_deb, "/serfnode/serfnodes_by_id.json").map(|_| ())
    });
    wait_for_every(
        DOCKER_POLL,
        T,
        "container events exited then started of new's deb",
        || {
            let events = monitor.user_events();
            let seen = container_events(&events, &new, "deb");
            match seen.iter().position(|v| v["state"] == "exited") {
                Some(i) if seen[i + 1..].iter().any(|v| v["state"] == "started") => Ok(()),
                _ => Err(format!("so far: {seen:?}")),
            }
        },
    );
    clock.phase("removed: new-deb created again as a new container");

    // 5. partition: new disconnected, then reconnected at its address.
    docker_ok(&["network", "disconnect", &cluster.network, &new.name]);
    wait_status(&old_deb, &new.name, "failed", T);
    clock.phase("partition: new failed on old");
    docker_ok(&[
        "network",
        "connect",
        "--ip",
        &new.ip,
        &cluster.network,
        &new.name,
    ]);
    wait_status(&old_deb, &new.name, "alive", START);
    wait_status(&db_bb, &new.name, "alive", T);
    wait_for_every(
        DOCKER_POLL,
        T,
        "old-deb to list the three nodes again",
        || lists_exactly(&old_deb, &all),
    );
    clock.phase("partition: new alive again after reconnect");

    // 6. kill: new failed, then gone from serfnodes_by_id.json.
    docker_ok(&["kill", &new.name]);
    for child in [&old_deb, &db_bb] {
        wait_status(child, &new.name, "failed", T);
        wait_for_every(
            DOCKER_POLL,
            T,
            &format!("{child} to list only old and db"),
            || lists_exactly(child, &[(&old, "web"), (&db, "db")]),
        );
    }
    wait_for_every(DOCKER_POLL, T, "web still resolving to old", || {
        (getent(&old_deb, "web")? == old.ip)
            .then_some(())
            .ok_or_else(|| "web moved".to_string())
    });
    clock.phase("kill: new failed and gone on old and db");

    // 7. stop: db leaves, exits 0, no child left.
    drop(monitor);
    let t = Instant::now();
    docker_ok(&["stop", "-t", "30", &db.name]);
    let took = t.elapsed();
    let state = inspect(&db.name)["State"].clone();
    assert_eq!(
        state["ExitCode"], 0,
        "db's parent exited {} after docker stop ({took:?})",
        state["ExitCode"]
    );
    let left = cluster.children_of(&db);
    assert!(
        left.is_empty(),
        "docker stop of db ({took:?}) left children behind: {left:?}"
    );
    wait_status(&old_deb, &db.name, "left", T);
    clock.phase(&format!(
        "stop: db exited 0 in {took:.1?}, no child left, left the cluster"
    ));
    // 8. the daemon in old killed and restarted while old-deb reads. Last,
    // because a failed restart may take old down: every other step has run.
    let daemon_pid = || -> Result<String, String> {
        let out = exec_sh(&old.name, "pgrep -f 'serfnode agen[t]'").inspect_err(|_| {
            let state = inspect(&old.name)["State"].clone();
            assert!(
                state["Running"] == true,
                "parent {} is not running (exit code {}) after its daemon was killed",
                old.name,
                state["ExitCode"]
            );
        })?;
        let pids: Vec<&str> = out.split_whitespace().collect();
        match pids[..] {
            [pid] => Ok(pid.to_owned()),
            _ => Err(format!("want one `serfnode agent` process, found {pids:?}")),
        }
    };
    let before = wait_for_every(DOCKER_POLL, T, "the serfnode daemon in old", daemon_pid);
    let deb_id = inspect(&old_deb)["Id"].clone();
    let reader_name = old_deb.clone();
    let reader = std::thread::spawn(move || {
        docker(&[
            "exec",
            &reader_name,
            "sh",
            "-c",
            "rm -f /tmp/stop; echo start=$(date +%s.%N); n=0; f=0; \
             while [ ! -e /tmp/stop ] && [ $n -lt 200000 ]; do \
               if cat /serfnode/serfnodes_by_id.json >/dev/null; then n=$((n+1)); \
               else f=$((f+1)); echo FAIL; fi; \
             done; echo end=$(date +%s.%N) reads=$n failures=$f",
        ])
    });
    std::thread::sleep(Duration::from_secs(2));
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    exec_sh(&old.name, &format!("kill -9 {before}")).unwrap();
    let after = wait_for_every(
        DOCKER_POLL,
        T,
        "a new serfnode daemon in old",
        || match daemon_pid()? {
            pid if pid != before => Ok(pid),
            _ => Err("still the killed one".to_string()),
        },
    );
    wait_for_every(DOCKER_POLL, T, "old's own /serfnode served again", || {
        let s = try_exec_json(&old.name, "/serfnode/status.json")?;
        (s["agent"]["connected"] == true)
            .then_some(())
            .ok_or(format!("{s}"))
    });
    wait_for_every(DOCKER_POLL, T, "old-deb's mount connected again", || {
        let s = try_exec_json(&old_deb, "/serfnode/status.json")?;
        (s["agent"]["connected"] == true && s["agent"]["stale"] == false)
            .then_some(())
            .ok_or(format!("{s}"))
    });
    std::thread::sleep(Duration::from_secs(1));
    let _ = exec_sh(&old_deb, "touch /tmp/stop");
    let out = reader.join().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |key: &str| -> Option<f64> {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
    };
    let deb_id_after = inspect(&old_deb)["Id"].clone();
    checks.check(deb_id_after == deb_id, || {
        format!(
            "daemon restart: the restarted daemon replaced child {old_deb} \
             ({deb_id} → {deb_id_after}) instead of keeping it, killing its reader"
        )
    });
    checks.check(out.status.success() && field("end").is_some(), || {
        format!(
            "daemon restart: the reader in {old_deb} did not finish ({}): {text}",
            out.status
        )
    });
    checks.check(
        field("failures") == Some(0.0) && !text.contains("FAIL"),
        || format!("daemon restart: reads failed in {old_deb}: {text}"),
    );
    if let (Some(start), Some(end)) = (field("start"), field("end")) {
        checks.check(start < killed_at && killed_at < end, || {
            format!("daemon restart: the reads did not span the kill (at {killed_at}): {text}")
        });
    }
    checks.check(field("reads").unwrap_or(0.0) >= 100.0, || {
        format!("daemon restart: too few reads in {old_deb}: {text}")
    });
    clock.phase(&format!(
        "daemon restart: pid {before} → {after}; reader in {old_deb}: {}",
        text.trim().replace('\n', " ")
    ));
    // The new daemon (and its agent) feed the child again: old is alone
    // now (new killed, db stopped).
    wait_for_every(
        DOCKER_POLL,
        T,
        "old-deb to list old after the restart",
        || lists_exactly(&old_deb, &[(&old, "web")]),
    );
    clock.phase("daemon restart: old-deb follows the new daemon");

    checks.assert_none_failed();
}
