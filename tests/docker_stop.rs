//! Stopping a parent container the ways an operator does, with children
//! that make it hard: `docker stop` with Docker's default 10 s grace while
//! both children ignore SIGTERM and a file of the parent's mount is held
//! open, and `docker kill -s HUP` (a hangup). Each must end with exit code
//! 0, no child container left and the node gone from the cluster as `left`
//! (a graceful leave), not `failed`. On the way, a SIGHUP sent to a child
//! reaches its application through the `serfnode child` wrapper, and
//! `serfnode status` passes as a health check in a parent and a child.
//!
//! Needs the images of scripts/build-images; everything created is removed
//! on drop (tests/support/docker.rs).

mod support;

use std::time::{Duration, Instant};

use serfnode_testkit::wait_for_every;
use support::docker::{
    busybox_image, docker, docker_ok, exec_sh, inspect, wait_status, Cluster, DOCKER_POLL,
};

const START: Duration = Duration::from_secs(90);
const T: Duration = Duration::from_secs(45);

/// A child that ignores SIGTERM (as many shells and badly written servers
/// do) and records every SIGHUP it gets.
const STUBBORN: &str = "trap '' TERM; trap 'echo hup >> /tmp/hup' HUP; while :; do sleep 1; done";

fn stubborn_manifest(role: &str, names: &[&str]) -> String {
    let mut yml = format!("serfnode:\n  role: {role}\nchildren:\n");
    for name in names {
        yml += &format!(
            "  - {name}:\n      image: {}\n      command: [\"sh\", \"-c\", {STUBBORN:?}]\n",
            busybox_image()
        );
    }
    yml
}

fn running(container: &str) -> bool {
    inspect(container)["State"]["Running"] == true
}

#[test]
fn docker_stop_and_hangup_stop_a_parent_cleanly_even_with_children_that_ignore_sigterm() {
    let mut cluster = Cluster::new();
    let watch = cluster.start_parent("watch", "watch", None, "serfnode:\n  role: watch\n");
    let subject = cluster.start_parent(
        "subj",
        "subj",
        Some(&watch),
        &stubborn_manifest("subj", &["a", "b"]),
    );
    let children = [subject.child("a"), subject.child("b")];
    wait_status(&watch.name, &subject.name, "alive", START);
    for child in &children {
        wait_for_every(DOCKER_POLL, START, &format!("{child} running"), || {
            docker(&["inspect", child]).status.success() && running(child)
        });
    }

    // `serfnode status` serves as a health check in a parent and a child.
    for (container, bin) in [
        (&subject.name, "serfnode"),
        (&children[1], "/serfnode-share/serfnode"),
    ] {
        if let Err(e) = exec_sh(container, &format!("{bin} status")) {
            panic!("health check in {container}: {e}");
        }
    }

    // A hangup sent to a child reaches its application (which may reload,
    // as nginx does), and the child runs on.
    docker_ok(&["kill", "-s", "HUP", &children[0]]);
    wait_for_every(DOCKER_POLL, T, "the HUP in the child's application", || {
        exec_sh(&children[0], "cat /tmp/hup")
    });
    assert!(running(&children[0]), "{} stopped on SIGHUP", children[0]);

    // A file of the mount still open when the parent stops (a reader of
    // `docker exec`, killed only when the container ends).
    docker_ok(&[
        "exec",
        "-d",
        &subject.name,
        "sh",
        "-c",
        "exec sleep 600 < /serfnode/status.json",
    ]);
    wait_for_every(
        DOCKER_POLL,
        T,
        "the reader holding status.json open",
        || exec_sh(&subject.name, "pgrep -x sleep"),
    );

    let began = Instant::now();
    docker_ok(&["stop", &subject.name]);
    let took = began.elapsed();
    let state = inspect(&subject.name)["State"].clone();
    assert_eq!(
        state["ExitCode"], 0,
        "docker stop (default 10 s) of {} took {took:.1?}: exit code {} \
         (137: killed at the deadline)",
        subject.name, state["ExitCode"]
    );
    let left = cluster.children_of(&subject);
    assert!(left.is_empty(), "child containers left behind: {left:?}");
    wait_status(&watch.name, &subject.name, "left", T);
    eprintln!("docker stop: exit 0 in {took:.1?}, no child left, left the cluster");

    // A hangup of the parent itself (`docker kill -s HUP`, or the terminal
    // of `docker run -it` closed) stops it as gracefully as SIGTERM.
    let began = Instant::now();
    docker_ok(&["kill", "-s", "HUP", &watch.name]);
    wait_for_every(
        DOCKER_POLL,
        Duration::from_secs(20),
        "the parent to stop on SIGHUP",
        || !running(&watch.name),
    );
    let took = began.elapsed();
    let state = inspect(&watch.name)["State"].clone();
    assert_eq!(
        state["ExitCode"], 0,
        "{} exited {} on SIGHUP",
        watch.name, state["ExitCode"]
    );
    let logs = docker(&["logs", &watch.name]);
    let logs = String::from_utf8_lossy(&logs.stderr);
    assert!(
        logs.contains("serf agent left the cluster and stopped (exit code 0)"),
        "no graceful leave on SIGHUP:\n{logs}"
    );
    eprintln!("docker kill -s HUP: exit 0 in {took:.1?}, left the cluster");
}
