//! Serf queries both ways: asking one of the cluster and gathering the
//! answers (for `query/` files and `serfnode query`), and answering the
//! built-in queries `where` and `ports` from the live view.
//!
//! A query file is read with `cat`, so its wait holds a FUSE request open,
//! which fuser cannot interrupt: every ask is bounded (a timeout of at most
//! [`MAX_TIMEOUT`]; the read itself at most [`MAX_WAIT`] in a parent, waiting
//! for a lost agent connection included), and ends early once every member
//! the view expects to answer has answered.
//!
//! A query travels in the origin envelope of [`crate::event`] (who asked:
//! this node and, for a child's query file, the child), so every member's
//! handler sees who asked, as for events.
//!
//! Query files: `query/NAME/ARG[;role=R][;node=N,M][;timeout=SECS]`. ARG is
//! the payload: JSON if it parses (`null`, `{"role":"web"}`), else a string;
//! `%XX` escapes stand for bytes a file name cannot hold (`/`) or that the
//! options use (`;`, `%`). For `where` and `ports`, ARG is a role: the
//! payload becomes `{"role": ARG}` and only that role is asked; an empty
//! ARG takes the role from `;role=R` (the two must agree when both are
//! given; an empty R is none), and with neither every member answers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cluster::membership::Snapshot;
use crate::cluster::rpc::{Client, QueryParams, QueryRecord, RpcError};
use crate::cluster::tags::{self, NodeInfo};
use crate::event::{self, plain};
use crate::names::is_event_name;

/// The cap on asked timeouts.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a query read waits in a parent, in all: the query's own
/// timeout plus a second for the agent to take and end it, with any wait
/// for a lost agent connection taken out of the query's time.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(6);
/// The wait when the reader names none: long enough for handlers to answer
/// on a loopback or LAN cluster, short enough for a `cat`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Serf's `QueryResponseSizeLimit` counts the encoded response (node name,
/// ids, framing); this leaves room for that.
pub(crate) const RESPONSE_LIMIT: usize = 1024 - 128;

pub const WHERE: &str = "where";
pub const PORTS: &str = "ports";

/// One question to the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ask {
    pub name: String,
    pub payload: Value,
    /// Only members with this role are asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Only these members are asked (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AskError {
    #[error("query name {0:?} is not 1-128 bytes of [A-Za-z0-9._:@+-] not starting with '.'")]
    Name(String),
    #[error("query option {0:?} is not role=R, node=N[,M] or timeout=SECS")]
    Option(String),
    #[error("query argument {0:?} has a bad %-escape")]
    Escape(String),
    #[error("query {name}: the role argument {arg:?} and role={role:?} differ")]
    Role {
        name: String,
        arg: String,
        role: String,
    },
}

impl Ask {
    /// Parses a query file's name and argument segment.
    pub fn from_file(name: &str, segment: &str) -> Result<Ask, AskError> {
        if !is_event_name(name) {
            return Err(AskError::Name(name.into()));
        }
        let mut parts = segment.split(';');
        let arg = unescape(parts.next().unwrap_or_default())?;
        let mut ask = Ask {
            name: name.into(),
            payload: Value::Null,
            role: None,
            nodes: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        };
        for opt in parts {
            let (k, v) = opt
                .split_once('=')
                .ok_or_else(|| AskError::Option(opt.into()))?;
            let v = unescape(v)?;
            match k {
                "role" => ask.role = Some(v),
                "node" => ask.nodes = v.split(',').map(String::from).collect(),
                "timeout" => {
                    let secs: f64 = v.parse().map_err(|_| AskError::Option(opt.into()))?;
                    if !(secs.is_finite() && secs > 0.0) {
                        return Err(AskError::Option(opt.into()));
                    }
                    // Capped before converting: from_secs_f64 panics past
                    // u64::MAX seconds. Under half a nanosecond rounds to none.
                    ask.timeout = Duration::from_secs_f64(secs.min(MAX_TIMEOUT.as_secs_f64()));
                    if ask.timeout.is_zero() {
                        return Err(AskError::Option(opt.into()));
                    }
                }
                _ => return Err(AskError::Option(opt.into())),
            }
        }
        if is_builtin(name) {
            // An empty `;role=` says nothing, as for an empty ARG.
            let role = match (arg, ask.role.take().filter(|r| !r.is_empty())) {
                (arg, role) if arg.is_empty() => role,
                (arg, None) => Some(arg),
                (arg, Some(role)) if role == arg => Some(role),
                (arg, Some(role)) => {
                    return Err(AskError::Role {
                        name: name.into(),
                        arg,
                        role,
                    })
                }
            };
            ask.payload = role.as_ref().map_or(Value::Null, |r| json!({ "role": r }));
            ask.role = role;
        } else {
            ask.payload = plain(arg.as_bytes());
        }
        Ok(ask)
    }

    /// The file segment that [`Ask::from_file`] parses back into this ask
    /// (for `serfnode query`, which reads the file). An empty `arg` with no
    /// option names the timeout: a file name cannot be empty.
    pub fn to_segment(&self, arg: &str) -> String {
        let mut s = escape(arg);
        if let Some(role) = &self.role {
            s.push_str(";role=");
            s.push_str(&escape(role));
        }
        if !self.nodes.is_empty() {
            s.push_str(";node=");
            s.push_str(&escape(&self.nodes.join(",")));
        }
        if self.timeout != DEFAULT_TIMEOUT || s.is_empty() {
            s.push_str(&format!(";timeout={}", self.timeout.as_secs_f64()));
        }
        s
    }

    /// The members this ask should hear from, by the view.
    pub fn expected(&self, snap: &Snapshot) -> Vec<String> {
        snap.alive()
            .filter(|m| self.role.as_deref().is_none_or(|r| tags::role_of(m) == r))
            .filter(|m| self.nodes.is_empty() || self.nodes.contains(&m.name))
            .map(|m| m.name.clone())
            .collect()
    }

    /// The payload as it goes on the wire: in the envelope naming `from`.
    /// Fails for a payload nested too deep for receivers to unwrap.
    pub fn wire_payload(&self, from: &event::Raiser) -> Result<Vec<u8>, serde_json::Error> {
        event::wrap(
            from,
            &serde_json::to_vec(&self.payload).expect("json values serialize"),
        )
    }

    fn params(&self, payload: Vec<u8>, within: Duration) -> QueryParams {
        let mut filter_tags = BTreeMap::new();
        if let Some(role) = &self.role {
            filter_tags.insert(tags::ROLE.to_string(), format!("^{}$", regex_escape(role)));
        }
        QueryParams {
            name: self.name.clone(),
            payload,
            filter_nodes: self.nodes.clone(),
            filter_tags,
            request_ack: false,
            relay_factor: 0,
            timeout: Some(self.timeout.min(MAX_TIMEOUT).min(within)),
        }
    }
}

/// What came back: each member's response (JSON if it parses, else a
/// string), who was expected and did not answer, and whether all did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answers {
    pub query: String,
    pub payload: Value,
    pub responses: BTreeMap<String, Value>,
    pub missing: Vec<String>,
    pub complete: bool,
    pub elapsed_ms: u64,
}

/// Asks the cluster (with `payload`, [`Ask::wire_payload`]) and gathers
/// answers until every expected member answered or the timeout (the ask's,
/// capped at [`MAX_TIMEOUT`] and at `within`).
pub async fn ask(
    client: &Client,
    snap: &Snapshot,
    ask: &Ask,
    payload: Vec<u8>,
    within: Duration,
) -> Result<Answers, RpcError> {
    let began = Instant::now();
    let expected = ask.expected(snap);
    let timeout = ask.timeout.min(MAX_TIMEOUT).min(within);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut sub = client.query(ask.params(payload, timeout)).await?;
    let mut responses = BTreeMap::new();
    while !expected.iter().all(|n| responses.contains_key(n)) {
        match tokio::time::timeout_at(deadline, sub.recv()).await {
            Ok(Some(QueryRecord::Response { from, payload })) => {
                responses.insert(from, plain(&payload));
            }
            Ok(Some(QueryRecord::Ack { .. })) => {}
            Ok(Some(QueryRecord::Done)) | Ok(None) | Err(_) => break,
        }
    }
    let missing: Vec<String> = expected
        .into_iter()
        .filter(|n| !responses.contains_key(n))
        .collect();
    Ok(Answers {
        query: ask.name.clone(),
        payload: ask.payload.clone(),
        complete: missing.is_empty(),
        responses,
        missing,
        elapsed_ms: began.elapsed().as_millis() as u64,
    })
}

/// Whether `name` is a query serfnode answers itself.
pub(crate) fn is_builtin(name: &str) -> bool {
    name == WHERE || name == PORTS
}

/// This member's answer to a built-in query: `None` if `name` is not one
/// (a handler may answer it), `Some(None)` for no answer (this member's
/// role is not the one asked about, or this member is not known yet: a
/// handler named after a built-in query never runs, not even then).
pub fn builtin(name: &str, payload: &Value, snap: &Snapshot) -> Option<Option<Vec<u8>>> {
    if !is_builtin(name) {
        return None;
    }
    let asked = match payload {
        Value::Object(o) => o.get("role").and_then(Value::as_str),
        Value::String(s) => Some(s.as_str()),
        _ => None,
    };
    let Some(me) = snap.local_member() else {
        return Some(None);
    };
    if asked.is_some_and(|r| r != tags::role_of(me)) {
        return Some(None);
    }
    let info = NodeInfo::of(me);
    let body = if name == WHERE {
        serde_json::to_vec(&info)
    } else {
        serde_json::to_vec(&info.ports)
    };
    Some(Some(body.expect("node info serializes")))
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '%' | '/' | ';' | '\0' => format!("%{:02X}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

fn unescape(s: &str) -> Result<String, AskError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // from_str_radix alone would take "+1".
            let hex = s
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| AskError::Escape(s.into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| AskError::Escape(s.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::membership::View;
    use crate::cluster::rpc::Member;

    fn member(name: &str, role: &str) -> Member {
        Member::fixture(name, &[("role", role), ("ports", "80t8080")])
    }

    #[test]
    fn file_segments_parse_into_asks() {
        let a = Ask::from_file("where", "web").unwrap();
        assert_eq!(a.payload, json!({"role": "web"}));
        assert_eq!(a.role.as_deref(), Some("web"));
        assert_eq!(a.timeout, DEFAULT_TIMEOUT);

        let a = Ask::from_file("ping", "null;node=a,b;timeout=0.5").unwrap();
        assert_eq!(a.payload, Value::Null);
        assert_eq!(a.nodes, ["a", "b"]);
        assert_eq!(a.timeout, Duration::from_millis(500));
        assert_eq!(a.role, None);

        let a = Ask::from_file("echo", r#"{"k":"a%2Fb%3Bc"};timeout=60"#).unwrap();
        assert_eq!(a.payload, json!({"k": "a/b;c"}));
        assert_eq!(a.timeout, MAX_TIMEOUT);
        assert_eq!(
            Ask::from_file("echo", "hello;role=db").unwrap().payload,
            json!("hello")
        );

        assert!(matches!(
            Ask::from_file("../x", "a"),
            Err(AskError::Name(_))
        ));
        for bad in [
            "a;x=1",
            "a;timeout=-1",
            "a;timeout=nan",
            "a;role",
            "%zz",
            "%+1",
            "%-1",
        ] {
            assert!(Ask::from_file("q", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn segments_round_trip() {
        let mut a = Ask::from_file("q", "x").unwrap();
        a.role = Some("w;e/b".into());
        a.nodes = vec!["n1".into(), "n%2".into()];
        a.timeout = Duration::from_millis(1500);
        let seg = a.to_segment(r#"{"p":"/é;"}"#);
        assert!(!seg.contains('/'), "{seg}");
        let b = Ask::from_file("q", &seg).unwrap();
        assert_eq!(b.payload, json!({"p": "/é;"}));
        assert_eq!((b.role, b.nodes, b.timeout), (a.role, a.nodes, a.timeout));
    }

    #[test]
    fn expected_members_follow_role_and_node_filters() {
        let view = View::new();
        view.reconcile(vec![
            member("a", "web"),
            member("b", "db"),
            member("c", "web"),
        ]);
        let snap = view.snapshot();
        let mut ask = Ask::from_file("where", "web").unwrap();
        assert_eq!(ask.expected(&snap), ["a", "c"]);
        ask.nodes = vec!["c".into()];
        assert_eq!(ask.expected(&snap), ["c"]);
        assert_eq!(
            ask.params(Vec::new(), MAX_TIMEOUT).filter_tags["role"],
            "^web$",
            "only the role is asked"
        );
        assert_eq!(regex_escape("a.b*"), r"a\.b\*");
    }

    #[test]
    fn builtins_answer_for_their_role_only() {
        let view = View::new();
        view.reconcile(vec![member("a", "web"), member("b", "db")]);
        view.set_local("a");
        let snap = view.snapshot();
        let info: Value = serde_json::from_slice(
            &builtin(WHERE, &json!({"role": "web"}), &snap)
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(info["id"], "a");
        assert_eq!(info["role"], "web");
        let ports: Value =
            serde_json::from_slice(&builtin(PORTS, &json!("web"), &snap).unwrap().unwrap())
                .unwrap();
        assert_eq!(ports, json!({"80/tcp": ["8080"]}));
        assert_eq!(builtin(WHERE, &json!({"role": "db"}), &snap), Some(None));
        assert_eq!(builtin("other", &Value::Null, &snap), None);
        // No role asked: every member answers.
        assert!(builtin(WHERE, &Value::Null, &snap).unwrap().is_some());
    }

    #[test]
    fn builtins_are_builtin_before_the_local_member_is_known() {
        let view = View::new();
        view.reconcile(vec![member("a", "web")]);
        for name in [WHERE, PORTS] {
            assert_eq!(builtin(name, &json!("web"), &view.snapshot()), Some(None));
        }
        view.set_local("a");
        assert!(builtin(WHERE, &json!("web"), &view.snapshot())
            .unwrap()
            .is_some());
    }

    #[test]
    fn where_and_ports_take_their_role_from_the_argument_or_the_option() {
        let web = Some("web".to_string());
        for seg in ["web", ";role=web", "web;role=web"] {
            let a = Ask::from_file(WHERE, seg).unwrap();
            assert_eq!(
                (&a.role, &a.payload),
                (&web, &json!({"role": "web"})),
                "{seg}"
            );
        }
        let all = Ask::from_file(PORTS, ";timeout=1").unwrap();
        assert_eq!((all.role, all.payload), (None, Value::Null));
        assert!(matches!(
            Ask::from_file(WHERE, "web;role=db"),
            Err(AskError::Role { .. })
        ));
        assert_eq!(Ask::from_file(WHERE, "web;role=").unwrap().role, web);
        // What `serfnode query where --role web` reads, and with no role.
        let mut ask = Ask::from_file("q", "x").unwrap();
        ask.role = web.clone();
        assert_eq!(ask.to_segment(""), ";role=web");
        ask.role = None;
        let seg = ask.to_segment("");
        assert_eq!(Ask::from_file(WHERE, &seg).unwrap().role, None);
    }
}
