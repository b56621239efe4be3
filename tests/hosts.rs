//! The hosts hook against a live cluster: one line per role naming its
//! oldest alive member, stale roles removed, hostile role tags never
//! written, lines outside the managed block untouched, file rewritten in
//! place.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use support::hosts::Block;
use support::node::{Daemon, DaemonOpts};
use support::serf::{Agent, AgentOpts};
use support::wait_for;

const T: Duration = Duration::from_secs(30);
const OUTSIDE: &str = "127.0.0.1\tlocalhost\n# kept by the user\n10.10.10.10\tmanual-entry\n";

/// role → address, as the managed block says; panics unless there is one,
/// closed, of `ip<TAB>role` lines.
fn block(text: &str) -> BTreeMap<String, String> {
    Block::find(text).expect("block present").strict_roles(text)
}

/// The file's lines outside the block, without serfnode's padding lines
/// (a block that shrank leaves one).
fn outside(text: &str) -> String {
    let begin = text.find("# BEGIN serfnode").unwrap();
    let end = text.find("# END serfnode\n").unwrap() + "# END serfnode\n".len();
    let kept = format!("{}{}", &text[..begin], &text[end..]);
    String::from_utf8(without_padding(kept.as_bytes()))
        .unwrap()
        .trim_end_matches('\n')
        .to_owned()
}

#[test]
fn block_names_the_oldest_member_of_each_role_and_nothing_hostile() {
    let mut web1 = Daemon::start(DaemonOpts {
        name: "web-1".into(),
        role: "web".into(),
        hosts: Some(OUTSIDE.into()),
        ..DaemonOpts::default()
    });
    let ino = std::fs::metadata(&web1.hosts).unwrap().ino();
    let web2 = Daemon::start(DaemonOpts {
        name: "web-2".into(),
        role: "web".into(),
        join: vec![web1.bind_addr()],
        ..DaemonOpts::default()
    });
    let mut db = Daemon::start(DaemonOpts {
        name: "db-1".into(),
        role: "db".into(),
        join: vec![web1.bind_addr()],
        ..DaemonOpts::default()
    });
    let hostile: Vec<Agent> = ["evil role", "x#y", "new\nline", "ünï", &"r".repeat(254)]
        .into_iter()
        .map(|role| {
            Agent::start(AgentOpts {
                tags: [
                    ("role".to_string(), role.to_string()),
                    ("timestamp".into(), "1".into()),
                ]
                .into(),
                join: Some(web1.bind_addr()),
                ..AgentOpts::default()
            })
        })
        .collect();
    web1.wait_json("serfnodes_by_id.json", T, |v| {
        v.as_object().unwrap().len() == 3 + hostile.len()
    });

    let want: BTreeMap<String, String> = [
        ("db".to_string(), db.ip.to_string()),
        ("web".to_string(), web1.ip.to_string()),
    ]
    .into();
    for n in [&web1, &web2, &db] {
        wait_for(T, &format!("hosts block on {}", n.name), || {
            n.hosts_text().contains("# END serfnode") && block(&n.hosts_text()) == want
        });
    }
    let text = web1.hosts_text();
    assert_eq!(
        outside(&text).trim_end(),
        OUTSIDE.trim_end(),
        "outside lines kept:\n{text}"
    );
    for bad in ["evil", "x#y", "new", "ünï", "rrrr"] {
        assert!(!text.contains(bad), "{bad} written:\n{text}");
    }
    assert!(web1.log().matches("is not a host name").count() >= 1);

    // The db role goes with its only member; its line is removed.
    db.signal(libc::SIGTERM);
    assert!(db.wait_exit(T).success());
    wait_for(T, "db line removed", || {
        !block(&web1.hosts_text()).contains_key("db")
    });
    assert_eq!(block(&web1.hosts_text())["web"], web1.ip.to_string());

    // The oldest web member crashes: the next oldest takes the name.
    web1.crash();
    wait_for(T, "web moves to web-2", || {
        block(&web2.hosts_text()).get("web") == Some(&web2.ip.to_string())
    });
    drop(hostile);

    // Every rewrite was in place (Docker bind-mounts /etc/hosts).
    assert_eq!(std::fs::metadata(&web1.hosts).unwrap().ino(), ino);
    // A bad role is reported once, not on every view change.
    let reports = web2.log().matches("role \"evil role\"").count();
    assert_eq!(reports, 1, "{}", web2.log());
}

/// The bytes of the block naming `roles` (role, address), as written.
fn block_bytes(roles: &[(&str, String)]) -> Vec<u8> {
    let mut b = format!("{}\n", serfnode::surface::hosts::BEGIN);
    for (role, ip) in roles {
        b += &format!("{ip}\t{role}\n");
    }
    b += &format!("{}\n", serfnode::surface::hosts::END);
    b.into_bytes()
}

/// `bytes` without serfnode's padding lines (`# serfnode pad` + spaces).
fn without_padding(bytes: &[u8]) -> Vec<u8> {
    bytes
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| {
            !l.strip_suffix(b"\n")
                .and_then(|l| l.strip_prefix(serfnode::surface::hosts::PAD.as_bytes()))
                .is_some_and(|rest| rest.iter().all(|&b| b == b' '))
        })
        .flatten()
        .copied()
        .collect()
}

#[test]
fn odd_hosts_files_keep_every_byte_outside_the_block_and_a_huge_one_is_refused() {
    let begin = serfnode::surface::hosts::BEGIN;
    // Each kind of file on a node of its own, all started at once; every
    // failure is collected, so one run reports each case.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "lone-begin",
            format!("127.0.0.1\tlocalhost\n{begin}\n10.2.2.2\tafter-a-lone-begin\n# more\n")
                .into_bytes(),
        ),
        (
            "crlf",
            b"127.0.0.1\tlocalhost\r\n::1\tip6-localhost\r\n10.1.1.1\tdos\r\n".to_vec(),
        ),
        (
            "latin1",
            b"127.0.0.1\tlocalhost\n10.1.1.1\tcaf\xe9 # \xff\xfe not utf-8\n\n\n".to_vec(),
        ),
        (
            "no-newline",
            b"127.0.0.1\tlocalhost\n10.3.3.3\tlast-line-unterminated".to_vec(),
        ),
    ];
    let mut nodes: Vec<Daemon> = cases
        .iter()
        .map(|(name, bytes)| {
            Daemon::spawn(DaemonOpts {
                name: (*name).into(),
                role: "web".into(),
                hosts: Some(bytes.clone()),
                ..DaemonOpts::default()
            })
        })
        .collect();
    // Far larger than a hosts file gets: refused, not read into memory.
    let huge: Vec<u8> = (0..600_000)
        .flat_map(|i| format!("10.{}.{}.{}\th{i}\n", i >> 16, (i >> 8) & 255, i & 255).into_bytes())
        .collect();
    assert!(huge.len() as u64 > serfnode::surface::hosts::MAX_LEN);
    let big = Daemon::start(DaemonOpts {
        name: "huge".into(),
        hosts: Some(huge.clone()),
        ..DaemonOpts::default()
    });

    let mut failed = Vec::new();
    for ((name, original), node) in cases.iter().zip(&nodes) {
        node.wait_connected();
        let mut want = original.clone();
        if !want.ends_with(b"\n") {
            want.push(b'\n');
        }
        want.extend(block_bytes(&[("web", node.ip.to_string())]));
        let written = support::poll_for(T, || std::fs::read(&node.hosts).unwrap() == want).is_ok();
        if !written {
            failed.push(format!(
                "{name}: want\n{:?}\ngot\n{:?}\n{}",
                String::from_utf8_lossy(&want),
                String::from_utf8_lossy(&std::fs::read(&node.hosts).unwrap()),
                node.log()
            ));
        }
    }
    // A clean stop takes the block out and leaves the rest as it was.
    for ((name, original), node) in cases.iter().zip(&mut nodes) {
        node.signal(libc::SIGTERM);
        assert!(node.wait_exit(T).success(), "{name}: {}", node.log());
        let mut want = original.clone();
        if !want.ends_with(b"\n") {
            want.push(b'\n');
        }
        let left = without_padding(&std::fs::read(&node.hosts).unwrap());
        if left != want {
            failed.push(format!(
                "{name} after stop: want {:?}, got {:?}",
                String::from_utf8_lossy(&want),
                String::from_utf8_lossy(&left)
            ));
        }
    }

    let path = big.hosts.display().to_string();
    let refused = support::poll_for(T, || {
        big.full_log().contains(&format!(
            "hosts file {path}: {} bytes, over the",
            huge.len()
        ))
    })
    .is_ok();
    if !refused {
        failed.push(format!("huge: no error naming the file\n{}", big.log()));
    }
    // Retried every second, logged once; the file untouched; files served.
    std::thread::sleep(Duration::from_millis(2500));
    let reports = big
        .full_log()
        .matches(&format!("hosts file {path}"))
        .count();
    if reports > 1 {
        failed.push(format!("huge: the error was logged {reports} times"));
    }
    if std::fs::read(&big.hosts).unwrap() != huge {
        failed.push("huge: the file was changed".into());
    }
    assert_eq!(big.json("status.json")["agent"]["connected"], true);
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

#[test]
fn lines_appended_by_another_writer_while_the_block_changes_all_survive() {
    let node = Daemon::start(DaemonOpts {
        name: "app-host".into(),
        role: "host".into(),
        hosts: Some(OUTSIDE.into()),
        ..DaemonOpts::default()
    });
    let other = Agent::start(AgentOpts {
        join: Some(node.bind_addr()),
        ..AgentOpts::named("flipper").tag("role", "r")
    });
    let short = "r".to_string();
    let long = "r".repeat(60);
    wait_for(T, "both roles in the block", || {
        node.hosts_text().contains("# END serfnode") && block(&node.hosts_text()).len() == 2
    });

    // Another writer (an application, Docker) appends lines as fast as a
    // busy one would, while the block grows and shrinks under it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appender = {
        let (path, stop) = (node.hosts.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(format!("10.9.0.1\tappended-{n}\n").as_bytes())
                    .unwrap();
                n += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
            n
        })
    };
    const CHANGES: usize = 20;
    for k in 0..CHANGES {
        let role = if k % 2 == 0 { &long } else { &short };
        other.set_tags(&[("role", role)]);
        wait_for(T, &format!("change {k}: role {role} in the block"), || {
            block(&node.hosts_text()).contains_key(role.as_str())
        });
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let appended = appender.join().unwrap();

    let text = node.hosts_text();
    let seen: Vec<u32> = text
        .lines()
        .filter_map(|l| l.strip_prefix("10.9.0.1\tappended-"))
        .map(|n| n.parse().unwrap())
        .collect();
    let lost: Vec<u32> = (0..appended).filter(|n| !seen.contains(n)).collect();
    assert!(
        lost.is_empty() && seen.len() == appended as usize,
        "{} of {appended} appended lines lost ({} seen): {:?}",
        lost.len(),
        seen.len(),
        &lost[..lost.len().min(20)]
    );
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "appended lines reordered"
    );
    assert!(text.starts_with(OUTSIDE), "the file's own lines changed");
    let updates = node.full_log().matches("hosts file updated").count();
    assert!(updates > CHANGES, "only {updates} updates");
    eprintln!("{appended} lines appended during {updates} updates: none lost");
}
