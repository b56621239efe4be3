//! The filters for the everyday cases, beside minijinja's own. Each takes a
//! list of members (`members`, `alive`, a `by_role` entry; a map such as
//! `by_id` counts as its values) and refuses what it cannot mean: an
//! undefined list, an unknown status, a member without the field asked for.
//!
//! | filter | gives |
//! |---|---|
//! | `role("web")` | the members whose role is `web` |
//! | `with_tag("zone")`, `with_tag("zone", "eu")` | the members with that tag (set to that value) |
//! | `status("alive")` | the members of that status (`alive`, `leaving`, `left`, `failed`) |
//! | `sort_by("name")` | sorted by a field: `name`, `timestamp`, `service_port`, `tags.zone`, ...; numbers as numbers, members without it last, ties by name; `reverse=true` |
//! | `oldest` | the oldest member (lowest start timestamp, as the hosts file's), or none |
//! | `service_addr` | one member's `service_ip:service_port` (`[v6]:port`) |

use std::borrow::Cow;
use std::cmp::Ordering;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};
use serde_json::Value as Json;

use super::context::Node;

const STATUSES: [&str; 4] = ["alive", "leaving", "left", "failed"];

pub(crate) fn register(env: &mut Environment) {
    env.add_filter("role", role);
    env.add_filter("with_tag", with_tag);
    env.add_filter("status", status);
    env.add_filter("sort_by", sort_by);
    env.add_filter("oldest", oldest);
    env.add_filter("service_addr", service_addr);
}

fn role(state: &State, list: &Value, role: &str) -> Result<Value, Error> {
    keep(state, "role", list, |m| {
        Ok(equals(&field(m, "role")?, role))
    })
}

fn with_tag(state: &State, list: &Value, key: &str, value: Option<&str>) -> Result<Value, Error> {
    keep(state, "with_tag", list, |m| {
        let tags = field(m, "tags")?;
        if tags.is_missing() {
            return Err(fails(
                "with_tag",
                format!(
                    "{} has no tags: by_id and by_role hold Node infos without tags, use members or alive",
                    who(m)
                ),
            ));
        }
        let tag = at(m, &["tags", key]);
        Ok(match value {
            None => !tag.is_missing(),
            Some(v) => equals(&tag, v),
        })
    })
}

fn status(state: &State, list: &Value, status: &str) -> Result<Value, Error> {
    if !STATUSES.contains(&status) {
        return Err(fails(
            "status",
            format!("unknown status `{status}`: one of alive, leaving, left, failed"),
        ));
    }
    keep(state, "status", list, |m| {
        let s = field(m, "status")?;
        if s.is_missing() {
            return Err(fails(
                "status",
                format!(
                    "{} has no status: by_id and by_role hold alive Node infos, use members",
                    who(m)
                ),
            ));
        }
        Ok(equals(&s, status))
    })
}

fn sort_by(state: &State, list: &Value, key: &str, kwargs: Kwargs) -> Result<Value, Error> {
    let reverse: Option<bool> = kwargs.get("reverse")?;
    kwargs.assert_all_used()?;
    let mut sorted = sorted(state, "sort_by", list, key)?;
    if reverse == Some(true) {
        // Members without the field stay last.
        let present = sorted.iter().take_while(|(has, _)| *has).count();
        sorted[..present].reverse();
    }
    Ok(Value::from(
        sorted.into_iter().map(|(_, m)| m).collect::<Vec<_>>(),
    ))
}

fn oldest(state: &State, list: &Value) -> Result<Value, Error> {
    let sorted = sorted(state, "oldest", list, "timestamp")?;
    Ok(sorted
        .into_iter()
        .next()
        .map_or(Value::from(()), |(_, m)| m))
}

fn service_addr(member: &Value) -> Result<String, Error> {
    let ip = at(member, &["service_ip"]);
    let port = at(member, &["service_port"]);
    match (ip.text(), port.text()) {
        (Some(ip), Some(port)) if ip.contains(':') => Ok(format!("[{ip}]:{port}")),
        (Some(ip), Some(port)) => Ok(format!("{ip}:{port}")),
        _ => Err(fails(
            "service_addr",
            format!("{} has no service_ip and service_port", who(member)),
        )),
    }
}

/// A field of a member: borrowed from its document where it is one.
enum Field<'a> {
    Missing,
    Json(&'a Json),
    Value(Value),
}

impl<'a> Field<'a> {
    fn is_missing(&self) -> bool {
        match self {
            Field::Missing => true,
            Field::Json(j) => j.is_null(),
            Field::Value(v) => v.is_undefined() || v.is_none(),
        }
    }

    /// A string or a number, as text: borrowed from a document.
    fn text(&self) -> Option<Cow<'a, str>> {
        match *self {
            Field::Json(Json::String(s)) => Some(Cow::Borrowed(s)),
            Field::Json(Json::Number(n)) => Some(Cow::Owned(n.to_string())),
            Field::Value(ref v) if matches!(v.kind(), ValueKind::String | ValueKind::Number) => {
                Some(Cow::Owned(v.to_string()))
            }
            _ => None,
        }
    }

    fn sort_key(&self) -> Key<'a> {
        match *self {
            Field::Json(Json::Number(n)) => n.as_f64().map_or(Key::Missing, Key::Number),
            Field::Value(ref v) if v.kind() == ValueKind::Number => {
                f64::try_from(v.clone()).map_or(Key::Missing, Key::Number)
            }
            Field::Json(other @ (Json::Bool(_) | Json::Array(_) | Json::Object(_))) => {
                Key::Text(Cow::Owned(other.to_string()))
            }
            _ if self.is_missing() => Key::Missing,
            _ => match self.text() {
                Some(t) => match t.parse::<f64>() {
                    Ok(n) if n.is_finite() => Key::Number(n),
                    _ => Key::Text(t),
                },
                None => match self {
                    Field::Value(v) => Key::Text(Cow::Owned(v.to_string())),
                    _ => Key::Missing,
                },
            },
        }
    }
}

/// Numbers before text, both before members without the field.
#[derive(Debug, PartialEq, PartialOrd)]
enum Key<'a> {
    Number(f64),
    Text(Cow<'a, str>),
    Missing,
}

impl Key<'_> {
    fn cmp(&self, other: &Key) -> Ordering {
        match (self, other) {
            (Key::Number(a), Key::Number(b)) => a.total_cmp(b),
            _ => self.partial_cmp(other).unwrap_or(Ordering::Equal),
        }
    }
}

fn equals(field: &Field, want: &str) -> bool {
    field.text().is_some_and(|t| t == want)
}

/// `member.<path>`: from the document directly when the member is one.
fn at<'a>(member: &'a Value, path: &[&str]) -> Field<'a> {
    if let Some(node) = member.downcast_object_ref::<Node>() {
        let mut json = node.json();
        for key in path {
            match json.get(key) {
                Some(v) => json = v,
                None => return Field::Missing,
            }
        }
        return Field::Json(json);
    }
    let mut value = member.clone();
    for key in path {
        match value.get_attr(key) {
            Ok(v) if !v.is_undefined() => value = v,
            _ => return Field::Missing,
        }
    }
    Field::Value(value)
}

/// A top-level field; a member that is not a map at all is an error.
fn field<'a>(member: &'a Value, key: &str) -> Result<Field<'a>, Error> {
    is_member(member)?;
    Ok(at(member, &[key]))
}

fn is_member(member: &Value) -> Result<(), Error> {
    if member.kind() != ValueKind::Map {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("expected a member (a map), got {}", member.kind()),
        ));
    }
    Ok(())
}

/// How a member is named in errors.
fn who(member: &Value) -> String {
    match at(member, &["id"]).text() {
        Some(id) => format!("member `{id}`"),
        None => "a member".to_owned(),
    }
}

fn fails(filter: &str, why: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, format!("{filter}: {why}"))
}

/// The members of `list`: a list's items, a map's values. Iterating costs
/// fuel as minijinja's own filters do.
fn members(state: &State, filter: &str, list: &Value) -> Result<Vec<Value>, Error> {
    let items: Vec<Value> = match list.kind() {
        ValueKind::Undefined => {
            return Err(fails(filter, "the list of members is undefined".into()));
        }
        ValueKind::Map => {
            if let Some(node) = list.downcast_object_ref::<Node>() {
                if let Json::Object(map) = node.json() {
                    let mut values = Vec::with_capacity(map.len());
                    for key in map.keys() {
                        values.push(list.get_attr(key)?);
                    }
                    return charged(state, values);
                }
            }
            list.try_iter()?
                .map(|k| list.get_item(&k))
                .collect::<Result<_, _>>()?
        }
        ValueKind::Seq | ValueKind::Iterable => list.try_iter()?.collect(),
        other => {
            return Err(fails(
                filter,
                format!("expected a list of members, got {other}"),
            ))
        }
    };
    charged(state, items)
}

fn charged(state: &State, items: Vec<Value>) -> Result<Vec<Value>, Error> {
    state.consume_fuel(items.len() as u64)?;
    Ok(items)
}

/// The members of `list` for which `pred` holds, in order.
fn keep(
    state: &State,
    filter: &str,
    list: &Value,
    mut pred: impl FnMut(&Value) -> Result<bool, Error>,
) -> Result<Value, Error> {
    let mut kept = Vec::new();
    for m in members(state, filter, list)? {
        if pred(&m).map_err(|e| named(filter, e))? {
            kept.push(m);
        }
    }
    Ok(Value::from(kept))
}

/// `e` with the filter's name in front, unless it has it.
fn named(filter: &str, e: Error) -> Error {
    let detail = e.detail().unwrap_or_default();
    if detail.starts_with(&format!("{filter}:")) {
        return e;
    }
    Error::new(e.kind(), format!("{filter}: {detail}"))
}

/// The members of `list` by the field at dotted `key` (`name` is `id`),
/// ties by id, members without it last; with whether each has it.
fn sorted(
    state: &State,
    filter: &str,
    list: &Value,
    key: &str,
) -> Result<Vec<(bool, Value)>, Error> {
    let path: Vec<&str> = match key {
        "name" => vec!["id"],
        _ => key.split('.').collect(),
    };
    let items = members(state, filter, list)?;
    let mut keyed = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        is_member(m).map_err(|e| named(filter, e))?;
        // Keys borrow from the documents: no copy per member.
        let tie = if path == ["id"] {
            None
        } else {
            at(m, &["id"]).text()
        };
        keyed.push((at(m, &path).sort_key(), tie, i));
    }
    // n log n comparisons, as minijinja's sort charges them.
    let n = keyed.len() as u64;
    state.consume_fuel(n * u64::from(n.max(2).ilog2()))?;
    keyed.sort_by(|(a, ta, _), (b, tb, _)| a.cmp(b).then_with(|| ta.cmp(tb)));
    Ok(keyed
        .into_iter()
        .map(|(k, _, i)| (!matches!(k, Key::Missing), items[i].clone()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::surface::templates::context::{Context, Documents};
    use serde_json::json;

    fn member(id: &str, role: &str, status: &str, ts: &str, tags: Json) -> Json {
        json!({
            "id": id, "role": role, "status": status, "timestamp": ts,
            "service_ip": "10.0.0.1", "service_port": "80", "tags": tags,
        })
    }

    fn ctx() -> Context {
        let members = vec![
            member(
                "a",
                "web",
                "alive",
                "30",
                json!({"zone": "eu", "weight": "10"}),
            ),
            member(
                "b",
                "web",
                "failed",
                "10",
                json!({"zone": "us", "weight": "9"}),
            ),
            member("c", "db", "alive", "20", json!({"zone": "eu"})),
            member("d", "web", "alive", "", json!({"weight": "100"})),
            member("e", "web", "alive", "5", json!({})),
        ];
        Context::new(Documents {
            by_id: json!({"x": {"id": "x", "role": "web", "service_ip": "::1", "service_port": "8080", "timestamp": "1"}}),
            members,
            ..Documents::default()
        })
    }

    fn env() -> Environment<'static> {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_fuel(Some(100_000));
        register(&mut env);
        env
    }

    fn render(source: &str) -> Result<String, String> {
        env()
            .render_str(source, ctx().value())
            .map_err(|e| e.detail().unwrap_or_default().to_owned())
    }

    fn ids(expr: &str) -> String {
        render(&format!(
            "{{{{ {expr} | map(attribute='id') | join(',') }}}}"
        ))
        .unwrap()
    }

    #[test]
    fn role_keeps_the_members_of_a_role() {
        assert_eq!(ids("members | role('web')"), "a,b,d,e");
        assert_eq!(ids("alive | role('db')"), "c");
        assert_eq!(ids("members | role('nope')"), "");
        assert_eq!(
            ids("by_id | role('web')"),
            "x",
            "a map counts as its values"
        );
    }

    #[test]
    fn with_tag_keeps_members_with_a_tag_or_a_tag_value() {
        assert_eq!(ids("members | with_tag('zone')"), "a,b,c");
        assert_eq!(ids("members | with_tag('zone', 'eu')"), "a,c");
        assert_eq!(ids("alive | with_tag('zone', 'us')"), "");
        assert_eq!(
            render("{{ by_id | with_tag('zone') }}").unwrap_err(),
            "with_tag: member `x` has no tags: by_id and by_role hold Node infos without tags, use members or alive"
        );
    }

    #[test]
    fn status_keeps_the_members_of_a_status_and_refuses_a_typo() {
        assert_eq!(ids("members | status('alive')"), "a,c,d,e");
        assert_eq!(ids("members | status('failed')"), "b");
        assert_eq!(
            render("{{ members | status('alvie') }}").unwrap_err(),
            "status: unknown status `alvie`: one of alive, leaving, left, failed"
        );
        assert!(render("{{ by_id | status('alive') }}")
            .unwrap_err()
            .contains("member `x` has no status"));
    }

    #[test]
    fn sort_by_orders_numbers_as_numbers_and_missing_last() {
        assert_eq!(ids("members | sort_by('name', reverse=true)"), "e,d,c,b,a");
        assert_eq!(ids("members | sort_by('timestamp')"), "e,b,c,a,d");
        assert_eq!(ids("members | sort_by('tags.weight')"), "b,a,d,c,e");
        assert_eq!(
            ids("members | sort_by('tags.weight', reverse=true)"),
            "d,a,b,c,e"
        );
        assert_eq!(ids("members | sort_by('tags.zone')"), "a,c,b,d,e");
        assert_eq!(
            ids("members | role('web') | status('alive') | sort_by('name')"),
            "a,d,e"
        );
        assert!(render("{{ members | sort_by('name', reversed=true) }}")
            .unwrap_err()
            .contains("reversed"));
    }

    #[test]
    fn oldest_is_the_lowest_timestamp_or_none() {
        assert_eq!(render("{{ (members | oldest).id }}").unwrap(), "e");
        assert_eq!(
            render("{{ (members | role('db') | oldest).id }}").unwrap(),
            "c"
        );
        assert_eq!(
            render("{{ members | role('nope') | oldest }}").unwrap(),
            "None"
        );
        // A missing timestamp is the youngest, as in the hosts file.
        assert_eq!(
            render("{{ (members | role('web') | sort_by('timestamp') | last).id }}").unwrap(),
            "d"
        );
    }

    #[test]
    fn service_addr_joins_ip_and_port() {
        assert_eq!(
            render("{{ members[0] | service_addr }}").unwrap(),
            "10.0.0.1:80"
        );
        assert_eq!(
            render("{{ by_id.x | service_addr }}").unwrap(),
            "[::1]:8080"
        );
        assert_eq!(
            render("{{ members[0].tags | service_addr }}").unwrap_err(),
            "service_addr: a member has no service_ip and service_port"
        );
    }

    #[test]
    fn filters_refuse_what_is_not_a_list_of_members() {
        assert_eq!(
            render("{{ memberz | role('web') }}").unwrap_err(),
            "role: the list of members is undefined"
        );
        assert_eq!(
            render("{{ 3 | role('web') }}").unwrap_err(),
            "role: expected a list of members, got number"
        );
        assert_eq!(
            render("{{ [1] | role('web') }}").unwrap_err(),
            "role: expected a member (a map), got number"
        );
    }
}
