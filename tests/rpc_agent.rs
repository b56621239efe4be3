//! The RPC client against real `serf agent` processes.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serfnode::cluster::rpc::{
    Client, Member, MemberEvent, MemberStatus, QueryParams, QueryRecord, RpcError, StreamRecord,
    Subscription,
};
use support::serf::{Agent, AgentOpts};
use support::{poll_for, poll_for_async};

/// Bound on waiting for the cluster to converge or a record to arrive.
const SETTLE: Duration = Duration::from_secs(15);

const KEY1: &str = "T9jncgl9mbLus+baTTa7q7nPSUrXwbDi2dhbtqir37s=";
const KEY2: &str = "HvY8ubRZMgafUOWvrOadwOckVa1wN3QWAo46FVKbVN8=";

async fn connect(agent: &Agent) -> Client {
    Client::connect(agent.rpc_addr(), None)
        .await
        .expect("connect")
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Waits until `client`'s agent sees exactly `n` members, all alive.
async fn converge(client: &Client, n: usize) {
    let ok = poll_for_async(SETTLE, || async {
        let members = client.members().await.expect("members");
        members.len() == n && members.iter().all(|m| m.status == MemberStatus::Alive)
    })
    .await
    .is_ok();
    assert!(ok, "cluster did not converge to {n} alive members");
}

/// The first record on `sub` that `pick` accepts.
async fn next_matching<T>(
    sub: &mut Subscription,
    mut pick: impl FnMut(StreamRecord) -> Option<T>,
) -> T {
    let find = async {
        loop {
            let record = sub.recv().await.expect("stream open");
            if let Some(found) = pick(record) {
                return found;
            }
        }
    };
    tokio::time::timeout(SETTLE, find)
        .await
        .expect("record in time")
}

fn member_event(record: StreamRecord, want: MemberEvent, name: &str) -> Option<Member> {
    match record {
        StreamRecord::Member { event, members } if event == want => {
            members.into_iter().find(|m| m.name == name)
        }
        _ => None,
    }
}

#[tokio::test]
async fn members_and_filtered_members() {
    let a = Agent::start(AgentOpts::named("mf-a").tag("role", "lb"));
    let b = Agent::start(AgentOpts::named("mf-b").tag("role", "web").join(&a));
    let client = connect(&a).await;
    converge(&client, 2).await;

    let members = client.members().await.unwrap();
    let mb = members.iter().find(|m| m.name == "mf-b").unwrap();
    assert_eq!(mb.addr, b.ip());
    assert_eq!(mb.port, b.bind_addr().port());
    assert_eq!(mb.tags, tags(&[("role", "web")]));
    assert_eq!(mb.protocol[2], 2, "memberlist protocol in use");

    let web = client
        .members_filtered(&tags(&[("role", "w.b")]), None, None)
        .await
        .unwrap();
    assert_eq!(
        web.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["mf-b"]
    );
    let by_name = client
        .members_filtered(&BTreeMap::new(), Some("alive"), Some("mf-."))
        .await
        .unwrap();
    assert_eq!(by_name.len(), 2);
    // Patterns are anchored.
    let none = client
        .members_filtered(&BTreeMap::new(), None, Some("mf"))
        .await
        .unwrap();
    assert!(none.is_empty());

    // An invalid Go regular expression: the agent hangs up without a reply.
    let doomed = connect(&a).await;
    let err = doomed
        .members_filtered(&tags(&[("role", "(")]), None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Closed { .. }), "{err}");
    assert!(doomed.is_closed());
    assert_eq!(
        client.members().await.unwrap().len(),
        2,
        "other connections live on"
    );
}

#[tokio::test]
async fn stream_sees_joins_updates_and_user_events() {
    let a = Agent::start(AgentOpts::named("st-a"));
    let b = Agent::start(AgentOpts::named("st-b").join(&a));
    let client = connect(&a).await;
    converge(&client, 2).await;
    let mut all = client.stream("*").await.unwrap();
    let mut deploys = client.stream("user:deploy").await.unwrap();

    let c = Agent::start(AgentOpts::named("st-c").tag("role", "db").join(&a));
    let joined = next_matching(&mut all, |r| member_event(r, MemberEvent::Join, "st-c")).await;
    assert_eq!(joined.addr, c.ip());
    assert_eq!(joined.tags, tags(&[("role", "db")]));

    connect(&c)
        .await
        .tags(&tags(&[("role", "cache")]), &[])
        .await
        .unwrap();
    let updated = next_matching(&mut all, |r| member_event(r, MemberEvent::Update, "st-c")).await;
    assert_eq!(updated.tags, tags(&[("role", "cache")]));

    let from_b = connect(&b).await;
    from_b.event("other", b"-", false).await.unwrap();
    from_b.event("deploy", b"v1.2", false).await.unwrap();
    let user = |r| match r {
        StreamRecord::User {
            name,
            payload,
            coalesce,
            ..
        } if name == "deploy" => Some((payload, coalesce)),
        _ => None,
    };
    assert_eq!(
        next_matching(&mut all, user).await,
        (b"v1.2".to_vec(), false)
    );
    // The filtered stream never saw "other".
    let first = tokio::time::timeout(SETTLE, deploys.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(first, StreamRecord::User { name, .. } if name == "deploy"));
    assert_eq!(all.dropped(), 0);
}

#[tokio::test]
async fn oversized_event_is_refused_by_the_agent() {
    let a = Agent::start(AgentOpts::default());
    let client = connect(&a).await;
    let err = client.event("big", &[b'x'; 600], false).await.unwrap_err();
    let limit = "user event exceeds configured limit of 512 bytes before encoding";
    assert!(
        matches!(&err, RpcError::Agent { command: "event", message } if message == limit),
        "{err}"
    );
    assert_eq!(
        client.members().await.unwrap().len(),
        1,
        "the connection stays usable"
    );
}

/// The blocking link a FUSE worker raises events on: the verdict read on
/// the calling thread, a refusal leaving it usable, a verdict that does not
/// come in the wait left pending and finished on the runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_link_raises_events_and_hands_over_a_slow_verdict() {
    use serfnode::cluster::rpc::Outcome;
    use serfnode_testkit::process::{signal_pid, stop_pid};
    let a = Agent::start(AgentOpts::default());
    let client = connect(&a).await;
    let mut sub = client.stream("user").await.unwrap();
    let c = client.clone();
    let (_agent, refused, pending) = tokio::task::spawn_blocking(move || {
        let link = c.direct(Duration::from_secs(2)).expect("direct link");
        let wait = Duration::from_secs(2);
        let Outcome::Done(link) = link.event("d1", b"1", false, wait) else {
            panic!("d1 not raised");
        };
        // Refused: the link comes back and raises the next one.
        let (refused, link) = match link.event("big", &[b'x'; 600], false, wait) {
            Outcome::Failed(e, Some(link)) => (e.to_string(), link),
            _ => panic!("the oversized event was not refused with the link back"),
        };
        let Outcome::Done(link) = link.event("d2", b"2", false, wait) else {
            panic!("d2 not raised");
        };
        // The agent stopped: sent, no verdict within the wait.
        let pid = a.pid().unwrap();
        stop_pid(pid);
        let pending = match link.event("d3", b"3", false, Duration::from_millis(50)) {
            Outcome::Pending(p) => p,
            _ => panic!("d3 not pending while the agent is stopped"),
        };
        signal_pid(pid, libc::SIGCONT);
        (a, refused, pending)
    })
    .await
    .unwrap();
    assert!(refused.contains("exceeds"), "{refused}");
    let (back, res) = pending.finish(Instant::now() + SETTLE).await;
    res.expect("d3's verdict, finished on the runtime");
    assert!(back.is_some(), "the link comes back with the verdict");
    let mut names = Vec::new();
    while names.len() < 3 {
        let rec = tokio::time::timeout(SETTLE, sub.recv())
            .await
            .unwrap()
            .unwrap();
        if let StreamRecord::User { name, .. } = rec {
            names.push(name);
        }
    }
    assert_eq!(names, ["d1", "d2", "d3"]);
}

#[tokio::test]
async fn query_and_respond_round_trip() {
    let a = Agent::start(AgentOpts::named("q-a"));
    let b = Agent::start(AgentOpts::named("q-b").join(&a));
    let asker = connect(&a).await;
    converge(&asker, 2).await;
    let responder = connect(&b).await;
    let mut queries = responder.stream("query").await.unwrap();

    let mut query = asker
        .query(QueryParams {
            name: "uptime".into(),
            payload: b"how long?".to_vec(),
            request_ack: true,
            timeout: Some(Duration::from_secs(2)),
            ..QueryParams::default()
        })
        .await
        .unwrap();
    let id = next_matching(&mut queries, |r| match r {
        StreamRecord::Query {
            id, name, payload, ..
        } if name == "uptime" => {
            assert_eq!(payload, b"how long?");
            Some(id)
        }
        _ => None,
    })
    .await;
    responder.respond(id, b"up 3 days").await.unwrap();

    let mut records = Vec::new();
    while let Some(record) = tokio::time::timeout(SETTLE, query.recv()).await.unwrap() {
        records.push(record);
    }
    assert!(
        records.contains(&QueryRecord::Ack { from: "q-b".into() }),
        "{records:?}"
    );
    assert!(records.contains(&QueryRecord::Response {
        from: "q-b".into(),
        payload: b"up 3 days".to_vec()
    }));
    assert_eq!(records.last(), Some(&QueryRecord::Done));

    // One response per query; unknown ids are refused.
    let err = responder.respond(id, b"again").await.unwrap_err();
    assert!(err.to_string().ends_with("response already sent"), "{err}");
    let err = responder.respond(id + 100, b"?").await.unwrap_err();
    assert_eq!(err.to_string(), "respond: No pending queries matching ID");
}

#[tokio::test]
async fn join_tags_stats_and_coordinates() {
    let a = Agent::start(AgentOpts::named("jt-a").tag("old", "1"));
    let b = Agent::start(AgentOpts::named("jt-b"));
    let client = connect(&a).await;

    assert_eq!(
        client
            .join(&[b.bind_addr().to_string()], false)
            .await
            .unwrap(),
        1
    );
    converge(&client, 2).await;

    // `tags` takes the agent ~1.5 s; on its own connection it stalls nothing here.
    let (set, delete) = (tags(&[("role", "x")]), ["old".to_owned()]);
    let slow = client.tags(&set, &delete);
    let fast = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        client.members().await.unwrap();
        started.elapsed()
    };
    let (slow, fast) = tokio::join!(slow, fast);
    slow.unwrap();
    assert!(
        fast < Duration::from_millis(500),
        "members took {fast:?} behind tags"
    );
    let me = client
        .members_filtered(&BTreeMap::new(), None, Some("jt-a"))
        .await
        .unwrap();
    assert_eq!(me[0].tags, tags(&[("role", "x")]));

    let stats = client.stats().await.unwrap();
    assert_eq!(stats["agent"]["name"], "jt-a");
    assert_eq!(stats["tags"]["role"], "x");
    assert_eq!(stats["serf"]["members"], "2");

    let known = poll_for_async(SETTLE, || async {
        client.get_coordinate("jt-b").await.unwrap().is_some()
    })
    .await
    .is_ok();
    assert!(known, "no coordinate for jt-b");
    let coord = client.get_coordinate("jt-b").await.unwrap().unwrap();
    assert_eq!(coord.vec.len(), 8);
    assert_eq!(client.get_coordinate("nobody").await.unwrap(), None);

    let err = client
        .join(&["127.0.0.1:1".to_owned()], false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RpcError::Agent { command: "join", message } if message.contains("127.0.0.1:1")),
        "{err}"
    );
}

#[tokio::test]
async fn force_leave_turns_a_failed_node_left() {
    let local = ["-profile", "local"];
    let a = Agent::start(AgentOpts::named("fl-a").args(&local));
    let mut b = Agent::start(AgentOpts::named("fl-b").args(&local).join(&a));
    let client = connect(&a).await;
    converge(&client, 2).await;

    b.kill();
    let status = |want: MemberStatus| {
        let client = &client;
        move || {
            let want = want.clone();
            async move {
                let members = client.members().await.unwrap();
                members.iter().any(|m| m.name == "fl-b" && m.status == want)
            }
        }
    };
    assert!(
        poll_for_async(Duration::from_secs(30), status(MemberStatus::Failed))
            .await
            .is_ok()
    );
    client.force_leave("fl-b", false).await.unwrap();
    assert!(poll_for_async(SETTLE, status(MemberStatus::Left))
        .await
        .is_ok());
}

#[tokio::test]
async fn keyring_commands() {
    // Without encryption, every node reports an empty keyring.
    let plain = Agent::start(AgentOpts::default());
    let err = connect(&plain).await.list_keys().await.unwrap_err();
    assert!(
        matches!(&err, RpcError::Agent { command: "list-keys", message } if message.contains("reported failure")),
        "{err}"
    );

    let a = Agent::start(AgentOpts::named("kr-a").args(&["-encrypt", KEY1]));
    let _b = Agent::start(AgentOpts::named("kr-b").args(&["-encrypt", KEY1]).join(&a));
    let client = connect(&a).await;
    converge(&client, 2).await;

    let installed = client.install_key(KEY2).await.unwrap();
    assert_eq!(
        (installed.num_nodes, installed.num_resp, installed.num_err),
        (2, 2, 0)
    );
    assert!(installed.keys.is_empty(), "install-key lists no keys (nil)");
    client.use_key(KEY2).await.unwrap();
    let listed = client.list_keys().await.unwrap();
    assert_eq!(
        listed.keys,
        [(KEY1.to_owned(), 2), (KEY2.to_owned(), 2)].into()
    );
    client.remove_key(KEY1).await.unwrap();
    assert_eq!(
        client.list_keys().await.unwrap().keys,
        [(KEY2.to_owned(), 2)].into()
    );
    // The primary key cannot be removed.
    let err = client.remove_key(KEY2).await.unwrap_err();
    assert!(
        matches!(
            err,
            RpcError::Agent {
                command: "remove-key",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn leave_shuts_the_agent_down() {
    let mut a = Agent::start(AgentOpts::named("lv-a"));
    let b = Agent::start(AgentOpts::named("lv-b").join(&a));
    let client = connect(&a).await;
    let watcher = connect(&b).await;
    converge(&watcher, 2).await;

    client.leave().await.unwrap();
    tokio::time::timeout(SETTLE, client.closed())
        .await
        .expect("connection closed after leave");
    let left = poll_for_async(SETTLE, || async {
        let members = watcher.members().await.unwrap();
        members
            .iter()
            .any(|m| m.name == "lv-a" && m.status == MemberStatus::Left)
    })
    .await
    .is_ok();
    assert!(left, "lv-a not seen as left");
    assert!(
        poll_for(SETTLE, || !a.is_running()).is_ok(),
        "agent still running"
    );
}

#[tokio::test]
async fn closed_fires_when_the_agent_is_killed() {
    let mut a = Agent::start(AgentOpts::default());
    let client = connect(&a).await;
    let mut sub = client.stream("*").await.unwrap();
    assert!(!client.is_closed());

    a.kill();
    tokio::time::timeout(Duration::from_secs(2), client.closed())
        .await
        .expect("closed() fires promptly");
    assert!(client.is_closed());
    assert_eq!(sub.recv().await, None);
    assert!(matches!(
        client.members().await,
        Err(RpcError::Closed { .. })
    ));
    // Reconnecting is the caller's job, and fails while the agent is down.
    let err = Client::connect(a.rpc_addr(), None).await.err().unwrap();
    assert!(matches!(err, RpcError::Io { .. }), "{err}");
}

#[tokio::test]
async fn rpc_auth_is_required_when_configured() {
    let a = Agent::start(AgentOpts {
        config: Some(serde_json::json!({ "rpc_auth": "s3cret" })),
        ..AgentOpts::named("auth-a")
    });

    let anonymous = connect(&a).await;
    let err = anonymous.members().await.unwrap_err();
    assert!(
        matches!(&err, RpcError::Agent { message, .. } if message == "Authentication required"),
        "{err}"
    );
    // Refused before auth, a request's body is left unread: the agent reads
    // it as the next request header, keeping the previous Command and Seq
    // (Go decodes into the same struct), and refuses it again under the same
    // Seq. The client must skip that duplicate reply and stay in step.
    let err = anonymous.event("e", b"p", false).await.unwrap_err();
    assert!(
        matches!(
            &err,
            RpcError::Agent {
                command: "event",
                ..
            }
        ),
        "{err}"
    );
    let err = anonymous.members().await.unwrap_err();
    assert!(
        matches!(
            &err,
            RpcError::Agent {
                command: "members",
                ..
            }
        ),
        "{err}"
    );

    let err = Client::connect(a.rpc_addr(), Some("wrong"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.to_string(), "auth: Invalid authentication token");

    let client = Client::connect(a.rpc_addr(), Some("s3cret")).await.unwrap();
    assert_eq!(client.members().await.unwrap().len(), 1);
    // Side connections of slow commands authenticate too.
    client.tags(&tags(&[("role", "x")]), &[]).await.unwrap();
}
