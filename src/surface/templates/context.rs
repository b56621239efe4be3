//! What a template sees: the node's files as plain JSON [`Documents`], built
//! from the daemon's snapshot ([`Documents::of_snapshot`]) or read from a
//! running node's mount ([`Documents::read`]), so that the daemon and
//! `serfnode render` give a template the same context; and the
//! [`Context`] a template renders against.
//!
//! | variable | what |
//! |---|---|
//! | `members` | every member the agent knows, any status: the `members/<id>.json` documents, by id |
//! | `alive` | the alive ones among `members`, by id |
//! | `by_id` | `serfnodes_by_id.json`: alive members, id → Node info |
//! | `by_role` | `serfnodes_by_role.json`: role → alive Node infos, oldest first |
//! | `me`, `parent` | `me.json`, `parent.json` |
//! | `children` | `children_by_name.json` |
//! | `status` | `status.json` |
//!
//! The context wraps the documents without copying them: a template pays
//! for the members it looks at, not for the size of the cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr, Value};
use serde_json::Value as Json;

use crate::cluster::membership::Snapshot;
use crate::surface::files;

/// The documents a template's context is made of, as the files show them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Documents {
    /// `members/<id>.json` of every member, sorted by id.
    pub members: Vec<Json>,
    pub by_id: Json,
    pub by_role: Json,
    pub me: Json,
    pub parent: Json,
    pub children: Json,
    pub status: Json,
}

/// A mount that could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} is not json: {error}", path.display())]
    Json {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("the view at {} kept changing while it was read ({tries} tries)", mount.display())]
    Unsettled { mount: PathBuf, tries: usize },
}

/// A read that sees a different generation at its end than at its start is
/// retried this often before giving up.
const READ_TRIES: usize = 5;

impl Documents {
    /// The documents of one snapshot, rendered as the files render them.
    pub fn of_snapshot(s: &Snapshot) -> Documents {
        Documents {
            // The members map is ordered by node name: sorted by id.
            members: s
                .members
                .values()
                .map(|e| files::member_doc(&e.member))
                .collect(),
            by_id: files::by_id(s),
            by_role: files::by_role(s),
            me: files::me(s),
            parent: files::parent(s),
            children: files::children(s),
            status: files::status(s),
        }
    }

    /// The documents a running node serves at `mount`. The files are read
    /// one by one; the read counts when `status.json` shows the same
    /// generation before and after it (each file shows the view of the
    /// moment it is opened, and generations only grow).
    pub fn read(mount: &Path) -> Result<Documents, ReadError> {
        for _ in 0..READ_TRIES {
            let before = read_json(&mount.join(files::STATUS))?;
            let docs = Documents {
                members: read_members(&mount.join(files::MEMBERS))?,
                by_id: read_json(&mount.join(files::BY_ID))?,
                by_role: read_json(&mount.join(files::BY_ROLE))?,
                me: read_json(&mount.join(files::ME))?,
                parent: read_json(&mount.join(files::PARENT_INFO))?,
                children: read_json(&mount.join(files::CHILDREN))?,
                status: read_json(&mount.join(files::STATUS))?,
            };
            if before["generation"] == docs.status["generation"] {
                return Ok(docs);
            }
        }
        Err(ReadError::Unsettled {
            mount: mount.to_owned(),
            tries: READ_TRIES,
        })
    }
}

fn read_json(path: &Path) -> Result<Json, ReadError> {
    let bytes = std::fs::read(path).map_err(|error| ReadError::Io {
        path: path.to_owned(),
        error,
    })?;
    serde_json::from_slice(&bytes).map_err(|error| ReadError::Json {
        path: path.to_owned(),
        error,
    })
}

fn read_members(dir: &Path) -> Result<Vec<Json>, ReadError> {
    let io = |error| ReadError::Io {
        path: dir.to_owned(),
        error,
    };
    let mut members = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        match read_json(&entry.map_err(io)?.path()) {
            Ok(m) => members.push(m),
            // Reaped between the listing and the read: the generation
            // check sees the change.
            Err(ReadError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    members.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Ok(members)
}

/// The variables of one view, built once and shared by every template
/// rendered against it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Context(Value);

impl Context {
    pub fn new(docs: Documents) -> Context {
        // Each member's document is a root of its own, shared by `members`
        // and `alive`: a template reaches a member's fields in one step.
        let members: Vec<Value> = docs.members.into_iter().map(Node::root).collect();
        let alive: Vec<Value> = members
            .iter()
            .filter(|m| {
                m.downcast_object_ref::<Node>()
                    .is_some_and(|n| n.json()["status"] == "alive")
            })
            .cloned()
            .collect();
        Context(minijinja::context! {
            members => Value::from(members),
            alive => Value::from(alive),
            by_id => split(docs.by_id, 1),
            by_role => split(docs.by_role, 2),
            me => Node::root(docs.me),
            parent => Node::root(docs.parent),
            children => Node::root(docs.children),
            status => Node::root(docs.status),
        })
    }

    pub(crate) fn value(&self) -> &Value {
        &self.0
    }
}

/// `doc` as a template value whose containers `depth` levels down are
/// roots of their own: a map or a list of members, each its own document
/// (`by_id`: 1, id → member; `by_role`: 2, role → [member]). Moving the
/// values out copies none of them.
fn split(doc: Json, depth: usize) -> Value {
    if depth == 0 {
        return Node::root(doc);
    }
    match doc {
        Json::Object(map) => Value::from(
            map.into_iter()
                .map(|(k, v)| (k, split(v, depth - 1)))
                .collect::<BTreeMap<String, Value>>(),
        ),
        Json::Array(list) => Value::from(
            list.into_iter()
                .map(|v| split(v, depth - 1))
                .collect::<Vec<Value>>(),
        ),
        scalar => scalar_value(&scalar),
    }
}

/// One step from a value to a member of it.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// A map or list inside a JSON document, as a template value: its members
/// are converted when they are looked at. Scalars are converted at once.
/// A node is its document (shared) and the path to the value inside it, so
/// it owns what it shows; documents are a member each, so paths are short
/// (`m.tags` is one step).
#[derive(Debug)]
pub(crate) struct Node {
    doc: Arc<Json>,
    path: Vec<Step>,
}

/// What a path that leads nowhere shows (never: paths are made from the
/// values they lead to, in documents nobody changes).
static NULL: Json = Json::Null;

impl Node {
    fn root(doc: Json) -> Value {
        Node::wrap(Arc::new(doc), Vec::new())
    }

    /// The value at `path` in `doc` as a template value.
    fn wrap(doc: Arc<Json>, path: Vec<Step>) -> Value {
        let node = Node { doc, path };
        match node.json() {
            Json::Object(_) | Json::Array(_) => Value::from_object(node),
            scalar => scalar_value(scalar),
        }
    }

    /// The JSON value this node stands for.
    pub(crate) fn json(&self) -> &Json {
        let mut at = &*self.doc;
        for step in &self.path {
            let next = match (step, at) {
                (Step::Key(k), Json::Object(map)) => map.get(k),
                (Step::Index(i), Json::Array(list)) => list.get(*i),
                _ => None,
            };
            at = next.unwrap_or(&NULL);
        }
        at
    }

    /// Its member `value`, reached by `step` (made only for a container:
    /// a scalar is converted, and looking one up allocates nothing).
    fn child(&self, value: &Json, step: impl FnOnce() -> Step) -> Value {
        if let Json::Object(_) | Json::Array(_) = value {
            let mut path = Vec::with_capacity(self.path.len() + 1);
            path.extend(self.path.iter().cloned());
            path.push(step());
            Value::from_object(Node {
                doc: self.doc.clone(),
                path,
            })
        } else {
            scalar_value(value)
        }
    }
}

/// A JSON scalar as a template value.
pub(crate) fn scalar_value(v: &Json) -> Value {
    match v {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::from(i),
            (_, Some(u), _) => Value::from(u),
            (_, _, f) => Value::from(f.unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::from(s.as_str()),
        // Not reached: containers are wrapped as nodes.
        Json::Array(_) | Json::Object(_) => Value::from(()),
    }
}

impl Object for Node {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        match self.json() {
            Json::Array(_) => ObjectRepr::Seq,
            _ => ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match self.json() {
            Json::Object(map) => {
                let key = key.as_str()?;
                Some(self.child(map.get(key)?, || Step::Key(key.to_owned())))
            }
            Json::Array(list) => {
                let i = key.as_usize()?;
                Some(self.child(list.get(i)?, || Step::Index(i)))
            }
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.json() {
            Json::Object(map) => {
                Enumerator::Values(map.keys().map(|k| Value::from(k.as_str())).collect())
            }
            Json::Array(list) => Enumerator::Seq(list.len()),
            _ => Enumerator::Empty,
        }
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        match self.json() {
            Json::Object(map) => Some(map.len()),
            Json::Array(list) => Some(list.len()),
            _ => Some(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::membership::View;
    use crate::cluster::rpc::{Member, MemberStatus};
    use serde_json::json;

    fn member(name: &str, role: &str, ts: &str, status: MemberStatus) -> Member {
        Member {
            status,
            ..Member::fixture(name, &[("role", role), ("timestamp", ts)])
        }
    }

    fn view() -> View {
        use MemberStatus::*;
        let view = View::new();
        view.set_local("b");
        view.reconcile(vec![
            member("c", "web", "3", Alive),
            member("a", "web", "1", Alive),
            member("b", "db", "2", Failed),
        ]);
        view
    }

    #[test]
    fn documents_of_a_snapshot_are_the_files() {
        let snap = view().snapshot();
        let docs = Documents::of_snapshot(&snap);
        let ids: Vec<_> = docs.members.iter().map(|m| m["id"].clone()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(docs.members[1]["status"], "failed");
        assert_eq!(docs.by_id, files::by_id(&snap));
        assert_eq!(docs.by_role["web"][0]["id"], "a");
        assert_eq!(docs.me, json!({"id": "b", "inspect": null}));
        assert_eq!(docs.status["members"]["failed"], 1);
    }

    fn render(ctx: &Context, source: &str) -> String {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.render_str(source, ctx.value()).unwrap()
    }

    #[test]
    fn the_context_shows_every_document() {
        let ctx = Context::new(Documents::of_snapshot(&view().snapshot()));
        assert_eq!(
            render(
                &ctx,
                "{% for m in members %}{{ m.id }}={{ m.status }} {% endfor %}"
            ),
            "a=alive b=failed c=alive "
        );
        assert_eq!(
            render(&ctx, "{{ alive | map(attribute='id') | join(',') }}"),
            "a,c"
        );
        assert_eq!(
            render(&ctx, "{{ by_id.c.role }} {{ by_id | length }}"),
            "web 2"
        );
        assert_eq!(
            render(
                &ctx,
                "{% for r, ms in by_role | items %}{{ r }}:{{ ms[0].id }} {% endfor %}"
            ),
            "web:a "
        );
        assert_eq!(render(&ctx, "{{ me.id }} {{ me.inspect }}"), "b None");
        assert_eq!(
            render(&ctx, "{{ status.total }} {{ children | length }}"),
            "3 0"
        );
        assert_eq!(render(&ctx, "{{ members[0].tags.role }}"), "web");
        assert_eq!(render(&ctx, "{{ members[0].port + 1 }}"), "7947");
        let json: Json = serde_json::from_str(&render(&ctx, "{{ alive[0] | tojson }}")).unwrap();
        assert_eq!(
            json,
            files::member_doc(&member("a", "web", "1", MemberStatus::Alive))
        );
    }

    #[test]
    fn a_mount_reads_as_the_snapshot_does() {
        let snap = view().snapshot();
        let docs = Documents::of_snapshot(&snap);
        let dir = tempfile::tempdir().unwrap();
        let put = |name: &str, v: &Json| {
            std::fs::write(dir.path().join(name), serde_json::to_vec(v).unwrap()).unwrap()
        };
        std::fs::create_dir(dir.path().join(files::MEMBERS)).unwrap();
        for m in &docs.members {
            let file = crate::names::member_file_name(m["id"].as_str().unwrap());
            put(&format!("{}/{file}", files::MEMBERS), m);
        }
        put(files::BY_ID, &docs.by_id);
        put(files::BY_ROLE, &docs.by_role);
        put(files::ME, &docs.me);
        put(files::PARENT_INFO, &docs.parent);
        put(files::CHILDREN, &docs.children);
        put(files::STATUS, &docs.status);
        assert_eq!(Documents::read(dir.path()).unwrap(), docs);

        std::fs::write(dir.path().join(files::BY_ROLE), "{").unwrap();
        let err = Documents::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "{}/serfnodes_by_role.json is not json",
                dir.path().display()
            )),
            "{err}"
        );
        std::fs::remove_file(dir.path().join(files::STATUS)).unwrap();
        let err = Documents::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("cannot read") && err.contains("status.json"),
            "{err}"
        );
    }
}
