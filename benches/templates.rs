//! The templates benchmark: what rendering an upstream list costs over a
//! 10,000-member view, in process, on the library the daemon and `serfnode
//! render` use (no mount, no agent).
//!
//! For a view of 10,000 synthetic members (the original project's tags), in
//! one role (the list has 10,000 servers) and in 50 roles (200 servers):
//! **documents** (`Documents::of_snapshot`: every member's document and the
//! files' maps, as the files render them), **context** (`Context::new` over
//! them) and **render** of an nginx upstream template two ways: filtering
//! `alive` with `role(...) | sort_by("name")`, and reading the role's entry
//! of `by_role`; and **drop** of a context (its documents), which a daemon
//! pays when the next view replaces one. Each figure is p50/p99 over its
//! trials, in ms of wall clock and of the thread's CPU time (which a busy
//! machine does not inflate by preempting the bench), a step's drop not
//! included; the render
//! rows also give the output's size and the fuel the render consumed (of
//! `templates::FUEL`).
//!
//! Then **a change through a real daemon**: a `serfnode agent` with its
//! `serf agent` on loopback, a manifest template showing a tag of every
//! member, with a destination and a command (`sh -c 'date +%s.%N >> ...'`,
//! which records when it started). Each trial sets the tag on the local
//! agent (`serf tags`, timed from its return) and times, by wall clock, the
//! change's arrival in `members/<node>.json` (the files' own freshness: the
//! baseline), the destination's rewrite (its mtime) and the command's
//! start. Prints figures, asserts nothing about timing. BENCHMARKS.md
//! explains the method and keeps the latest figures.

// In process: none of the helpers for processes and mounts is needed.
#[macro_use]
#[allow(dead_code)]
mod common;

use std::time::Instant;

use anyhow::{ensure, Context as _, Result};
use serfnode::cluster::membership::View;
use serfnode::surface::templates::{Context, Documents, Origin, Source, TemplateSet, FUEL};

use common::report::*;
use common::synth::synthetic_member;
use serfnode_testkit::{progress, Daemon, DaemonOpts};

const MEMBERS: usize = 10_000;
const BUILD_TRIALS: usize = 15;
const RENDER_TRIALS: usize = 200;

/// The role every layout has: `role-00`.
const FILTERED: &str = r#"upstream web {
  {% for m in alive | role("role-00") | sort_by("name") %}
  server {{ m | service_addr }};
  {% endfor %}
}
"#;

const BY_ROLE: &str = r#"upstream web {
  {% for m in by_role["role-00"] %}
  server {{ m.service_ip }}:{{ m.service_port }};
  {% endfor %}
}
"#;

/// Milliseconds of each of `trials` calls of `f`, wall clock and this
/// thread's CPU time (which a busy machine does not inflate by preempting
/// it); dropping what it made is not timed.
fn time<T>(trials: usize, mut f: impl FnMut() -> T) -> (Vec<f64>, Vec<f64>) {
    (0..trials)
        .map(|_| {
            let (started, cpu) = (Instant::now(), thread_cpu_ms());
            let made = std::hint::black_box(f());
            let times = (started.elapsed().as_secs_f64() * 1e3, thread_cpu_ms() - cpu);
            drop(made);
            times
        })
        .unzip()
}

fn thread_cpu_ms() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) into a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6
}

fn p50_p99(ms: &mut [f64]) -> String {
    let p = Percentiles::of(ms);
    format!("{:.2} / {:.2}", p.p50, p.p99)
}

fn main() -> Result<()> {
    let set = TemplateSet::compile(
        [("filtered", FILTERED), ("by_role", BY_ROLE)]
            .map(|(name, text)| Source {
                name: name.into(),
                text: text.into(),
                origin: Origin::Inline(name.into()),
            })
            .into(),
    )?;
    let start = unix_now() - 86_400.0;
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    for roles in [1, 50] {
        progress!("{MEMBERS} members in {roles} role(s)");
        let view = View::new();
        view.reconcile(
            (0..MEMBERS)
                .map(|i| synthetic_member(i, start, roles))
                .collect(),
        );
        let snap = view.snapshot();
        let layout = format!("{MEMBERS} members, {roles} role(s)");

        let docs_ms = time(BUILD_TRIALS, || Documents::of_snapshot(&snap));
        let docs = Documents::of_snapshot(&snap);
        let mut copies: Vec<Documents> = (0..BUILD_TRIALS).map(|_| docs.clone()).collect();
        let mut contexts = Vec::new();
        let ctx_ms = time(BUILD_TRIALS, || {
            contexts.push(Context::new(copies.pop().expect("a copy")))
        });
        let drop_ms = time(BUILD_TRIALS, || drop(contexts.pop()));
        for (step, (mut wall, mut cpu)) in [
            ("documents (of_snapshot)", docs_ms),
            ("context (Context::new)", ctx_ms),
            ("drop of a context", drop_ms),
        ] {
            raw.push(format!("{layout}: {step} wall ms {}", list(&wall, 2)));
            rows.push(vec![
                layout.clone(),
                step.into(),
                p50_p99(&mut wall),
                p50_p99(&mut cpu),
                "—".into(),
                "—".into(),
            ]);
        }

        let ctx = Context::new(docs);
        for name in ["filtered", "by_role"] {
            let (bytes, fuel) = set.render_costed(name, &ctx)?;
            let servers = bytes
                .split(|&b| b == b'\n')
                .filter(|l| l.starts_with(b"  server "))
                .count();
            ensure!(
                servers == MEMBERS / roles,
                "{name}: {servers} servers listed, not {}",
                MEMBERS / roles
            );
            let (mut wall, mut cpu) =
                time(RENDER_TRIALS, || set.render(name, &ctx).expect("renders"));
            raw.push(format!(
                "{layout}: render {name} wall ms {}",
                list(&wall, 3)
            ));
            rows.push(vec![
                layout.clone(),
                format!("render `{name}` ({servers} servers)"),
                p50_p99(&mut wall),
                p50_p99(&mut cpu),
                bytes.len().to_string(),
                format!(
                    "{fuel} ({:.1} % of FUEL)",
                    fuel as f64 * 100.0 / FUEL as f64
                ),
            ]);
        }
    }
    table(
        "Templates: an upstream list over 10,000 members (ms, in process)",
        &[
            "view",
            "step",
            "wall p50 / p99",
            "CPU p50 / p99",
            "output bytes",
            "fuel",
        ],
        &rows,
    );
    raw_lines(&raw);
    through_a_daemon()
}

const DAEMON_TRIALS: usize = 40;

/// A change in the local agent → the file, the destination, the command.
fn through_a_daemon() -> Result<()> {
    progress!("a change through a real daemon, {DAEMON_TRIALS} trials");
    let dir = tempfile::tempdir()?;
    let (dest, started) = (dir.path().join("v.conf"), dir.path().join("started"));
    let manifest = dir.path().join("serfnode.yml");
    std::fs::write(
        &manifest,
        format!(
            "templates:\n  - name: v\n    template: \"{{% for m in members %}}{{{{ m.tags.v | default('') }}}}{{% endfor %}}\\n\"\n    destination: {}\n    command: [sh, -c, 'date +%s.%N >> {}']\n",
            dest.display(),
            started.display()
        ),
    )?;
    let ip = serfnode_testkit::unique_ip();
    let daemon = Daemon::try_start(DaemonOpts {
        args: vec!["--manifest".into(), manifest.display().to_string()],
        ..DaemonOpts::bench("tpl-bench", ip, "bench")
    })?;
    let member = daemon.path(&format!("members/{}.json", daemon.name));
    let starts = || -> Vec<f64> {
        std::fs::read_to_string(&started)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let mtime = |p: &std::path::Path| -> Option<f64> {
        let m = std::fs::metadata(p).ok()?;
        Some(
            m.modified()
                .ok()?
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_secs_f64(),
        )
    };
    // The output of the start (no tag yet) has run its command.
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while starts().is_empty() {
        ensure!(
            Instant::now() < deadline,
            "the template's first command never ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (mut file_ms, mut dest_ms, mut cmd_ms) = (Vec::new(), Vec::new(), Vec::new());
    for trial in 0..DAEMON_TRIALS {
        let value = format!("t{trial}");
        let runs = starts().len();
        let out = std::process::Command::new("serf")
            .arg("tags")
            .arg(format!("-rpc-addr={}", daemon.rpc_addr()))
            .args(["-set", &format!("v={value}")])
            .output()
            .context("serf tags")?;
        ensure!(out.status.success(), "serf tags failed");
        let t0 = unix_now();
        let (mut file_at, mut cmd_at) = (None, None);
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while file_at.is_none() || cmd_at.is_none() {
            ensure!(Instant::now() < deadline, "trial {trial}: no change seen");
            if file_at.is_none()
                && std::fs::read_to_string(&member).is_ok_and(|t| t.contains(&value))
            {
                file_at = Some(unix_now());
            }
            if cmd_at.is_none() {
                cmd_at = starts().get(runs).copied();
            }
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
        let dest_at = mtime(&dest).context("destination")?;
        file_ms.push((file_at.unwrap() - t0) * 1e3);
        dest_ms.push((dest_at - t0) * 1e3);
        cmd_ms.push((cmd_at.unwrap() - t0) * 1e3);
        // Spaced, so the agent's coalescing of member updates starts over.
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let mut rows = Vec::new();
    for (what, ms) in [
        (
            "members/<node>.json shows it (baseline: the files)",
            &mut file_ms,
        ),
        ("destination rewritten (its mtime)", &mut dest_ms),
        ("command started (its own clock)", &mut cmd_ms),
    ] {
        let p = Percentiles::of(ms);
        rows.push(vec![
            what.to_owned(),
            format!("{:.1}", p.p50),
            format!("{:.1}", p.p99),
        ]);
    }
    table(
        "Templates: a tag set on the local agent → ... (ms after `serf tags` returned, loopback)",
        &["step", "p50", "p99"],
        &rows,
    );
    raw_lines(&[
        format!("file ms {}", list(&file_ms, 1)),
        format!("destination ms {}", list(&dest_ms, 1)),
        format!("command ms {}", list(&cmd_ms, 1)),
    ]);
    Ok(())
}
