//! The hosts hook against a live cluster: one line per role naming its
//! oldest alive member, stale roles removed, hostile role tags never
//! written, lines outside the managed block untouched, file rewritten in
//! place.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use support::node::{eventually, Node, NodeOpts};
use support::serf::{Agent, AgentOpts};

const T: Duration = Duration::from_secs(30);
const OUTSIDE: &str = "127.0.0.1\tlocalhost\n# kept by the user\n10.10.10.10\tmanual-entry\n";

/// role → address, as the managed block says.
fn block(text: &str) -> BTreeMap<String, String> {
    let begin = text.find("# BEGIN serfnode").expect("block present");
    let end = text.find("# END serfnode").expect("block closed");
    text[begin..end]
        .lines()
        .skip(1)
        .map(|l| {
            let (ip, role) = l.split_once('\t').expect("ip<TAB>role");
            (role.to_owned(), ip.to_owned())
        })
        .collect()
}

fn outside(text: &str) -> String {
    let begin = text.find("# BEGIN serfnode").unwrap();
    let end = text.find("# END serfnode\n").unwrap() + "# END serfnode\n".len();
    format!("{}{}", &text[..begin], text[end..].trim_end_matches('\n'))
}

#[test]
fn block_names_the_oldest_member_of_each_role_and_nothing_hostile() {
    let mut web1 = Node::start(NodeOpts {
        name: "web-1".into(),
        role: "web".into(),
        hosts: Some(OUTSIDE.into()),
        ..NodeOpts::default()
    });
    let ino = std::fs::metadata(&web1.hosts).unwrap().ino();
    let web2 = Node::start(NodeOpts {
        name: "web-2".into(),
        role: "web".into(),
        join: vec![web1.bind_addr()],
        ..NodeOpts::default()
    });
    let mut db = Node::start(NodeOpts {
        name: "db-1".into(),
        role: "db".into(),
        join: vec![web1.bind_addr()],
        ..NodeOpts::default()
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
        eventually(T, &format!("hosts block on {}", n.name), || {
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
    eventually(T, "db line removed", || {
        !block(&web1.hosts_text()).contains_key("db")
    });
    assert_eq!(block(&web1.hosts_text())["web"], web1.ip.to_string());

    // The oldest web member crashes: the next oldest takes the name.
    web1.crash();
    eventually(T, "web moves to web-2", || {
        block(&web2.hosts_text()).get("web") == Some(&web2.ip.to_string())
    });
    drop(hostile);

    // Every rewrite was in place (Docker bind-mounts /etc/hosts).
    assert_eq!(std::fs::metadata(&web1.hosts).unwrap().ino(), ino);
    // A bad role is reported once, not on every view change.
    let reports = web2.log().matches("role \"evil role\"").count();
    assert_eq!(reports, 1, "{}", web2.log());
}
