//! No torn reads: readers loop over every file while members join, leave,
//! crash and change tags as fast as real agents can; every read must be one
//! complete JSON document, and the readers must really see the view move.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::node::{Daemon, DaemonOpts};
use support::serf::{Agent, AgentOpts};

const CHURN: Duration = Duration::from_secs(12);

#[test]
fn readers_never_see_a_torn_or_mixed_document_during_heavy_churn() {
    let a = Daemon::start(DaemonOpts {
        name: "hub".into(),
        role: "hub".into(),
        ..DaemonOpts::default()
    });
    let stop = Arc::new(AtomicBool::new(false));

    let readers: Vec<_> = [
        "serfnodes_by_id.json",
        "serfnodes_by_role.json",
        "status.json",
        "members",
    ]
    .into_iter()
    .map(|file| {
        let root = a.mount.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut reads, mut torn, mut gens) = (0usize, Vec::new(), HashSet::new());
            let mut check = |path: &std::path::Path| {
                // A member file may vanish between listing and reading (reaped).
                let Ok(bytes) = std::fs::read(path) else {
                    return;
                };
                reads += 1;
                match serde_json::from_slice::<serde_json::Value>(&bytes) {
                    Ok(v) => {
                        if let Some(g) = v["generation"].as_u64() {
                            gens.insert(g);
                        }
                    }
                    Err(e) => torn.push(format!(
                        "{}: {e}: {:?}",
                        path.display(),
                        String::from_utf8_lossy(&bytes)
                    )),
                }
            };
            while !stop.load(Ordering::Relaxed) {
                let path = root.join(file);
                if file == "members" {
                    for e in std::fs::read_dir(&path).unwrap() {
                        check(&e.unwrap().path());
                    }
                } else {
                    check(&path);
                }
            }
            (reads, torn, gens.len())
        })
    })
    .collect();

    // Three churners: agents join with fresh tags, then leave or crash.
    let hub = a.bind_addr();
    let churners: Vec<_> = (0..3)
        .map(|k| {
            std::thread::spawn(move || {
                let deadline = Instant::now() + CHURN;
                let mut n = 0;
                while Instant::now() < deadline {
                    let role = format!("churn-{k}-{}", n % 4);
                    let mut agent = Agent::start(AgentOpts {
                        tags: [
                            ("role".to_string(), role),
                            ("timestamp".into(), n.to_string()),
                        ]
                        .into(),
                        join: Some(hub),
                        ..AgentOpts::default()
                    });
                    std::thread::sleep(Duration::from_millis(300));
                    if n % 2 == 0 {
                        agent.stop();
                    } else {
                        drop(agent);
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    let started: usize = churners.into_iter().map(|c| c.join().unwrap()).sum();
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    for r in readers {
        let (reads, torn, _) = r.join().unwrap();
        assert!(
            torn.is_empty(),
            "{} torn reads, e.g. {:?}",
            torn.len(),
            &torn[..torn.len().min(3)]
        );
        total += reads;
    }
    let status = a.json("status.json");
    let generations = status["generation"].as_u64().unwrap();
    eprintln!("{started} agents churned, {total} reads, {generations} generations");
    assert!(
        started >= 15,
        "churn too slow to prove anything: {started} agents"
    );
    assert!(
        generations >= 20,
        "the view barely moved: {generations} generations"
    );
    assert!(total >= 1000, "readers too slow: {total} reads");
}
