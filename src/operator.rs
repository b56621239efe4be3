//! The operator commands (`serfnode members|event|query|status|render`, and
//! [`keys`] and [`watch`]): each talks to the local daemon through its files
//! (`keys`: to the local agent), so they work the same in a parent, on a host
//! and inside a child, with the child's limits.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

pub mod keys;
pub mod watch;

use crate::surface::files;
use crate::surface::query::{self, Ask};

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))
}

/// Every known member (`members/*.json`), sorted by name.
pub fn members(mount: &Path, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let dir = mount.join(files::MEMBERS);
    let mut members = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("list {}", dir.display()))?
            .path();
        match read_json(&path) {
            Ok(m) => members.push(m),
            // The member was reaped between the listing and the read.
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    members.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&members)?)?;
        return Ok(());
    }
    let rows: Vec<[String; 5]> = members
        .iter()
        .map(|m| {
            let s = |k: &str| printable(m[k].as_str().unwrap_or_default());
            [
                s("id"),
                format!("{}:{}", s("addr"), m["port"]),
                s("status"),
                s("role"),
                format!("{}:{}", s("service_ip"), s("service_port")),
            ]
        })
        .collect();
    table(out, ["NAME", "ADDRESS", "STATUS", "ROLE", "SERVICE"], &rows)
}

/// A cell as the terminal may show it: control characters (newlines,
/// escape sequences) escaped, so a member's name or role cannot forge rows
/// or steer the terminal.
fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| -> Box<dyn Iterator<Item = char>> {
            if c.is_control() {
                Box::new(c.escape_default())
            } else {
                Box::new(std::iter::once(c))
            }
        })
        .collect()
}

fn table<const N: usize>(
    out: &mut impl Write,
    head: [&str; N],
    rows: &[[String; N]],
) -> anyhow::Result<()> {
    let mut widths = head.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(head.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

/// A command-line payload: JSON if it parses, else a string; none is null.
fn payload_arg(raw: Option<&str>) -> Value {
    match raw {
        None => Value::Null,
        Some(s) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string())),
    }
}

/// Writes one line to the write node, in one write(2), and explains the
/// errno it may fail with.
pub fn event(mount: &Path, name: &str, payload: Option<&str>) -> anyhow::Result<()> {
    let path = mount.join(files::WRITE_NODE);
    let mut line = serde_json::to_vec(&(name, payload_arg(payload)))?;
    line.push(b'\n');
    let res = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write(&line));
    match res {
        Ok(n) if n == line.len() => Ok(()),
        Ok(n) => bail!(
            "event {name}: short write to {} ({n} of {} bytes)",
            path.display(),
            line.len()
        ),
        Err(e) => {
            let why = match e.raw_os_error() {
                Some(libc::EINVAL) => "not a valid event (name or payload)",
                Some(libc::EMSGSIZE) => "name and payload are over serf's size limit",
                Some(libc::EAGAIN) => "the agent is unreachable; try again",
                Some(libc::EACCES) => "this container may not raise it",
                _ => "",
            };
            let sep = if why.is_empty() { "" } else { ": " };
            bail!("event {name}: write {}: {e}{sep}{why}", path.display())
        }
    }
}

/// Reads the query file for this ask and prints its answers.
pub fn query(
    mount: &Path,
    name: &str,
    payload: Option<&str>,
    role: Option<String>,
    nodes: Vec<String>,
    timeout: f64,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if !(timeout.is_finite() && timeout > 0.0) {
        bail!("query {name}: timeout {timeout} is not a positive number of seconds");
    }
    // For where/ports the argument is the role itself, and --role says
    // the same: either will do, both must agree.
    let arg = if query::is_builtin(name) {
        match (payload, role.as_deref()) {
            (Some(arg), Some(role)) if arg != role => {
                bail!("query {name}: the role argument {arg:?} and --role {role:?} differ")
            }
            (Some(arg), _) => arg,
            (None, _) => "",
        }
    } else {
        payload.unwrap_or("null")
    };
    let ask = Ask {
        name: name.into(),
        payload: Value::Null,
        role,
        nodes,
        timeout: Duration::from_secs_f64(timeout).min(query::MAX_TIMEOUT),
    };
    let path: PathBuf = mount
        .join(files::QUERY)
        .join(name)
        .join(ask.to_segment(arg));
    let answers = read_json(&path).map_err(|e| {
        let why = match e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            Some(libc::ENOENT) => ": not a valid query name or option",
            Some(libc::EAGAIN) => ": the agent is unreachable; try again",
            Some(libc::EACCES) => ": this container may not ask it",
            Some(libc::EMSGSIZE) => ": the query is over serf's 1 KB limit",
            Some(libc::ENAMETOOLONG) => ": the payload is too long for a file name",
            _ => "",
        };
        anyhow::anyhow!("query {name}: {e:#}{why}")
    })?;
    writeln!(out, "{}", serde_json::to_string_pretty(&answers)?)?;
    Ok(())
}

/// The daemon's status, as a short summary or as status.json; returns
/// whether it is healthy: following its agent, the view current. (A child's
/// mount is healthy while its parent's daemon is.)
pub fn status(mount: &Path, json: bool, out: &mut impl Write) -> anyhow::Result<bool> {
    let s = read_json(&mount.join(files::STATUS))?;
    let agent = &s["agent"];
    let healthy = agent["connected"] == true;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?;
        return Ok(healthy);
    }
    let agent_line = if healthy {
        "connected".to_string()
    } else if agent["starting"] == true {
        "starting (not reached yet)".to_string()
    } else {
        format!(
            "unreachable since {} (stale view)",
            agent["stale_since"]
                .as_f64()
                .map_or("?".into(), |t| format!("{t:.0}"))
        )
    };
    writeln!(out, "node        {}", s["node"].as_str().unwrap_or("?"))?;
    writeln!(out, "generation  {}", s["generation"])?;
    writeln!(out, "agent       {agent_line}")?;
    let gossip = match s["encrypted"].as_bool() {
        Some(true) => "encrypted",
        Some(false) => "NOT encrypted",
        None => "encryption unknown",
    };
    writeln!(out, "gossip      {gossip}")?;
    if let Some(err) = agent["last_error"].as_str() {
        writeln!(out, "last outage {err}")?;
    }
    let counts = &s["members"];
    writeln!(
        out,
        "members     {} alive, {} failed, {} leaving, {} left",
        counts["alive"], counts["failed"], counts["leaving"], counts["left"]
    )?;
    if let Some(children) = s["children"].as_object().filter(|c| !c.is_empty()) {
        let list: Vec<String> = children
            .iter()
            .map(|(name, state)| format!("{name} {}", state.as_str().unwrap_or("?")))
            .collect();
        writeln!(out, "children    {}", list.join(", "))?;
    }
    Ok(healthy)
}

/// Renders the template at `source` (`-`: read from `stdin`) against the
/// view the daemon at `mount` serves, and prints it as it is. The template
/// is checked before the mount is read.
pub fn render(
    mount: &Path,
    source: &Path,
    mut stdin: impl Read,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    use crate::surface::templates::{Context, Documents, Origin, Source, TemplateSet};
    let (text, origin) = if source == Path::new("-") {
        let mut text = String::new();
        stdin
            .read_to_string(&mut text)
            .context("read the template from stdin")?;
        (text, Origin::Stdin)
    } else {
        let text = std::fs::read_to_string(source)
            .with_context(|| format!("read {}", source.display()))?;
        (text, Origin::File(source.to_owned()))
    };
    let name = "render".to_owned();
    let set = TemplateSet::compile(vec![Source {
        name: name.clone(),
        text,
        origin,
    }])?;
    let context = Context::new(Documents::read(mount)?);
    // The error names the file already; the template's name is ours.
    let bytes = set.render(&name, &context).map_err(|e| e.located)?;
    out.write_all(&bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_args_are_json_or_strings() {
        assert_eq!(payload_arg(None), Value::Null);
        assert_eq!(payload_arg(Some(r#"{"a":1}"#)), serde_json::json!({"a": 1}));
        assert_eq!(payload_arg(Some("hello world")), Value::from("hello world"));
        assert_eq!(payload_arg(Some("7")), Value::from(7));
    }

    #[test]
    fn cells_cannot_forge_rows_or_steer_the_terminal() {
        assert_eq!(printable("web\nforged"), "web\\nforged");
        assert_eq!(printable("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(printable("ümlaut ok"), "ümlaut ok");
    }

    #[test]
    fn tables_align_columns() {
        let mut out = Vec::new();
        table(
            &mut out,
            ["A", "BB"],
            &[["long-name".into(), "x".into()], ["b".into(), "yy".into()]],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A          BB\nlong-name  x\nb          yy\n"
        );
    }
}
