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
//! trials, in ms, a step's drop not included; the render
//! rows also give the output's size and the fuel the render consumed (of
//! `templates::FUEL`). Prints figures, asserts nothing about timing.
//! BENCHMARKS.md explains the method and keeps the latest figures.

// In process: none of the helpers for processes and mounts is needed.
#[macro_use]
#[allow(dead_code)]
mod common;

use std::time::Instant;

use anyhow::{ensure, Result};
use serfnode::membership::View;
use serfnode::templates::{Context, Documents, Origin, Source, TemplateSet, FUEL};

use common::report::*;
use common::synth::synthetic_member;

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

/// Milliseconds of each of `trials` calls of `f`; dropping what it made is
/// not timed.
fn time<T>(trials: usize, mut f: impl FnMut() -> T) -> Vec<f64> {
    (0..trials)
        .map(|_| {
            let started = Instant::now();
            let made = std::hint::black_box(f());
            let ms = started.elapsed().as_secs_f64() * 1e3;
            drop(made);
            ms
        })
        .collect()
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

        let mut docs_ms = time(BUILD_TRIALS, || Documents::of_snapshot(&snap));
        let docs = Documents::of_snapshot(&snap);
        let copies: Vec<Documents> = (0..BUILD_TRIALS).map(|_| docs.clone()).collect();
        let mut contexts = Vec::new();
        let mut ctx_ms: Vec<f64> = copies
            .into_iter()
            .map(|copy| {
                let started = Instant::now();
                contexts.push(Context::new(copy));
                started.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let mut drop_ms = time(BUILD_TRIALS, || drop(contexts.pop()));
        raw.push(format!("{layout}: documents ms {}", list(&docs_ms, 2)));
        for (step, ms) in [
            ("documents (of_snapshot)", &mut docs_ms),
            ("context (Context::new)", &mut ctx_ms),
            ("drop of a context", &mut drop_ms),
        ] {
            rows.push(vec![
                layout.clone(),
                step.into(),
                p50_p99(ms),
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
            let mut ms = time(RENDER_TRIALS, || set.render(name, &ctx).expect("renders"));
            raw.push(format!("{layout}: render {name} ms {}", list(&ms, 3)));
            rows.push(vec![
                layout.clone(),
                format!("render `{name}` ({servers} servers)"),
                p50_p99(&mut ms),
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
        &["view", "step", "p50 / p99 ms", "output bytes", "fuel"],
        &rows,
    );
    raw_lines(&raw);
    Ok(())
}
