//! The write node `parent`, end to end: lines written through the mount
//! become Serf user events seen by another member's agent; every rejection
//! reaches the writer as its errno and sends nothing; a line that fails
//! stops the write with a short count covering exactly what was accepted.

mod support;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use support::node::{raw_write, Daemon, DaemonOpts};
use support::serf::{Agent, AgentOpts};
use support::stream::Observer;

const T: Duration = Duration::from_secs(30);

/// The user events another member's agent receives: name and payload,
/// each checked to travel in the envelope naming the write node's origin.
fn observe(node: &Daemon) -> Observer<(String, String)> {
    Observer::with(node, |name, payload, from| {
        let from = from.expect("events from a write node carry their origin");
        assert_eq!((from.node.as_str(), from.child), ("writer", None));
        (name, payload.to_string())
    })
}

/// Runs `script` in bash, which (unlike dash) names the errno of a failed write.
fn bash(script: &str) -> (bool, String) {
    let out = Command::new("bash").args(["-c", script]).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn lines_become_events_and_errors_reach_the_writer() {
    let a = Daemon::start(DaemonOpts {
        name: "writer".into(),
        ..DaemonOpts::default()
    });
    let b = Daemon::start(DaemonOpts {
        name: "reader".into(),
        join: vec![a.bind_addr()],
        ..DaemonOpts::default()
    });
    b.wait_json("serfnodes_by_id.json", T, |v| {
        v.as_object().unwrap().len() == 2
    });
    let mut seen = observe(&b);
    let node = a.path("parent");
    let p = node.display();

    // echo with `>` and `>>`, printf without a newline.
    assert_eq!(
        bash(&format!(r#"echo '["deploy",{{"v":2}}]' > {p}"#)),
        (true, String::new())
    );
    assert_eq!(seen.next(), ("deploy".into(), r#"{"v":2}"#.into()));
    assert!(bash(&format!(r#"echo '["again", [1, 2]]' >> {p}"#)).0);
    assert_eq!(seen.next(), ("again".into(), "[1,2]".into()));
    assert!(bash(&format!(r#"printf '["bare","x"]' > {p}"#)).0);
    assert_eq!(seen.next(), ("bare".into(), r#""x""#.into()));

    // Several lines in one write arrive in order, none coalesced away.
    let burst: String = (0..5).map(|i| format!("[\"burst\",{i}]\n")).collect();
    assert_eq!(raw_write(&node, burst.as_bytes()), Ok(burst.len()));
    for i in 0..5 {
        assert_eq!(seen.next(), ("burst".into(), i.to_string()));
    }

    // A line split across writes (a stdio buffer boundary) is joined.
    let mut f = std::fs::OpenOptions::new().write(true).open(&node).unwrap();
    f.write_all(br#"["spl"#).unwrap();
    f.write_all(b"it\",\"ok\"]\n").unwrap();
    drop(f);
    assert_eq!(seen.next(), ("split".into(), r#""ok""#.into()));

    // Malformed → EINVAL, as the shell shows it; nothing is sent.
    for bad in [
        "not json",
        r#"["only-name"]"#,
        r#"{"a":1}"#,
        r#"["a/b",1]"#,
        r#"["",1]"#,
    ] {
        let (ok, err) = bash(&format!("echo '{bad}' > {p}"));
        assert!(!ok && err.contains("Invalid argument"), "{bad}: {err}");
    }
    assert_eq!(raw_write(&node, b"\xff\xfe\n"), Err(libc::EINVAL));
    // Over Serf's 512-byte limit (name + payload) → EMSGSIZE.
    let big = format!(r#"["big","{}"]"#, "x".repeat(600));
    let (ok, err) = bash(&format!("echo '{big}' > {p}"));
    assert!(!ok && err.contains("Message too long"), "{err}");
    // Serf also limits the encoded message, and the payload travels in its
    // envelope: name + enveloped payload may take 472 bytes. The largest
    // line that fits is accepted; one byte more is EMSGSIZE.
    let envelope = r#"{"serfnode":{"node":"writer"},"payload":}"#.len();
    let room = 472 - "big".len() - envelope - 2;
    let fits = format!(r#"["big","{}"]"#, "x".repeat(room));
    let over = format!(r#"["big","{}"]"#, "x".repeat(room + 1));
    assert_eq!(
        raw_write(&node, format!("{over}\n").as_bytes()),
        Err(libc::EMSGSIZE)
    );
    assert_eq!(
        raw_write(&node, format!("{fits}\n").as_bytes()),
        Ok(fits.len() + 1)
    );
    assert_eq!(seen.next().0, "big");
    seen.quiet_for(Duration::from_millis(700));

    // A good line then a bad one: a short write covering the good line only;
    // the writer's retry of the rest gets the error.
    let good = "[\"first\",1]\n";
    let mixed = format!("{good}[\"second\"\n[\"third\",3]\n");
    assert_eq!(raw_write(&node, mixed.as_bytes()), Ok(good.len()));
    assert_eq!(
        raw_write(&node, &mixed.as_bytes()[good.len()..]),
        Err(libc::EINVAL)
    );
    assert_eq!(seen.next(), ("first".into(), "1".into()));
    seen.quiet_for(Duration::from_millis(700));

    // Nothing written can be read back: other users get EACCES (mode 0222);
    // root, which bypasses modes, reads an empty file.
    match std::fs::read(&node) {
        Ok(bytes) => assert!(bytes.is_empty(), "write node leaked {} bytes", bytes.len()),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}"),
    }
}

#[test]
fn writes_fail_with_eagain_while_the_agent_is_unreachable() {
    let agent = Agent::start(AgentOpts::default());
    let rpc = agent.rpc_addr();
    let a = Daemon::start(DaemonOpts {
        name: agent.name().to_owned(),
        attach: Some(rpc),
        ..DaemonOpts::default()
    });
    let node = a.path("parent");
    assert_eq!(raw_write(&node, b"[\"up\",1]\n"), Ok(9));
    drop(agent);
    a.wait_json("status.json", T, |v| v["agent"]["connected"] == false);
    assert_eq!(raw_write(&node, b"[\"down\",1]\n"), Err(libc::EAGAIN));
    // Files stay served meanwhile.
    assert!(a
        .json("serfnodes_by_id.json")
        .as_object()
        .unwrap()
        .contains_key(&a.name));
}
