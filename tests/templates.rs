//! Templates against a real daemon: a real `serfnode agent` with its real
//! `serf agent`, raw `serf agent`s of role `web` joined to it. `serfnode
//! render` renders through the command from the node's files (errors name
//! the template's file, line and column and exit non-zero); the manifest's
//! templates are served live at `templates/<name>`, written to their
//! destinations and their commands run: a version kept while the output is
//! unchanged, POLLPRI on change, the last good output kept through render
//! errors, a parse error that stops the start, a bind-mounted destination
//! written in place, `wait` min and max, commands serialized and coalesced.

mod support;

use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::node::{operator, Daemon, DaemonOpts, SERFNODE};
use support::serf::{Agent, AgentOpts};
use support::wait_for;

const T: Duration = Duration::from_secs(30);

const UPSTREAM: &str = r#"upstream web {
  {% for m in alive | role("web") | sort_by("name") %}
  server {{ m | service_addr }};
  {% endfor %}
}
# {{ by_role.web | length }} web of {{ status.total }} members, oldest {{ (alive | role("web") | oldest).id }}
"#;

fn web(node: &Daemon, name: &str, port: u16, timestamp: &str) -> Agent {
    Agent::start(AgentOpts {
        join: Some(node.bind_addr()),
        ..AgentOpts::named(name)
            .tag("role", "web")
            .tag("service_port", &port.to_string())
            .tag("timestamp", timestamp)
    })
}

fn render(node: &Daemon, source: &Path, stdin: &str) -> (bool, String, String) {
    let mount = node.mount.to_str().unwrap();
    let source = source.to_str().unwrap();
    operator(&["render", source, "--mount", mount], stdin.as_bytes())
}

#[test]
fn render_prints_a_template_against_the_live_view_and_names_errors() {
    let node = Daemon::start(DaemonOpts {
        role: "lb".into(),
        ..DaemonOpts::default()
    });
    let a = web(&node, "web-a", 8080, "100");
    let b = web(&node, "web-b", 8081, "200");
    node.wait_json("serfnodes_by_role.json", T, |v| {
        v["web"].as_array().is_some_and(|w| w.len() == 2)
    });
    let dir = tempfile::tempdir().unwrap();

    // The upstream list: both web members, with their service ports.
    let upstream = dir.path().join("upstream.conf.j2");
    std::fs::write(&upstream, UPSTREAM).unwrap();
    let (ok, out, err) = render(&node, &upstream, "");
    assert!(ok, "{err}");
    assert_eq!(
        out,
        format!(
            "upstream web {{\n  server {}:8080;\n  server {}:8081;\n}}\n# 2 web of 3 members, oldest web-a\n",
            a.ip(),
            b.ip()
        )
    );

    // Live: a member that fails leaves the list.
    let mut b = b;
    b.kill();
    node.wait_json("serfnodes_by_role.json", T, |v| {
        v["web"].as_array().is_some_and(|w| w.len() == 1)
    });
    let (ok, out, err) = render(&node, &upstream, "");
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!(
            "upstream web {{\n  server {}:8080;\n}}\n# 1 web of 3",
            a.ip()
        )),
        "{out}"
    );

    // From stdin.
    let (ok, out, err) = render(
        &node,
        Path::new("-"),
        "{{ me.id }}: {{ members | status('alive') | length }}",
    );
    assert!(ok, "{err}");
    assert_eq!(out, format!("{}: 2", node.name));

    // A template that does not parse: its file, line and column; nothing out.
    let bad = dir.path().join("bad.j2");
    std::fs::write(
        &bad,
        "upstream web {\n  {% for m in alive %}\n  server {{ m.id };\n",
    )
    .unwrap();
    let (ok, out, err) = render(&node, &bad, "");
    assert!(!ok, "a bad template exits non-zero: {out}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains(&format!(
            "{}: syntax error: unexpected `}}`, expected end of variable block at line 3 column 18",
            bad.display()
        )),
        "{err}"
    );

    // A misspelled variable is an error at its line, not an empty output.
    std::fs::write(
        &bad,
        "ok\n{% for m in alive | role('web') %}{{ m.service_prot }}{% endfor %}\n",
    )
    .unwrap();
    let (ok, out, err) = render(&node, &bad, "");
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.contains(&format!("{}: undefined value", bad.display()))
            && err.contains("at line 2 column"),
        "{err}"
    );

    // No daemon there: the file it could not read.
    let (ok, _, err) = operator(
        &[
            "render",
            upstream.to_str().unwrap(),
            "--mount",
            dir.path().to_str().unwrap(),
        ],
        b"",
    );
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "cannot read {}",
            dir.path().join("status.json").display()
        )),
        "{err}"
    );
}

/// A daemon of role `lb` reading `manifest` (written to `dir`).
fn with_manifest(dir: &Path, manifest: &str) -> Daemon {
    with_manifest_args(dir, manifest, &[])
}

fn with_manifest_args(dir: &Path, manifest: &str, args: &[&str]) -> Daemon {
    let path = dir.join("serfnode.yml");
    std::fs::write(&path, manifest).unwrap();
    let mut all = vec!["--manifest".to_string(), path.display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    Daemon::start(DaemonOpts {
        role: "lb".into(),
        args: all,
        ..DaemonOpts::default()
    })
}

fn text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Whether `fd` has POLLPRI after waiting up to `ms`.
fn pollpri(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLPRI,
        revents: 0,
    };
    // SAFETY: poll(2) on one pollfd we own.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n == 1 && p.revents & libc::POLLPRI != 0
}

#[test]
fn a_template_is_served_live_keeps_its_version_while_unchanged_and_wakes_pollers() {
    let dir = tempfile::tempdir().unwrap();
    let node = with_manifest(
        dir.path(),
        "templates:\n  - name: webs\n    template: |\n      {% for m in alive | role('web') | sort_by('name') %}\n      {{ m.id }}\n      {% endfor %}\n",
    );
    let file = node.path("templates/webs");
    let _a = web(&node, "web-a", 8080, "100");
    wait_for(T, "web-a in templates/webs", || text(&file) == "web-a\n");
    let listing: Vec<String> = std::fs::read_dir(node.path("templates"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(listing, ["webs"]);

    let open = std::fs::File::open(&file).unwrap();
    let ino = open.metadata().unwrap().ino();
    // A change the template does not show: the view moves on, the file
    // keeps its version (same inode) and its pollers sleep.
    let generation = node.json("status.json")["generation"].as_u64().unwrap();
    let _db = Agent::start(AgentOpts {
        join: Some(node.bind_addr()),
        ..AgentOpts::named("db-1").tag("role", "db")
    });
    node.wait_json("status.json", T, |s| {
        s["total"] == 3 && s["templates"]["webs"]["ok"] == true
    });
    assert!(node.json("status.json")["generation"].as_u64().unwrap() > generation);
    assert_eq!(std::fs::metadata(&file).unwrap().ino(), ino, "version kept");
    assert!(!pollpri(open.as_raw_fd(), 0), "no POLLPRI without a change");

    // A change it shows: POLLPRI, new bytes at the next open, the old fd
    // still reads its whole old version.
    let _b = web(&node, "web-b", 8081, "200");
    assert!(pollpri(open.as_raw_fd(), 30_000), "POLLPRI on change");
    assert_eq!(text(&file), "web-a\nweb-b\n");
    assert_ne!(std::fs::metadata(&file).unwrap().ino(), ino);
    let mut old = String::new();
    std::io::Read::read_to_string(&mut &open, &mut old).unwrap();
    assert_eq!(old, "web-a\n");
    let status = node.json("status.json");
    let t = &status["templates"]["webs"];
    assert_eq!(t["ok"], true);
    assert_eq!(t["error"], serde_json::Value::Null);
    assert!(t["rendered_at"].as_f64().unwrap() > 1.7e9);
}

#[test]
fn a_render_error_keeps_the_last_good_output_everywhere_and_is_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("first.txt");
    let runs = dir.path().join("runs");
    let node = with_manifest(
        dir.path(),
        &format!(
            "templates:\n  - name: first\n    template: \"{{{{ by_role.web[0].id }}}}\\n\"\n    destination: {}\n    command: [sh, -c, 'cat {} >> {}']\n",
            dest.display(),
            dest.display(),
            runs.display()
        ),
    );
    let file = node.path("templates/first");
    let mut a = web(&node, "web-a", 8080, "100");
    wait_for(T, "the command's first run", || text(&runs) == "web-a\n");
    assert_eq!(text(&file), "web-a\n");

    // No web member: `by_role.web` is undefined, the render fails (as it
    // did at the start, before web-a).
    let logged_before = node.log().matches("its last good output stands").count();
    a.stop();
    let status = node.wait_json("status.json", T, |s| s["templates"]["first"]["ok"] == false);
    let error = status["templates"]["first"]["error"].as_str().unwrap();
    assert!(
        error.contains("undefined") && error.contains("at line 1 column"),
        "{error}"
    );
    assert_eq!(status["templates"]["first"]["command"]["runs"], 1);
    // Another change with the same error: still one log line.
    let _db = Agent::start(AgentOpts {
        join: Some(node.bind_addr()),
        ..AgentOpts::named("db-1").tag("role", "db")
    });
    node.wait_json("status.json", T, |s| s["members"]["alive"] == 2);
    node.wait_json("status.json", T, |s| s["templates"]["first"]["ok"] == false);
    assert_eq!(
        text(&file),
        "web-a\n",
        "the live file keeps the last good output"
    );
    assert_eq!(text(&dest), "web-a\n", "so does the destination");
    assert_eq!(text(&runs), "web-a\n", "and no command ran");
    let logged = node.log().matches("its last good output stands").count();
    assert_eq!(logged - logged_before, 1, "{}", node.log());

    // Good again.
    let _b = web(&node, "web-b", 8081, "200");
    wait_for(T, "the command's second run", || {
        text(&runs) == "web-a\nweb-b\n"
    });
    assert_eq!(text(&file), "web-b\n");
    node.wait_json("status.json", T, |s| s["templates"]["first"]["ok"] == true);
}

#[test]
fn a_template_that_does_not_parse_stops_the_start_naming_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("bad.conf.j2");
    std::fs::write(&source, "ok\n{% for m in alive %}\n{{ m.id }\n").unwrap();
    let manifest = dir.path().join("serfnode.yml");
    std::fs::write(
        &manifest,
        format!(
            "templates:\n  - name: bad\n    source: {}\n",
            source.display()
        ),
    )
    .unwrap();
    let ip = serfnode_testkit::unique_ip();
    let mount = dir.path().join("mnt");
    let out = std::process::Command::new(SERFNODE)
        .args(["agent", "--node", "bad", "--hosts-file", "none"])
        .arg(format!("--bind={ip}:7946"))
        .arg(format!("--rpc-addr={ip}:7373"))
        .arg("--mount")
        .arg(&mount)
        .arg("--manifest")
        .arg(&manifest)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "{}: syntax error: unexpected `}}`, expected end of variable block at line 3 column 9",
            source.display()
        )),
        "{err}"
    );
    assert!(!support::node::is_mounted(&mount), "nothing was mounted");
}

/// `mount --bind` of `over` onto `target`, undone on drop.
struct BindMount(PathBuf);

impl BindMount {
    fn new(over: &Path, target: &Path) -> BindMount {
        let ok = std::process::Command::new("mount")
            .arg("--bind")
            .arg(over)
            .arg(target)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount --bind {} {}", over.display(), target.display());
        BindMount(target.to_owned())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_destination_on_a_bind_mounted_file_is_rewritten_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("upstreams.conf");
    let backing = dir.path().join("backing.conf");
    std::fs::write(&dest, "").unwrap();
    std::fs::write(
        &backing,
        "a much longer line that the template's output replaces\n",
    )
    .unwrap();
    let _bind = BindMount::new(&backing, &dest);
    // What a rename onto it meets.
    let probe = dir.path().join("probe");
    std::fs::write(&probe, "x").unwrap();
    assert_eq!(
        std::fs::rename(&probe, &dest).unwrap_err().raw_os_error(),
        Some(libc::EBUSY)
    );
    let ino = std::fs::metadata(&dest).unwrap().ino();
    let node = with_manifest(
        dir.path(),
        &format!(
            "templates:\n  - name: up\n    template: \"{{% for m in alive | role('web') %}}server {{{{ m | service_addr }}}};\\n{{% endfor %}}\"\n    destination: {}\n    mode: \"0640\"\n",
            dest.display()
        ),
    );
    let a = web(&node, "web-a", 8080, "100");
    let want = format!("server {}:8080;\n", a.ip());
    wait_for(T, "the bind-mounted destination written", || {
        text(&dest) == want
    });
    let meta = std::fs::metadata(&dest).unwrap();
    assert_eq!(meta.ino(), ino, "the same file, written in place");
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!(text(&backing), want, "through the bind mount");
    let b = web(&node, "web-b", 8081, "200");
    let want = format!("server {}:8080;\nserver {}:8081;\n", a.ip(), b.ip());
    wait_for(T, "the destination grown in place", || text(&dest) == want);
    assert!(
        node.log().contains("destination written in place"),
        "{}",
        node.log()
    );
}

/// A web agent whose tag `v` the tests change, and a template showing it.
fn counter_manifest(dest: &Path, runs: &Path, extra: &str) -> String {
    format!(
        "templates:\n  - name: v\n    template: \"{{% for m in members | role('web') %}}{{{{ m.tags.v }}}}{{% endfor %}}\"\n    destination: {}\n    command: [sh, -c, 'echo \"run $(cat {})\" >> {}']\n{extra}",
        dest.display(),
        dest.display(),
        runs.display()
    )
}

/// The lines of `path`, without the run for the output of the start, when
/// no web member was there yet (an empty value).
fn lines(path: &Path) -> Vec<String> {
    text(path)
        .lines()
        .filter(|l| *l != "run ")
        .map(String::from)
        .collect()
}

/// A node whose template counts its command's runs in `runs`, with `wait`,
/// and a web member `web-a` whose tag `v` the template shows, after the
/// first run.
fn counting_node(dir: &Path, runs: &Path, wait: &str) -> (Daemon, Agent) {
    let dest = dir.join("v");
    let node = with_manifest(
        dir,
        &counter_manifest(&dest, runs, &format!("    wait: {wait}\n")),
    );
    let agent = Agent::start(AgentOpts {
        join: Some(node.bind_addr()),
        ..AgentOpts::named("web-a").tag("role", "web").tag("v", "0")
    });
    wait_for(T, "the first run", || lines(runs) == ["run 0"]);
    (node, agent)
}

#[test]
fn wait_min_holds_the_command_until_the_output_is_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let (_node, agent) = counting_node(dir.path(), &runs, "2s:60s");
    // Changes 0.2 s apart, each one shown by the template: never quiet
    // for 2 s until the last.
    for v in 1..=8 {
        agent.set_tags(&[("v", &v.to_string())]);
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for(T, "one run for the burst", || lines(&runs).len() >= 2);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lines(&runs), ["run 0", "run 8"]);
}

#[test]
fn wait_max_runs_the_command_while_changes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let (_node, agent) = counting_node(dir.path(), &runs, "1s:2s");
    // Never quiet for 1 s, for 6 s: only MAX lets a run through.
    for v in 1..=24 {
        agent.set_tags(&[("v", &v.to_string())]);
        std::thread::sleep(Duration::from_millis(250));
    }
    let during = lines(&runs).len() - 1;
    assert!(during >= 1, "a run during the changes: {:?}", lines(&runs));
    wait_for(T, "the last value run", || {
        lines(&runs).last().map(String::as_str) == Some("run 24")
    });
}

#[test]
fn commands_are_serialized_and_coalesced_under_a_burst_of_50_changes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (dest, runs) = (d.join("v"), d.join("runs"));
    // A run holds until the test releases it; a second run while one holds
    // would find the lock taken.
    let script = d.join("reload.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nd={}\nmkdir \"$d/lock\" 2>/dev/null || echo OVERLAP >> \"$d/runs\"\necho \"start $(cat \"$d/v\")\" >> \"$d/runs\"\nwhile [ ! -e \"$d/release\" ]; do sleep 0.05; done\necho end >> \"$d/runs\"\nrmdir \"$d/lock\"\n",
            d.display()
        ),
    )
    .unwrap();
    let manifest = format!(
        "templates:\n  - name: v\n    template: \"{{% for m in members | role('web') %}}{{{{ m.tags.v }}}}{{% endfor %}}\"\n    destination: {}\n    command: [sh, {}]\n",
        dest.display(),
        script.display()
    );
    // The held run must outlast the 50 `serf tags` calls (the command
    // timeout is the handlers').
    let node = with_manifest_args(d, &manifest, &["--handler-timeout", "300"]);
    // The first run is for the output of the start (no web member: empty).
    wait_for(T, "the first run started", || text(&runs) == "start \n");
    let agent = Agent::start(AgentOpts {
        join: Some(node.bind_addr()),
        ..AgentOpts::named("web-a").tag("role", "web").tag("v", "0")
    });
    for v in 1..=50 {
        agent.set_tags(&[("v", &v.to_string())]);
    }
    // Every change reached the view (the live file is not held up).
    let file = node.path("templates/v");
    wait_for(T, "the last change in the live file", || {
        text(&file) == "50"
    });
    std::fs::write(d.join("release"), "").unwrap();
    wait_for(T, "the second run ended", || {
        text(&runs).lines().filter(|l| *l == "end").count() == 2
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(text(&runs), "start \nend\nstart 50\nend\n");
    let status = node.json("status.json");
    assert_eq!(status["templates"]["v"]["command"]["runs"], 2);
    assert_eq!(status["templates"]["v"]["command"]["last_exit"], 0);
}

#[test]
fn a_childs_template_is_rendered_in_the_child_and_signals_its_application() {
    use serfnode::surface::templates::{Body, Signal, TemplateSpec};
    let share = tempfile::tempdir().unwrap();
    let parent = support::child::parent("mother", share.path());
    let dir = tempfile::tempdir().unwrap();
    let (dest, got) = (dir.path().join("peers"), dir.path().join("got"));
    let spec = TemplateSpec {
        name: "peers".into(),
        body: Body::Inline {
            text: "{% for m in alive | sort_by('name') %}{{ m.id }} {% endfor %}\n".into(),
            placement: None,
        },
        destination: Some(dest.clone()),
        mode: None,
        command: None,
        signal: Some(Signal::try_from("HUP".to_string()).unwrap()),
        wait: None,
    };
    let json = serde_json::to_string(&[spec]).unwrap();
    // The application records each signal and what the file says then. It
    // sets its trap only once released, and it is released only after the
    // change reached the destination: the HUP comes while it is still
    // starting, as it can for any application on a loaded machine, and
    // must wait for its handler rather than kill it.
    let (started, release) = (dir.path().join("started"), dir.path().join("release"));
    let app = format!(
        "echo > {}; while [ ! -e {} ]; do sleep 0.05; done; trap 'echo \"HUP $(cat {})\" >> {}' HUP; while :; do sleep 0.05; done",
        started.display(),
        release.display(),
        dest.display(),
        got.display()
    );
    let mut child = support::child::Wrapped::start(
        share.path(),
        "kid",
        &[&format!("--templates={json}")],
        &["sh", "-c", &app],
    );
    wait_for(T, "the child's live file", || {
        let got = std::fs::read_to_string(child.path("templates/peers"));
        match got {
            Ok(t) if t == "mother " => Ok(()),
            other => Err(format!(
                "{other:?} {:?} {:?}",
                std::fs::read_dir(&child.mount)
                    .map(|d| d.map(|e| e.unwrap().file_name()).collect::<Vec<_>>()),
                std::fs::read_dir(child.path("templates"))
                    .map(|d| d.map(|e| e.unwrap().file_name()).collect::<Vec<_>>())
            )),
        }
    });
    wait_for(T, "the destination written in the child", || {
        text(&dest) == "mother "
    });
    wait_for(T, "the application started", || started.exists());
    let _other = Agent::start(AgentOpts {
        join: Some(parent.bind_addr()),
        ..AgentOpts::named("other").tag("role", "db")
    });
    wait_for(T, "the change in the child's destination", || {
        text(&dest) == "mother other "
    });
    std::fs::write(&release, "").unwrap();
    wait_for(T, "the application told of the change", || {
        if let Some(status) = child.child.try_wait().unwrap() {
            panic!(
                "the application ended ({status} of its wrapper): the signal came before its trap"
            );
        }
        text(&got).lines().last() == Some("HUP mother other ")
    });
    let status = child.wait_json("status.json", |s| {
        s["templates"]["peers"]["command"]["runs"].as_u64() >= Some(1)
    });
    assert_eq!(status["templates"]["peers"]["ok"], true, "{status}");
    assert!(
        text(&got).lines().all(|l| l.starts_with("HUP ")),
        "{}",
        text(&got)
    );
}
