//! The file API: how a membership snapshot looks as files. Each snapshot
//! becomes a tree of lazily rendered documents; a document's version is the
//! generation at which its inputs last changed, so a change elsewhere in the
//! view leaves it (and the reader's page cache) alone.
//!
//! | file | content |
//! |---|---|
//! | `serfnodes_by_id.json` | alive members: node id → Node info |
//! | `serfnodes_by_role.json` | role → [Node info], oldest first |
//! | `me.json`, `parent.json` | Container info `{"id", "inspect"}` |
//! | `children_by_name.json` | child container name → Container info |
//! | `status.json` | generation, agent state, member counts, gossip encryption, children's states |
//! | `members/<id>.json` | every known member, with its status and tags |
//! | `parent` | write node: `["event", payload]` lines → Serf user events |
//! | `events`, `events_since/<seq>` | the event journal (see [`crate::surface::journal`]) |
//! | `query/<name>/<arg>` | a query's answers, asked per read (see [`crate::surface::query`]) |
//! | `templates/<name>` | a template's last good output (see [`crate::surface::templates`]) |

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};
use serfnode_fs::{ControlSink, Dir, Doc, Node, NodeKind, Parts, Resolve, Resolved};

use crate::cluster::membership::Snapshot;
use crate::cluster::rpc::Member;
use crate::cluster::tags::{self, NodeInfo};
use crate::event::Origin;
use crate::names::is_event_name;
use crate::surface::journal::{JournalSnap, EVENTS, EVENTS_SINCE};
use crate::surface::query::Ask;
use crate::surface::upstream::Upstream;

pub const BY_ID: &str = "serfnodes_by_id.json";
pub const BY_ROLE: &str = "serfnodes_by_role.json";
pub(crate) const ME: &str = "me.json";
pub(crate) const PARENT_INFO: &str = "parent.json";
pub(crate) const CHILDREN: &str = "children_by_name.json";
pub const STATUS: &str = "status.json";
pub const MEMBERS: &str = "members";
pub const WRITE_NODE: &str = "parent";
pub const QUERY: &str = "query";
pub(crate) const TEMPLATES: &str = "templates";

/// The root directory for one snapshot of the view and of the journal;
/// cheap to build per generation.
#[derive(Clone)]
pub(crate) struct Tree {
    pub snap: Arc<Snapshot>,
    pub journal: Arc<JournalSnap>,
    pub nodes: Nodes,
    pub templates: Arc<TemplateFiles>,
}

/// The templates' files and their part of `status.json`, as the templates
/// stage last published them (it renders; the tree only shows).
#[derive(Debug, Clone, Default)]
pub struct TemplateFiles {
    /// Whether the node has templates: `templates/` and the `templates`
    /// key of `status.json` exist.
    pub enabled: bool,
    /// name → the version (the view generation at which it last changed)
    /// and bytes of its last good output.
    pub outputs: BTreeMap<String, (u64, Arc<Vec<u8>>)>,
    /// `status.json`'s `templates` object.
    pub status: Value,
    /// Counts the changes of `status`. `status.json`'s version is the
    /// view's generation plus this: both only grow, so no two of the
    /// versions published stand for different bytes.
    pub revision: u64,
}

/// The nodes that act rather than show state, the same in every tree.
#[derive(Clone)]
pub struct Nodes {
    /// The write node's sink.
    pub sink: Arc<dyn ControlSink>,
    /// Answers `query/` reads.
    pub queries: Arc<dyn QueryFiles>,
}

impl Tree {
    pub fn new(
        snap: Arc<Snapshot>,
        journal: Arc<JournalSnap>,
        nodes: Nodes,
        templates: Arc<TemplateFiles>,
    ) -> Arc<Tree> {
        Arc::new(Tree {
            snap,
            journal,
            nodes,
            templates,
        })
    }

    fn status(&self) -> Node {
        let (snap, t) = (self.snap.clone(), self.templates.clone());
        let version = snap.generation + t.revision;
        Node::File(Doc::new(version, move || {
            let mut doc = status(&snap);
            if t.enabled {
                doc["templates"] = t.status.clone();
            }
            to_bytes(&doc)
        }))
    }

    fn doc(&self, version: u64, render: fn(&Snapshot) -> Value) -> Node {
        let snap = self.snap.clone();
        Node::File(Doc::new(version, move || to_bytes(&render(&snap))))
    }

    /// A document rendered straight to its bytes.
    fn doc_bytes(&self, version: u64, render: fn(&Snapshot) -> Vec<u8>) -> Node {
        let snap = self.snap.clone();
        Node::File(Doc::new(version, move || render(&snap)))
    }
}

impl Dir for Tree {
    fn get(&self, name: &str) -> Option<Node> {
        let s = &self.snap;
        Some(match name {
            BY_ID => self.doc_bytes(s.nodes_gen, by_id_json),
            BY_ROLE => self.doc_bytes(s.nodes_gen, by_role_json),
            ME => self.doc(s.containers_gen, me),
            PARENT_INFO => self.doc(s.containers_gen, parent),
            CHILDREN => self.doc(s.containers_gen, children),
            STATUS => self.status(),
            MEMBERS => Node::Dir(Arc::new(MembersDir(s.clone()))),
            WRITE_NODE => Node::Control(self.nodes.sink.clone()),
            QUERY => Node::Dir(Arc::new(QueryDir(self.nodes.queries.clone()))),
            EVENTS | EVENTS_SINCE => return self.journal.node(name),
            TEMPLATES if self.templates.enabled => {
                Node::Dir(Arc::new(TemplatesDir(self.templates.clone())))
            }
            _ => return None,
        })
    }

    fn entries(&self) -> Vec<(String, NodeKind)> {
        let files = [BY_ID, BY_ROLE, ME, PARENT_INFO, CHILDREN, STATUS];
        let mut out: Vec<_> = files
            .iter()
            .map(|f| (f.to_string(), NodeKind::File))
            .collect();
        out.push((MEMBERS.into(), NodeKind::Dir));
        out.push((WRITE_NODE.into(), NodeKind::Control));
        out.push((QUERY.into(), NodeKind::Dir));
        if self.templates.enabled {
            out.push((TEMPLATES.into(), NodeKind::Dir));
        }
        out.extend(
            JournalSnap::listing()
                .into_iter()
                .map(|(n, k)| (n.to_string(), k)),
        );
        out
    }
}

/// Answers a read of `query/<name>/<segment>` (see [`crate::surface::query`]).
pub trait QueryFiles: Send + Sync + 'static {
    fn resolve(&self, name: &str, segment: &str, done: Resolved);
}

/// `query/`: one directory per valid query name, listing nothing.
struct QueryDir(Arc<dyn QueryFiles>);

impl Dir for QueryDir {
    fn get(&self, name: &str) -> Option<Node> {
        is_event_name(name).then(|| {
            Node::Dir(Arc::new(QueryNameDir {
                name: name.to_string(),
                files: self.0.clone(),
            }))
        })
    }

    fn entries(&self) -> Vec<(String, NodeKind)> {
        Vec::new()
    }

    /// Any query name: only the recent ones are kept.
    fn open_ended(&self) -> bool {
        true
    }
}

struct QueryNameDir {
    name: String,
    files: Arc<dyn QueryFiles>,
}

impl Dir for QueryNameDir {
    fn get(&self, segment: &str) -> Option<Node> {
        Some(Node::Volatile(Arc::new(QueryFile {
            name: self.name.clone(),
            segment: segment.to_string(),
            files: self.files.clone(),
        })))
    }

    fn entries(&self) -> Vec<(String, NodeKind)> {
        Vec::new()
    }

    fn open_ended(&self) -> bool {
        true
    }
}

struct QueryFile {
    name: String,
    segment: String,
    files: Arc<dyn QueryFiles>,
}

impl Resolve for QueryFile {
    fn resolve(&self, done: Resolved) {
        self.files.resolve(&self.name, &self.segment, done);
    }
}

/// `templates/`: each template's last good output (none before its first
/// good render).
struct TemplatesDir(Arc<TemplateFiles>);

impl Dir for TemplatesDir {
    fn get(&self, name: &str) -> Option<Node> {
        let (version, bytes) = self.0.outputs.get(name)?.clone();
        Some(Node::File(Doc::parts(version, move || {
            Parts::whole(bytes.clone())
        })))
    }

    fn entries(&self) -> Vec<(String, NodeKind)> {
        self.0
            .outputs
            .keys()
            .map(|n| (n.clone(), NodeKind::File))
            .collect()
    }
}

struct MembersDir(Arc<Snapshot>);

impl Dir for MembersDir {
    fn get(&self, name: &str) -> Option<Node> {
        let node = self.0.files.get(name)?;
        let entry = self.0.members.get(node)?.clone();
        Some(Node::File(Doc::new(entry.changed, move || {
            to_bytes(&member_doc(&entry.member))
        })))
    }

    fn entries(&self) -> Vec<(String, NodeKind)> {
        self.0
            .files
            .keys()
            .map(|f| (f.clone(), NodeKind::File))
            .collect()
    }
}

fn to_bytes(v: &impl Serialize) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).expect("documents are plain json");
    out.push(b'\n');
    out
}

pub fn by_id(s: &Snapshot) -> Value {
    let map: BTreeMap<&str, NodeInfo> = s
        .alive()
        .map(|m| (m.name.as_str(), NodeInfo::of(m)))
        .collect();
    json!(map)
}

/// `serfnodes_by_id.json`, joined from each member version's Node info
/// bytes (rendered once per version): the same bytes as [`by_id`] through
/// `serde_json`, at the cost of a copy.
pub fn by_id_json(s: &Snapshot) -> Vec<u8> {
    let alive = s
        .members
        .values()
        .filter(|e| e.member.status == crate::cluster::rpc::MemberStatus::Alive);
    let mut out = Vec::with_capacity(s.members.len() * 256 + 3);
    out.push(b'{');
    for (i, e) in alive.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e.node_info_json().entry());
    }
    out.extend_from_slice(b"}\n");
    out
}

/// `serfnodes_by_role.json`, joined like [`by_id_json`]: the same bytes as
/// [`by_role`] through `serde_json`.
pub fn by_role_json(s: &Snapshot) -> Vec<u8> {
    let mut roles: BTreeMap<&str, Vec<(&str, &tags::NodeInfoJson)>> = BTreeMap::new();
    for e in s.members.values() {
        if e.member.status == crate::cluster::rpc::MemberStatus::Alive {
            let json = e.node_info_json();
            roles
                .entry(json.role.as_str())
                .or_default()
                .push((e.member.name.as_str(), json));
        }
    }
    let mut out = Vec::with_capacity(s.members.len() * 256 + 3);
    out.push(b'{');
    for (i, (role, mut members)) in roles.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        members.sort_by(|(a, ja), (b, jb)| tags::seniority_of(ja.start, a, jb.start, b));
        serde_json::to_writer(&mut out, role).expect("a string is json");
        out.extend_from_slice(b":[");
        for (j, (_, json)) in members.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            out.extend_from_slice(json.info());
        }
        out.push(b']');
    }
    out.extend_from_slice(b"}\n");
    out
}

pub fn by_role(s: &Snapshot) -> Value {
    let mut roles: BTreeMap<&str, Vec<&Member>> = BTreeMap::new();
    for m in s.alive() {
        roles.entry(tags::role_of(m)).or_default().push(m);
    }
    let map: BTreeMap<&str, Vec<NodeInfo>> = roles
        .into_iter()
        .map(|(role, mut ms)| {
            ms.sort_by(|a, b| tags::seniority(a, b));
            (role, ms.into_iter().map(NodeInfo::of).collect())
        })
        .collect();
    json!(map)
}

pub(crate) fn me(s: &Snapshot) -> Value {
    json!({"id": s.local, "inspect": s.containers.me})
}

pub(crate) fn parent(s: &Snapshot) -> Value {
    json!({"id": s.local, "inspect": s.containers.parent})
}

pub(crate) fn children(s: &Snapshot) -> Value {
    let map: BTreeMap<&str, Value> = s
        .containers
        .children
        .iter()
        .map(|(name, inspect)| (name.as_str(), json!({"id": s.local, "inspect": inspect})))
        .collect();
    json!(map)
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub(crate) fn status(s: &Snapshot) -> Value {
    let mut counts: BTreeMap<&str, usize> = ["alive", "leaving", "left", "failed"]
        .into_iter()
        .map(|k| (k, 0))
        .collect();
    for e in s.members.values() {
        *counts.entry(e.member.status.as_str()).or_default() += 1;
    }
    json!({
        "generation": s.generation,
        "node": s.local,
        "agent": {
            "connected": s.agent.connected,
            // Not reached yet since the start: no outage, no view yet.
            "starting": s.agent.starting(),
            "stale": !s.agent.connected,
            "stale_since": s.agent.stale_since.map(unix),
            "last_error": s.agent.last_error,
        },
        "members": counts,
        "total": s.members.len(),
        // Gossip encryption; null when unknown (a child's mount).
        "encrypted": s.encrypted,
        // A parent's children and their Docker state (running, exited, ...).
        "children": s.containers.children.iter().map(|(name, inspect)| {
            (name.clone(), inspect["State"]["Status"].clone())
        }).collect::<BTreeMap<String, Value>>(),
    })
}

/// A member as `members/<id>.json` shows it (and member events carry it).
pub(crate) fn member_doc(m: &Member) -> Value {
    let mut v = json!(NodeInfo::of(m));
    let obj = v.as_object_mut().expect("node info is an object");
    obj.insert("status".into(), json!(m.status.as_str()));
    obj.insert("addr".into(), json!(m.addr.to_string()));
    obj.insert("port".into(), json!(m.port));
    obj.insert("tags".into(), json!(m.tags));
    v
}

/// Serves `query/` files: each read parses its name and segment and asks
/// through `upstream` on the runtime, answering the lookup when done.
pub(crate) struct Querier<U> {
    upstream: U,
    runtime: tokio::runtime::Handle,
}

impl<U: Upstream + Clone> Querier<U> {
    pub fn new(upstream: U, runtime: tokio::runtime::Handle) -> Querier<U> {
        Querier { upstream, runtime }
    }
}

impl<U: Upstream + Clone> QueryFiles for Querier<U> {
    fn resolve(&self, name: &str, segment: &str, done: Resolved) {
        let q = match Ask::from_file(name, segment) {
            Ok(q) => q,
            Err(e) => {
                tracing::info!("query file {name}/{segment}: {e}");
                return done.fail(libc::ENOENT);
            }
        };
        let upstream = self.upstream.clone();
        self.runtime.spawn(async move {
            match upstream.ask(&Origin::default(), q).await {
                Ok(answers) => {
                    let mut bytes = serde_json::to_vec(&answers).expect("answers serialize");
                    bytes.push(b'\n');
                    done.file(bytes);
                }
                Err(errno) => done.fail(errno),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::membership::View;
    use crate::cluster::rpc::MemberStatus;

    struct NoSink;
    impl ControlSink for NoSink {
        fn submit(&self, _: serfnode_fs::Writer, _: Vec<Vec<u8>>, done: serfnode_fs::Completion) {
            done.fail(0, libc::EIO);
        }
    }

    fn member(name: &str, role: &str, ts: &str, status: MemberStatus) -> Member {
        Member {
            status,
            ..Member::fixture(name, &[("role", role), ("timestamp", ts)])
        }
    }

    fn doc(dir: &dyn Dir, path: &str) -> Doc {
        match path.split_once('/') {
            Some((d, rest)) => match dir.get(d) {
                Some(Node::Dir(sub)) => doc(&*sub, rest),
                _ => panic!("no directory {d}"),
            },
            None => match dir.get(path) {
                Some(Node::File(doc)) => doc,
                _ => panic!("no file {path}"),
            },
        }
    }

    fn read(dir: &dyn Dir, path: &str) -> Value {
        serde_json::from_slice(&doc(dir, path).render()).unwrap()
    }

    struct NoQueries;
    impl QueryFiles for NoQueries {
        fn resolve(&self, _: &str, _: &str, done: Resolved) {
            done.fail(libc::EIO);
        }
    }

    fn tree(view: &View) -> Arc<Tree> {
        let nodes = Nodes {
            sink: Arc::new(NoSink),
            queries: Arc::new(NoQueries),
        };
        let journal = crate::surface::journal::Journal::new(4).snapshot();
        Tree::new(view.snapshot(), journal, nodes, Default::default())
    }

    #[test]
    fn by_id_and_by_role_list_alive_members_oldest_first() {
        use MemberStatus::*;
        let view = View::new();
        view.reconcile(vec![
            member("w-young", "web", "300", Alive),
            member("w-old", "web", "100", Alive),
            member("w-mid", "web", "200", Alive),
            member("d", "db", "50", Alive),
            member("gone", "web", "1", Failed),
            member("bye", "db", "1", Left),
        ]);
        let t = tree(&view);
        let by_id = read(&*t, BY_ID);
        let ids: Vec<_> = by_id.as_object().unwrap().keys().cloned().collect();
        assert_eq!(ids, ["d", "w-mid", "w-old", "w-young"]);
        assert_eq!(by_id["d"]["role"], "db");
        assert_eq!(by_id["d"]["serf_ip"], "127.0.0.9");
        let by_role = read(&*t, BY_ROLE);
        let web: Vec<_> = by_role["web"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].clone())
            .collect();
        assert_eq!(web, ["w-old", "w-mid", "w-young"]);
        assert_eq!(by_role["db"].as_array().unwrap().len(), 1);
    }

    /// The joined files against the `serde_json::Value` rendering they
    /// replace, over members with hostile names, roles, tags and
    /// timestamps: byte for byte, so the file contract does not move.
    #[test]
    fn joined_files_are_byte_for_byte_the_value_rendering() {
        use MemberStatus::*;
        let names = [
            "plain",
            "a/b",
            "..",
            "quote\"d",
            "back\\slash",
            "new\nline",
            "tab\t",
            "nul\0",
            "esc\u{1b}[31m",
            "ünïcødé",
            "\u{2028}sep",
            "emoji 🦀",
            " EventMemberJoin: ",
            "x\n2026/12/03 08:43:55 [INFO] serf: EventMemberJoin: victim 10.0.0.1",
            "",
            "Z",
            "a",
            "a\u{7f}",
            "\u{fffd}",
            "<script>",
            "{\"json\":1}",
        ];
        let roles = [
            Some("web"),
            Some("db"),
            Option::None,
            Some(""),
            Some("we\"b"),
            Some("\n"),
            Some("ü"),
            Some("web "),
        ];
        let stamps = [
            Some("100"),
            Some("1e3"),
            Some("NaN"),
            Some("inf"),
            Option::None,
            Some("-5"),
            Some("x"),
            Some("100.0"),
            Some("0x10"),
        ];
        let statuses = [Alive, Alive, Alive, Failed, Left, Leaving, Alive];
        let mut members = Vec::new();
        for (i, name) in names.iter().enumerate() {
            for copy in 0..3 {
                let mut tags: Vec<(String, String)> = Vec::new();
                if let Some(r) = roles[(i + copy) % roles.len()] {
                    tags.push(("role".into(), r.into()));
                }
                if let Some(t) = stamps[(i * 3 + copy) % stamps.len()] {
                    tags.push(("timestamp".into(), t.into()));
                }
                match (i + copy) % 4 {
                    0 => tags.push(("ports".into(), "80t8080|53u53,5353".into())),
                    1 => tags.push(("ports".into(), "garbage|||t".into())),
                    2 => tags.push(("service".into(), "10.9.9.9".into())),
                    _ => tags.push(("ex\"tra".into(), "v\u{0}\\".into())),
                }
                let tag_refs: Vec<(&str, &str)> =
                    tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let mut m = Member {
                    name: format!("{name}{}", ["", "-2", "\u{0}"][copy]),
                    status: statuses[(i + copy) % statuses.len()].clone(),
                    ..Member::fixture("", &tag_refs)
                };
                if copy == 2 {
                    m.addr = "::1".parse().unwrap();
                    m.port = 1;
                }
                members.push(m);
            }
        }
        let view = View::new();
        view.reconcile(members.clone());
        let s = view.snapshot();
        assert!(
            s.alive().count() > 20,
            "enough members alive to mean something"
        );
        assert_eq!(by_id_json(&s), to_bytes(&by_id(&s)));
        assert_eq!(by_role_json(&s), to_bytes(&by_role(&s)));
        // Again from the cached bytes, after a one-member change.
        members[5].tags.insert("role".into(), "moved".into());
        members[7].status = Failed;
        view.upsert(vec![members[5].clone(), members[7].clone()]);
        let s = view.snapshot();
        assert_eq!(by_id_json(&s), to_bytes(&by_id(&s)));
        assert_eq!(by_role_json(&s), to_bytes(&by_role(&s)));
        // And an empty view.
        let s = View::new().snapshot();
        assert_eq!(by_id_json(&s), to_bytes(&by_id(&s)));
        assert_eq!(by_role_json(&s), to_bytes(&by_role(&s)));
    }

    proptest::proptest! {
        #[test]
        fn joined_files_match_for_any_names_and_tags(
            members in proptest::collection::vec(
                (
                    ".{0,12}",
                    proptest::option::of(".{0,6}"),
                    proptest::option::of("(-?[0-9]{1,4}(\\.[0-9]{0,3})?|.{0,4})"),
                    proptest::collection::btree_map(".{0,5}", ".{0,8}", 0..3),
                    0u8..4,
                ),
                0..30,
            )
        ) {
            use MemberStatus::*;
            let members: Vec<Member> = members
                .into_iter()
                .map(|(name, role, ts, extra, status)| {
                    let mut m = Member::fixture(&name, &[]);
                    m.tags = extra;
                    if let Some(r) = role {
                        m.tags.insert("role".into(), r);
                    }
                    if let Some(t) = ts {
                        m.tags.insert("timestamp".into(), t);
                    }
                    m.status = [Alive, Alive, Failed, Left][status as usize].clone();
                    m
                })
                .collect();
            let view = View::new();
            view.reconcile(members);
            let s = view.snapshot();
            proptest::prop_assert_eq!(by_id_json(&s), to_bytes(&by_id(&s)));
            proptest::prop_assert_eq!(by_role_json(&s), to_bytes(&by_role(&s)));
        }
    }

    #[test]
    fn members_dir_shows_every_status_under_safe_names() {
        use MemberStatus::*;
        let view = View::new();
        view.reconcile(vec![
            member("a", "web", "1", Alive),
            member("../x", "db", "2", Failed),
        ]);
        let t = tree(&view);
        let Some(Node::Dir(members)) = t.get(MEMBERS) else {
            panic!()
        };
        let mut names: Vec<_> = members.entries().into_iter().map(|(n, _)| n).collect();
        names.sort();
        assert_eq!(names, ["..%2Fx.json", "a.json"]);
        let x = read(&*t, "members/..%2Fx.json");
        assert_eq!(x["id"], "../x");
        assert_eq!(x["status"], "failed");
        assert_eq!(x["tags"]["role"], "db");
    }

    #[test]
    fn status_shows_whether_gossip_is_encrypted() {
        let view = View::new();
        // Unknown until the daemon says.
        assert_eq!(read(&*tree(&view), STATUS)["encrypted"], Value::Null);
        view.set_encrypted(Some(false));
        assert_eq!(read(&*tree(&view), STATUS)["encrypted"], false);
        view.set_encrypted(Some(true));
        assert_eq!(read(&*tree(&view), STATUS)["encrypted"], true);
    }

    #[test]
    fn versions_follow_their_inputs_only() {
        use MemberStatus::*;
        let view = View::new();
        view.reconcile(vec![
            member("a", "web", "1", Alive),
            member("b", "db", "2", Alive),
        ]);
        let before = tree(&view);
        assert_eq!(read(&*before, STATUS)["agent"]["starting"], true);
        view.set_disconnected("rpc 127.0.0.1:7373: connection refused");
        let stale = tree(&view);
        assert_eq!(
            doc(&*before, BY_ID).version(),
            doc(&*stale, BY_ID).version()
        );
        assert_ne!(
            doc(&*before, STATUS).version(),
            doc(&*stale, STATUS).version()
        );
        let status = read(&*stale, STATUS);
        assert_eq!(status["agent"]["stale"], true);
        assert_eq!(status["agent"]["starting"], false);
        assert!(status["agent"]["stale_since"].as_f64().unwrap() > 1.7e9);
        assert_eq!(status["members"]["alive"], 2);

        view.reconcile(vec![
            member("a", "web", "1", Alive),
            member("b", "db", "2", Failed),
        ]);
        let after = tree(&view);
        assert_ne!(doc(&*stale, BY_ID).version(), doc(&*after, BY_ID).version());
        assert_eq!(
            doc(&*stale, "members/a.json").version(),
            doc(&*after, "members/a.json").version()
        );
        assert_ne!(
            doc(&*stale, "members/b.json").version(),
            doc(&*after, "members/b.json").version()
        );
    }

    /// by_id and by_role keep their version (so their bytes and the
    /// readers' page cache) through changes they do not show, and move it
    /// with every change they do.
    #[test]
    fn node_info_files_move_only_with_what_they_show() {
        use MemberStatus::*;
        let view = View::new();
        let a = member("a", "web", "1", Alive);
        let b = member("b", "db", "2", Alive);
        view.reconcile(vec![a.clone(), b.clone()]);
        let version = |f: &str| doc(&*tree(&view), f).version();
        let (id0, role0) = (version(BY_ID), version(BY_ROLE));
        let step = |m: Member, shown: bool| {
            let (id, role, own) = (version(BY_ID), version(BY_ROLE), version(STATUS));
            assert!(view.upsert(vec![m.clone()]), "{m:?} is a change");
            assert_ne!(version(STATUS), own, "status.json moves with every change");
            assert_eq!(
                (version(BY_ID) != id, version(BY_ROLE) != role),
                (shown, shown),
                "{m:?}: the Node info files moved?"
            );
        };
        // A tag Node info does not show.
        let mut a1 = a.clone();
        a1.tags.insert("probe".into(), "x".into());
        step(a1.clone(), false);
        assert_eq!((version(BY_ID), version(BY_ROLE)), (id0, role0));
        // What it shows: role, timestamp (seniority), service, address.
        for (k, v) in [
            ("role", "db"),
            ("timestamp", "0.5"),
            ("service", "10.1.1.1"),
        ] {
            let mut m = a1.clone();
            m.tags.insert(k.into(), v.into());
            step(m.clone(), true);
            step(a1.clone(), true);
        }
        let mut moved = a1.clone();
        moved.addr = "127.0.0.10".parse().unwrap();
        step(moved, true);
        step(a1.clone(), true);
        // Alive to failed and back shows; failed to left does not.
        step(
            Member {
                status: Failed,
                ..b.clone()
            },
            true,
        );
        step(
            Member {
                status: Left,
                ..b.clone()
            },
            false,
        );
        let mut left = Member {
            status: Left,
            ..b.clone()
        };
        left.tags.insert("role".into(), "gone".into());
        step(left, false);
        step(b.clone(), true);
        // A new member shows only alive.
        step(member("c", "web", "3", Failed), false);
        step(member("d", "web", "4", Alive), true);
        // A reap shows only for an alive member.
        let alive = [a1.clone(), b.clone(), member("d", "web", "4", Alive)];
        let id = version(BY_ID);
        assert!(view.reconcile(alive.to_vec()), "c reaped");
        assert_eq!(version(BY_ID), id, "c was not alive");
        assert!(view.reconcile(alive[..2].to_vec()), "d reaped");
        assert_ne!(version(BY_ID), id, "d was alive");
    }

    proptest::proptest! {
        /// Whatever the changes, one version of by_id or by_role always
        /// stands for the same bytes: the filesystem lets the kernel cache
        /// a version's pages for good.
        #[test]
        fn a_node_info_file_version_always_means_the_same_bytes(
            ops in proptest::collection::vec(
                (0usize..5, 0u8..8, 0u8..4),
                1..60,
            )
        ) {
            use MemberStatus::*;
            let view = View::new();
            let mut members: Vec<Option<Member>> = vec![Option::None; 5];
            let mut seen: BTreeMap<(u64, &str), Vec<u8>> = BTreeMap::new();
            for (who, what, value) in ops {
                let v = value.to_string();
                let base = members[who].clone().unwrap_or_else(|| member(&format!("m{who}"), "web", "1", Alive));
                let mut m = base.clone();
                match what {
                    0 => { m.tags.insert("role".into(), ["web", "db", "", "x"][value as usize].into()); }
                    1 => { m.tags.insert("timestamp".into(), v); }
                    2 => { m.tags.insert("probe".into(), v); }
                    3 => { m.tags.insert("ports".into(), format!("{v}t80")); }
                    4 => m.status = [Alive, Failed, Left, Leaving][value as usize].clone(),
                    5 => m.port = 7000 + u16::from(value),
                    6 => { m.tags.remove("timestamp"); }
                    _ => {
                        // A full read without this member: reaped.
                        members[who] = Option::None;
                        view.reconcile(members.iter().flatten().cloned().collect());
                        m = base;
                    }
                }
                if what != 7 {
                    members[who] = Some(m.clone());
                    view.upsert(vec![m]);
                }
                let t = tree(&view);
                for f in [BY_ID, BY_ROLE] {
                    let d = doc(&*t, f);
                    let bytes = d.render();
                    let before = seen.entry((d.version(), f)).or_insert_with(|| bytes.clone());
                    proptest::prop_assert_eq!(&*before, &bytes, "{} version {}", f, d.version());
                }
            }
        }
    }

    #[test]
    fn container_info_outside_docker_is_null() {
        let view = View::new();
        view.set_local("n1");
        let t = tree(&view);
        assert_eq!(read(&*t, ME), json!({"id": "n1", "inspect": null}));
        assert_eq!(read(&*t, PARENT_INFO), json!({"id": "n1", "inspect": null}));
        assert_eq!(read(&*t, CHILDREN), json!({}));
        assert!(t.get("nope").is_none());
    }

    #[test]
    fn a_child_tells_itself_from_its_parent() {
        let view = View::new();
        view.set_local("p1");
        view.set_containers(crate::cluster::membership::Containers {
            me: Some(json!({"Name": "/p1-app"})),
            parent: Some(json!({"Name": "/p1"})),
            ..Default::default()
        });
        let t = tree(&view);
        assert_eq!(read(&*t, ME)["inspect"]["Name"], "/p1-app");
        assert_eq!(read(&*t, PARENT_INFO)["inspect"]["Name"], "/p1");
        assert_eq!(read(&*t, PARENT_INFO)["id"], "p1");
    }
}
