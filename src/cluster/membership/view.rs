//! The membership view: one immutable [`Snapshot`] per generation, published
//! through a watch channel so readers (files, hosts hook) take the latest
//! without locks held across their work. Every change bumps the generation;
//! a reconcile that changes nothing publishes nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use imbl::OrdMap;
use tokio::sync::watch;

use crate::cluster::rpc::Member;
use crate::cluster::tags::NodeInfoJson;
use crate::names::member_file_name;

/// A member and the generation at which its record last changed (the version
/// of its `members/<id>.json`).
#[derive(Debug, Clone)]
pub struct Entry {
    pub member: Arc<Member>,
    pub changed: u64,
    /// This version's Node info as JSON, rendered by the first reader that
    /// needs it and shared by every later snapshot holding this version.
    json: Arc<OnceLock<NodeInfoJson>>,
}

/// The same version of the same member: what a snapshot's difference
/// from an earlier one compares (shared versions are one allocation).
impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.changed == other.changed && Arc::ptr_eq(&self.member, &other.member)
    }
}

impl Entry {
    fn new(member: Member, changed: u64) -> Entry {
        Entry {
            member: Arc::new(member),
            changed,
            json: Arc::default(),
        }
    }

    fn alive(&self) -> bool {
        self.member.status == crate::cluster::rpc::MemberStatus::Alive
    }

    /// This version's Node info as the by-id and by-role files show it,
    /// rendered once.
    pub(crate) fn node_info_json(&self) -> &NodeInfoJson {
        self.json.get_or_init(|| NodeInfoJson::of(&self.member))
    }
}

/// Whether the local agent is reachable; while it is not, the last known
/// members stay served and the view is stale.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentState {
    pub connected: bool,
    pub stale_since: Option<SystemTime>,
    pub last_error: Option<String>,
}

impl AgentState {
    /// Not reached yet, and no outage either: the daemon (or a child's
    /// mount) has just started.
    pub fn starting(&self) -> bool {
        !self.connected && self.stale_since.is_none()
    }
}

/// What Docker says about this node's containers (`None` outside Docker),
/// redacted for the files (see [`crate::containers::secrets`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Containers {
    pub me: Option<serde_json::Value>,
    pub parent: Option<serde_json::Value>,
    pub children: BTreeMap<String, serde_json::Value>,
    /// For each child allowed to see secret-looking environment values
    /// (`show_secrets: true`): what its `parent.json` and `me.json` show.
    pub shown: BTreeMap<String, Shown>,
}

/// A child's view of the parent's and its own inspect, secret-looking
/// values shown (serfnode's own secrets are in no inspect).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shown {
    pub parent: Option<serde_json::Value>,
    pub me: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub generation: u64,
    /// Generation of the last change to what `serfnodes_by_id.json` and
    /// `serfnodes_by_role.json` show: the set of alive members and their
    /// Node info. A change to anything else of a member (a tag Node info
    /// does not show, a status other than alive turning into another)
    /// leaves it, so those files keep their bytes and readers their cache.
    pub nodes_gen: u64,
    /// Generation of the last change to `local` or `containers`: the inputs
    /// of the Container info documents.
    pub containers_gen: u64,
    /// Every member the agent reports, by node name, whatever its status.
    pub members: OrdMap<String, Entry>,
    /// Safe file name under `members/` → node name.
    pub files: OrdMap<String, String>,
    /// This node's name, once the agent told us.
    pub local: Option<String>,
    pub agent: AgentState,
    pub containers: Arc<Containers>,
    /// Whether gossip is encrypted: from the daemon's config, or asked of
    /// an attached agent; `None` until known (and in a child's mirror).
    pub encrypted: Option<bool>,
}

impl Snapshot {
    pub fn alive(&self) -> impl Iterator<Item = &Member> {
        self.members
            .values()
            .map(|e| &*e.member)
            .filter(|m| m.status == crate::cluster::rpc::MemberStatus::Alive)
    }

    pub fn local_member(&self) -> Option<&Member> {
        let name = self.local.as_ref()?;
        self.members.get(name).map(|e| &*e.member)
    }
}

/// Shared handle to the current snapshot; cheap to clone.
#[derive(Clone)]
pub struct View {
    tx: Arc<watch::Sender<Arc<Snapshot>>>,
}

impl Default for View {
    fn default() -> Self {
        Self::new()
    }
}

impl View {
    pub fn new() -> View {
        let (tx, _) = watch::channel(Arc::new(Snapshot::default()));
        View { tx: Arc::new(tx) }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// Applies `f` to a copy of the current snapshot; publishes it under the
    /// next generation only if `f` reports a change.
    fn update(&self, f: impl FnOnce(&mut Snapshot) -> bool) -> bool {
        self.tx.send_if_modified(|cur| {
            let mut next = (**cur).clone();
            next.generation = cur.generation + 1;
            if !f(&mut next) {
                return false;
            }
            *cur = Arc::new(next);
            true
        })
    }

    /// Makes the view's members exactly `members` (the agent's full list).
    /// Members missing from it were reaped. Returns whether anything changed.
    pub fn reconcile(&self, members: Vec<Member>) -> bool {
        self.update(|snap| snap.apply_members(members))
    }

    /// Sets these members as the agent now reports them (a re-read of a
    /// few), leaving every other member as it is. Returns whether anything
    /// changed.
    pub fn upsert(&self, members: Vec<Member>) -> bool {
        self.update(|snap| {
            let mut changed = false;
            for member in members {
                changed |= snap.apply_member(member);
            }
            changed
        })
    }

    pub fn set_local(&self, name: &str) {
        self.update(|snap| snap.apply_local(Some(name)));
    }

    pub fn set_connected(&self) {
        self.update(|snap| snap.apply_agent(None));
    }

    /// Marks the view stale from now (or keeps the earlier start of the
    /// outage) and records why.
    pub fn set_disconnected(&self, error: &str) {
        self.update(|snap| snap.apply_agent(Some(error)));
    }

    /// Records whether gossip is encrypted (status.json's `encrypted`).
    pub fn set_encrypted(&self, encrypted: Option<bool>) {
        self.update(|snap| {
            let changed = snap.encrypted != encrypted;
            snap.encrypted = encrypted;
            changed
        });
    }

    pub fn set_containers(&self, containers: Containers) {
        self.update(|snap| snap.apply_containers(containers));
    }

    /// Replaces everything at once, as one generation: a mirror of another
    /// view (a child's copy of its parent's) never shows a half-applied state.
    pub fn mirror(&self, m: Mirror) -> bool {
        self.update(|snap| {
            // `|`, not `||`: every part is applied.
            snap.apply_members(m.members)
                | snap.apply_local(m.local.as_deref())
                | snap.apply_agent(m.agent_error.as_deref())
                | snap.apply_containers(m.containers)
        })
    }
}

/// A whole view as another daemon sends it (see [`View::mirror`]).
#[derive(Debug, Clone, Default)]
pub struct Mirror {
    pub members: Vec<Member>,
    pub local: Option<String>,
    /// `None` while the source follows its agent; otherwise why it cannot.
    pub agent_error: Option<String>,
    pub containers: Containers,
}

// Each `apply_*` edits a snapshot that already carries the next generation
// and reports whether anything changed.
impl Snapshot {
    fn apply_members(&mut self, members: Vec<Member>) -> bool {
        let gen = self.generation;
        let mut changed = false;
        let mut seen = std::collections::HashSet::with_capacity(members.len());
        for member in members {
            seen.insert(member.name.clone());
            changed |= self.apply_member(member);
        }
        if seen.len() != self.members.len() {
            let gone: Vec<String> = self
                .members
                .keys()
                .filter(|k| !seen.contains(*k))
                .cloned()
                .collect();
            for name in gone {
                if let Some(e) = self.members.remove(&name) {
                    if e.alive() {
                        self.nodes_gen = gen;
                    }
                }
                self.files.remove(&member_file_name(&name));
            }
            changed = true;
        }
        changed
    }

    /// Sets one member; whether it differed. Moves `nodes_gen` to this
    /// generation when what the Node info files show of it moved.
    fn apply_member(&mut self, member: Member) -> bool {
        let old = match self.members.get(&member.name) {
            Some(e) if *e.member == member => return false,
            Some(e) => Some(e.clone()),
            None => {
                self.files
                    .insert(member_file_name(&member.name), member.name.clone());
                None
            }
        };
        let entry = Entry::new(member, self.generation);
        let shown = match &old {
            None => entry.alive(),
            Some(old) => match (old.alive(), entry.alive()) {
                (false, false) => false,
                (true, true) => !old.node_info_json().same_as(entry.node_info_json()),
                _ => true,
            },
        };
        if shown {
            self.nodes_gen = self.generation;
        }
        self.members.insert(entry.member.name.clone(), entry);
        true
    }

    fn apply_local(&mut self, name: Option<&str>) -> bool {
        if name.is_none() || self.local.as_deref() == name {
            return false;
        }
        self.local = name.map(str::to_owned);
        self.containers_gen = self.generation;
        true
    }

    /// `None`: connected; `Some(why)`: stale since the first failure.
    fn apply_agent(&mut self, error: Option<&str>) -> bool {
        let next = match error {
            None => AgentState {
                connected: true,
                stale_since: None,
                last_error: self.agent.last_error.clone(),
            },
            Some(e) => AgentState {
                connected: false,
                stale_since: self.agent.stale_since.or(Some(SystemTime::now())),
                last_error: Some(e.to_owned()),
            },
        };
        let changed = self.agent != next;
        self.agent = next;
        changed
    }

    fn apply_containers(&mut self, containers: Containers) -> bool {
        if *self.containers == containers {
            return false;
        }
        self.containers = Arc::new(containers);
        self.containers_gen = self.generation;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::rpc::MemberStatus;

    fn m(name: &str, status: MemberStatus, role: &str) -> Member {
        Member {
            name: name.into(),
            addr: "127.0.0.9".parse().unwrap(),
            port: 7946,
            tags: [("role".to_string(), role.to_string())].into(),
            status,
            protocol: [1, 5, 5],
            delegate: [2, 5, 4],
        }
    }

    #[test]
    fn reconcile_bumps_only_on_change_and_tracks_versions() {
        let view = View::new();
        assert!(view.reconcile(vec![
            m("a", MemberStatus::Alive, "web"),
            m("b", MemberStatus::Alive, "db")
        ]));
        let s1 = view.snapshot();
        assert_eq!(s1.generation, 1);
        assert_eq!(s1.nodes_gen, 1);
        assert!(!view.reconcile(vec![
            m("b", MemberStatus::Alive, "db"),
            m("a", MemberStatus::Alive, "web")
        ]));
        assert_eq!(view.snapshot().generation, 1);

        assert!(view.reconcile(vec![
            m("a", MemberStatus::Alive, "web"),
            m("b", MemberStatus::Failed, "db")
        ]));
        let s2 = view.snapshot();
        assert_eq!(s2.generation, 2);
        assert_eq!(
            s2.members["a"].changed, 1,
            "unchanged member keeps its version"
        );
        assert_eq!(s2.members["b"].changed, 2);
        assert_eq!(s2.alive().count(), 1);
        // The earlier snapshot is untouched.
        assert_eq!(s1.members["b"].member.status, MemberStatus::Alive);
    }

    #[test]
    fn reaped_members_leave_the_view_and_their_file_name() {
        let view = View::new();
        view.reconcile(vec![
            m("a", MemberStatus::Alive, "web"),
            m("x/y", MemberStatus::Left, "db"),
        ]);
        assert_eq!(view.snapshot().files.len(), 2);
        assert!(view.reconcile(vec![m("a", MemberStatus::Alive, "web")]));
        let s = view.snapshot();
        assert_eq!(s.members.len(), 1);
        assert_eq!(s.files.len(), 1);
        assert_eq!(s.files.get("a.json").map(String::as_str), Some("a"));
    }

    #[test]
    fn stale_since_survives_repeated_failures_and_clears_on_connect() {
        let view = View::new();
        view.set_connected();
        view.set_disconnected("rpc 127.0.0.1:7373: connection refused");
        let since = view.snapshot().agent.stale_since.unwrap();
        view.set_disconnected("rpc 127.0.0.1:7373: connection reset");
        let s = view.snapshot();
        assert_eq!(s.agent.stale_since, Some(since));
        assert!(!s.agent.connected);
        view.set_connected();
        let s = view.snapshot();
        assert!(s.agent.connected && s.agent.stale_since.is_none());
    }

    #[tokio::test]
    async fn subscribers_see_the_latest_generation() {
        let view = View::new();
        let mut rx = view.subscribe();
        view.reconcile(vec![m("a", MemberStatus::Alive, "web")]);
        view.set_local("a");
        rx.changed().await.unwrap();
        let s = rx.borrow_and_update().clone();
        assert_eq!(s.generation, 2);
        assert_eq!(s.local_member().unwrap().name, "a");
    }
}
