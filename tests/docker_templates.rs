//! A child's templates in Docker, as its users run them: a parent container
//! whose manifest gives its child (the Debian test image) two templates,
//! rendered inside the child by its `serfnode child` wrapper. One has a
//! destination and `signal: HUP`: the child's application (a script that
//! records every signal it gets and the file it then reads) is told of each
//! change, and reads the new file. The other runs a `command`, which gets
//! the application's restrictions (no CAP_SYS_ADMIN, no_new_privs). A
//! second parent joining is the change.
//!
//! Needs the images of scripts/build-images; everything created is removed
//! on drop (tests/support/docker.rs).

mod support;

use std::time::Duration;

use serfnode_testkit::wait_for_every;
use support::docker::{debian_image, exec_sh, Cluster, DOCKER_POLL};

const START: Duration = Duration::from_secs(90);

/// Records each HUP and what the destination says at that moment.
const APP: &str =
    "trap 'echo \"HUP $(cat /tmp/peers)\" >> /tmp/got' HUP; while :; do sleep 0.1; done";

fn manifest() -> String {
    format!(
        r#"serfnode:
  role: lb
children:
  - app:
      image: {}
      command: ["sh", "-c", {APP:?}]
      templates:
        - name: peers
          template: "{{% for m in alive | sort_by('name') %}}{{{{ m.id }}}} {{% endfor %}}"
          destination: /tmp/peers
          signal: HUP
        - name: caps
          template: "{{{{ alive | length }}}}"
          command: ["sh", "-c", "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status > /tmp/caps"]
"#,
        debian_image()
    )
}

#[test]
fn a_childs_template_is_rendered_in_the_child_and_hups_its_application() {
    let mut cluster = Cluster::new();
    let first = cluster.start_parent("one", "lb", None, &manifest());
    let child = first.child("app");
    wait_for_every(DOCKER_POLL, START, "the live file in the child", || {
        exec_sh(&child, "cat /serfnode/templates/peers")
            .and_then(|t| (t.trim() == first.name).then_some(()).ok_or(t))
    });
    wait_for_every(DOCKER_POLL, START, "the destination in the child", || {
        exec_sh(&child, "cat /tmp/peers")
            .and_then(|t| (t.trim() == first.name).then_some(()).ok_or(t))
    });

    // A second node: the application is signalled and reads both.
    let second = cluster.start_parent("two", "web", Some(&first), "serfnode:\n  role: web\n");
    let mut names = [first.name.clone(), second.name.clone()];
    names.sort();
    let both = format!("HUP {} {}", names[0], names[1]);
    wait_for_every(
        DOCKER_POLL,
        START,
        "the application's HUP with both nodes",
        || {
            exec_sh(&child, "cat /tmp/got")
                .and_then(|t| t.lines().any(|l| l.trim() == both).then_some(()).ok_or(t))
        },
    );
    let got = exec_sh(&child, "cat /tmp/got").unwrap();
    assert!(got.lines().all(|l| l.starts_with("HUP ")), "{got}");
    let status = exec_sh(&child, "cat /serfnode/status.json").unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["templates"]["peers"]["ok"], true, "{status}");
    assert!(
        status["templates"]["peers"]["command"]["runs"].as_u64() >= Some(1),
        "{status}"
    );

    // The command ran with the application's restrictions.
    let caps = wait_for_every(DOCKER_POLL, START, "the command's record", || {
        exec_sh(&child, "cat /tmp/caps")
    });
    let field = |name: &str| {
        caps.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("{name} in {caps}"))
    };
    let eff = u64::from_str_radix(&field("CapEff:"), 16).unwrap();
    assert_eq!(eff & (1 << 21), 0, "CAP_SYS_ADMIN in the command: {caps}");
    assert_eq!(field("NoNewPrivs:"), "1", "{caps}");
    // The parent has no templates of its own.
    assert!(exec_sh(&first.name, "ls /serfnode/templates").is_err());
}
