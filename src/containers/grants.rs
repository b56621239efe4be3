//! Which child is which, and what each may ask for. Children share one
//! socket (`replica.sock` in the read-only share), so a child's name in its
//! `hello` proves nothing: the parent gives each child container a random
//! token in its environment (`SERFNODE_CHILD_TOKEN`, read by the wrapper and
//! not passed on to the application) and only a `hello` with the right
//! token is served as that child. Its grant then says which user events it
//! may raise and which queries it may ask (the manifest's `allow:`);
//! anything else gets EACCES and is logged with the child's name.
//!
//! Defaults: every user event and every query except the reserved names
//! (`container` and the member events: their handlers on every member trust
//! that serfnode or Serf raised them, so a child must not forge its
//! siblings' lifecycle or a membership change, as an event or as a query).
//! A pattern is a name, or a prefix followed by `*`; no pattern reaches a
//! reserved name.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::Deserialize;
use serde_json::Value;

use crate::names::is_event_name;
use crate::surface::restrict::TOKEN_ENV;

/// Names only serfnode (`container`) or Serf (the member events) raise; no
/// child may raise or ask them.
pub(crate) const RESERVED: &[&str] = &[
    "container",
    "member-join",
    "member-leave",
    "member-failed",
    "member-update",
    "member-reap",
];

/// A child's `allow:` in the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "events and queries lists")]
pub struct Allow {
    /// User events it may raise [default: all but the reserved names].
    #[serde(default, deserialize_with = "patterns")]
    pub events: Option<Vec<String>>,
    /// Queries it may ask [default: all but the reserved names].
    #[serde(default, deserialize_with = "patterns")]
    pub queries: Option<Vec<String>>,
}

/// A list of names, or prefixes followed by `*`, refused (naming the bad
/// one) when a pattern could match no event name.
fn patterns<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let list = Option::<Vec<String>>::deserialize(d)?;
    if let Some(bad) = list.iter().flatten().find(|p| !valid_pattern(p)) {
        return Err(serde::de::Error::invalid_value(
            serde::de::Unexpected::Str(bad),
            &"an event name, or a prefix of one followed by *",
        ));
    }
    Ok(list)
}

fn valid_pattern(p: &str) -> bool {
    let stem = p.strip_suffix('*').unwrap_or(p);
    (stem.is_empty() && p == "*") || is_event_name(stem)
}

impl Allow {
    pub fn event(&self, name: &str) -> bool {
        !RESERVED.contains(&name) && permits(self.events.as_deref(), name)
    }

    pub fn query(&self, name: &str) -> bool {
        !RESERVED.contains(&name) && permits(self.queries.as_deref(), name)
    }
}

fn permits(patterns: Option<&[String]>, name: &str) -> bool {
    let Some(patterns) = patterns else {
        return true;
    };
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => p == name,
    })
}

/// One child's identity and permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    pub token: String,
    pub allow: Allow,
}

/// The grants of a parent's children, by child name; shared by the Docker
/// side (which knows tokens and manifests) and the replica socket.
#[derive(Debug, Clone, Default)]
pub(crate) struct Grants(Arc<RwLock<HashMap<String, Grant>>>);

impl Grants {
    pub fn set(&self, child: &str, grant: Grant) {
        self.0.write().insert(child.to_owned(), grant);
    }

    pub fn remove(&self, child: &str) {
        self.0.write().remove(child);
    }

    /// The child's grant if `token` is its token.
    pub fn check(&self, child: &str, token: Option<&str>) -> Option<Allow> {
        let grants = self.0.read();
        let grant = grants.get(child)?;
        // Both sides are short; a timing difference reveals nothing useful
        // to a process that can already try tokens only over a local socket.
        (Some(grant.token.as_str()) == token).then(|| grant.allow.clone())
    }
}

/// A fresh random token.
pub(crate) fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The token in a container's inspect (`Config.Env`), if any.
pub(crate) fn token_of(inspect: &Value) -> Option<String> {
    let prefix = format!("{TOKEN_ENV}=");
    inspect["Config"]["Env"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find_map(|e| e.strip_prefix(&prefix).map(String::from))
}

/// Removes the token from an inspect that files will show.
pub(crate) fn scrub(inspect: &mut Value) {
    let prefix = format!("{TOKEN_ENV}=");
    if let Some(env) = inspect["Config"]["Env"].as_array_mut() {
        env.retain(|e| !e.as_str().is_some_and(|e| e.starts_with(&prefix)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_allow_every_name_but_the_reserved() {
        let a = Allow::default();
        assert!(a.event("deploy") && a.query("where"));
        for name in RESERVED {
            assert!(!a.event(name) && !a.query(name), "{name}");
        }
        let all = Allow {
            events: Some(vec!["*".into()]),
            queries: Some(vec!["member-*".into(), "container".into()]),
        };
        assert!(!all.event("member-join") && !all.query("member-join"));
        assert!(!all.query("container") && all.query("member-x"));
    }

    #[test]
    fn lists_allow_names_and_prefixes_only() {
        let a = Allow {
            events: Some(vec!["deploy".into(), "app-*".into()]),
            queries: Some(vec![]),
        };
        assert!(a.event("deploy") && a.event("app-x") && a.event("app-"));
        assert!(!a.event("deploy2") && !a.event("other") && !a.event("container"));
        assert!(!a.query("where"));
        let all = Allow {
            events: Some(vec!["*".into(), "container".into()]),
            queries: None,
        };
        assert!(all.event("anything") && !all.event("container"));
        assert!(valid_pattern("*") && valid_pattern("app-*") && valid_pattern("x"));
        assert!(!valid_pattern("a/b") && !valid_pattern("**") && !valid_pattern(""));
    }

    #[test]
    fn tokens_are_checked_per_child() {
        let g = Grants::default();
        g.set(
            "web",
            Grant {
                token: "t1".into(),
                allow: Allow::default(),
            },
        );
        assert!(g.check("web", Some("t1")).is_some());
        assert!(g.check("web", Some("t2")).is_none());
        assert!(g.check("web", None).is_none());
        assert!(g.check("db", Some("t1")).is_none());
        let t = new_token().unwrap();
        assert_eq!(t.len(), 32);
        assert_ne!(t, new_token().unwrap());
    }

    #[test]
    fn tokens_come_from_and_leave_the_inspect() {
        let mut inspect = json!({"Config": {"Env": ["A=1", "SERFNODE_CHILD_TOKEN=abc", "B=2"]}});
        assert_eq!(token_of(&inspect).as_deref(), Some("abc"));
        scrub(&mut inspect);
        assert_eq!(inspect["Config"]["Env"], json!(["A=1", "B=2"]));
        assert_eq!(token_of(&inspect), None);
    }
}
