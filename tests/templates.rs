//! `serfnode render` against a real daemon: a real `serfnode agent` with
//! its real `serf agent`, two raw `serf agent`s of role `web` joined to it,
//! and templates rendered through the command from the node's files. Errors
//! name the template's file, line and column and exit non-zero.

mod support;

use std::path::Path;
use std::time::Duration;

use support::node::{operator, Daemon, DaemonOpts};
use support::serf::{Agent, AgentOpts};

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
