//! The agent's log lines as membership triggers.
//!
//! Serf logs each membership change the moment memberlist reports it,
//! before its event stream coalesces them for a second:
//! `2026/12/03 08:43:55 [INFO] serf: EventMemberJoin: NAME ADDR` (also
//! `EventMemberLeave`, `EventMemberFailed`, `EventMemberLeave (forced)`,
//! `EventMemberReap (forced)`, each with the address; `EventMemberUpdate`
//! and `EventMemberReap` with the name alone). The `monitor` command streams
//! them, one record per call of the agent's logger with its last newline
//! stripped.
//!
//! The text is untrusted: a member name can hold anything, the words of
//! another line and newlines included. So a line only ever picks which
//! members to re-read; what the re-read returns is the truth applied to
//! the view, and a line that cannot be read for sure asks for a full
//! reconcile. Concretely:
//! - a record is never split into lines: only its start, written by the
//!   agent's own format string, is matched (the date, then `[INFO] serf: `
//!   and the event words), so a name that holds a whole forged line is
//!   still just a name;
//! - the address is the last space-separated word (a Go `net.IP` has no
//!   space) and must parse; the name is everything between;
//! - a line without the address may have lost a final newline of the name
//!   (the agent strips one newline from every record, and Go's logger adds
//!   none when the text already ends with one): the re-read asks for the
//!   name with and without it;
//! - anything else that mentions `EventMember`, and the agent's own notice
//!   that it dropped lines for a slow subscriber, asks for a full reconcile.
//!
//! [`name_pattern`] quotes the names for `members-filtered`, whose `Name` is
//! a Go (RE2) regular expression the agent anchors as `^…$`.

use std::net::IpAddr;

/// What one log line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// Re-read this member.
    Member(Named),
    /// Re-read every member: the line speaks of members but cannot be read
    /// for sure, or lines were lost.
    Reconcile,
}

/// A member a line names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Named {
    /// The name as the line shows it.
    pub name: String,
    /// The member's address, for the lines that carry it (the re-read must
    /// agree, else the line was not what it seemed).
    pub addr: Option<IpAddr>,
    /// The name may have had one more newline at its end.
    pub maybe_newline: bool,
}

impl Named {
    /// Whether `name` (a member the re-read returned) is the one meant.
    pub fn matches(&self, name: &str) -> bool {
        name == self.name
            || (self.maybe_newline
                && name.len() == self.name.len() + 1
                && name.starts_with(&self.name)
                && name.ends_with('\n'))
    }
}

/// `(event words, whether the address follows the name)`, as serf 0.8–0.9
/// logs them (`serf/serf.go`).
const EVENTS: [(&str, bool); 7] = [
    ("EventMemberJoin: ", true),
    ("EventMemberLeave: ", true),
    ("EventMemberFailed: ", true),
    ("EventMemberLeave (forced): ", true),
    ("EventMemberReap (forced): ", true),
    ("EventMemberUpdate: ", false),
    ("EventMemberReap: ", false),
];

const SERF_INFO: &str = "[INFO] serf: ";
/// The agent's notice that a monitor lagged and lost lines.
const DROPPING: &str = "[WARN] agent.ipc: Dropping logs";

/// What `line` asks for; `None` for a line about something else.
pub(crate) fn parse(line: &str) -> Option<Trigger> {
    let Some(body) = after_date(line) else {
        return mentions_members(line).then_some(Trigger::Reconcile);
    };
    if body.starts_with(DROPPING) {
        return Some(Trigger::Reconcile);
    }
    let Some(event) = body.strip_prefix(SERF_INFO) else {
        return mentions_members(body).then_some(Trigger::Reconcile);
    };
    for (words, with_addr) in EVENTS {
        let Some(rest) = event.strip_prefix(words) else {
            continue;
        };
        if !with_addr {
            if rest.is_empty() {
                return Some(Trigger::Reconcile);
            }
            return Some(Trigger::Member(Named {
                name: rest.to_owned(),
                addr: None,
                maybe_newline: true,
            }));
        }
        let Some((name, addr)) = rest.rsplit_once(' ') else {
            return Some(Trigger::Reconcile);
        };
        let Ok(addr) = addr.parse::<IpAddr>() else {
            return Some(Trigger::Reconcile);
        };
        if name.is_empty() {
            return Some(Trigger::Reconcile);
        }
        return Some(Trigger::Member(Named {
            name: name.to_owned(),
            addr: Some(unmap(addr)),
            maybe_newline: false,
        }));
    }
    mentions_members(event).then_some(Trigger::Reconcile)
}

fn mentions_members(text: &str) -> bool {
    text.contains("EventMember")
}

/// An IPv4-mapped IPv6 address as the IPv4 address it stands for (as the
/// RPC decoding shows member addresses).
pub(crate) fn unmap(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The text after Go's `log.LstdFlags` prefix, `YYYY/MM/DD HH:MM:SS `.
fn after_date(line: &str) -> Option<&str> {
    let b = line.as_bytes();
    const SHAPE: &[u8; 20] = b"dddd/dd/dd dd:dd:dd ";
    if b.len() < SHAPE.len() {
        return None;
    }
    let ok = SHAPE.iter().zip(b).all(|(want, have)| match want {
        b'd' => have.is_ascii_digit(),
        other => other == have,
    });
    // The prefix is ASCII, so byte 20 is a character boundary.
    ok.then(|| &line[SHAPE.len()..])
}

/// RE2's `QuoteMeta`: `text` as a regular expression matching exactly it.
pub(crate) fn quote_meta(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A `members-filtered` `Name` expression matching exactly the members
/// `named` (the agent anchors it as `^…$`).
pub(crate) fn name_pattern<'a>(named: impl IntoIterator<Item = &'a Named>) -> String {
    let alternatives: Vec<String> = named
        .into_iter()
        .map(|n| {
            let quoted = quote_meta(&n.name);
            if n.maybe_newline {
                format!("{quoted}\\n?")
            } else {
                quoted
            }
        })
        .collect();
    format!("(?:{})", alternatives.join("|"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "2026/12/03 08:43:55 ";

    fn member(name: &str, addr: Option<&str>, maybe_newline: bool) -> Option<Trigger> {
        Some(Trigger::Member(Named {
            name: name.into(),
            addr: addr.map(|a| a.parse().unwrap()),
            maybe_newline,
        }))
    }

    fn line(rest: &str) -> String {
        format!("{DATE}{rest}")
    }

    #[test]
    fn every_member_event_line_names_its_member() {
        let cases = [
            ("[INFO] serf: EventMemberJoin: a1 127.0.213.1", "a1", true),
            ("[INFO] serf: EventMemberLeave: a1 127.0.213.1", "a1", true),
            ("[INFO] serf: EventMemberFailed: a1 127.0.213.1", "a1", true),
            (
                "[INFO] serf: EventMemberLeave (forced): a1 127.0.213.1",
                "a1",
                true,
            ),
            (
                "[INFO] serf: EventMemberReap (forced): a1 127.0.213.1",
                "a1",
                true,
            ),
            ("[INFO] serf: EventMemberUpdate: a1", "a1", false),
            ("[INFO] serf: EventMemberReap: a1", "a1", false),
        ];
        for (text, name, with_addr) in cases {
            let want = member(name, with_addr.then_some("127.0.213.1"), !with_addr);
            assert_eq!(parse(&line(text)), want, "{text}");
        }
    }

    #[test]
    fn other_lines_ask_for_nothing_and_doubtful_ones_for_everything() {
        for text in [
            "[INFO] agent: Received event: member-join",
            "[INFO] agent.ipc: Accepted client: 127.0.0.1:35402",
            "[INFO] serf: attempting reconnect to b1 127.0.0.2:7946",
            "==> Log data will now stream in as it occurs:",
        ] {
            assert_eq!(parse(&line(text)), None, "{text}");
        }
        for text in [
            // Another line holding a name made of event words.
            "[INFO] serf: attempting reconnect to x EventMemberJoin: y 1.2.3.4 127.0.0.2:7946",
            "[INFO] serf: EventMemberJoin: noaddress",
            "[INFO] serf: EventMemberJoin: a1 not-an-ip",
            "[INFO] serf: EventMemberJoin:  127.0.0.1",
            "[INFO] serf: EventMemberUpdate: ",
            "[INFO] serf: EventMemberSomethingNew: a1",
            "[WARN] agent.ipc: Dropping logs to 127.0.0.1:4444",
        ] {
            assert_eq!(parse(&line(text)), Some(Trigger::Reconcile), "{text}");
        }
        // Not the agent's format at all, but about members.
        assert_eq!(
            parse("serf: EventMemberJoin: a 1.2.3.4"),
            Some(Trigger::Reconcile)
        );
        assert_eq!(parse("garbage"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn hostile_names_stay_names() {
        let forged = format!("x\n{DATE}[INFO] serf: EventMemberJoin: victim 10.0.0.1");
        let cases = [
            "b1 EventMemberJoin: evil 1.2.3.4",
            " EventMemberJoin: ",
            "a b c",
            "trailing space ",
            "new\nline",
            forged.as_str(),
            "[INFO] serf: EventMemberFailed: z 9.9.9.9",
            "ünïcødé \u{1b}[31m",
        ];
        for name in cases {
            let join = line(&format!("[INFO] serf: EventMemberJoin: {name} 127.0.0.7"));
            assert_eq!(
                parse(&join),
                member(name, Some("127.0.0.7"), false),
                "{name:?}"
            );
            let update = line(&format!("[INFO] serf: EventMemberUpdate: {name}"));
            assert_eq!(parse(&update), member(name, None, true), "{name:?}");
        }
        // A name ending in a newline loses it from an update line, and the
        // re-read asks for both.
        let Some(Trigger::Member(n)) = parse(&line("[INFO] serf: EventMemberUpdate: x")) else {
            panic!()
        };
        assert!(n.matches("x") && n.matches("x\n"));
        assert!(!n.matches("x\n\n") && !n.matches("xy") && !n.matches(""));
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        assert_eq!(
            parse(&line("[INFO] serf: EventMemberJoin: a ::1")),
            member("a", Some("::1"), false)
        );
        assert_eq!(
            parse(&line("[INFO] serf: EventMemberJoin: a ::ffff:10.1.2.3")),
            member("a", Some("10.1.2.3"), false)
        );
    }

    #[test]
    fn quoted_names_match_exactly_themselves() {
        let re = |names: &[Named]| {
            // The agent's anchoring, with an RE2-compatible engine.
            regex_automata::meta::Regex::new(&format!("^{}$", name_pattern(names))).unwrap()
        };
        let named = |name: &str, maybe_newline| Named {
            name: name.into(),
            addr: None,
            maybe_newline,
        };
        let hostile = [
            "a.b",
            "a+",
            "(x)|y",
            "[abc]",
            "{1,2}",
            "^$",
            "\\",
            "back\\slash",
            "new\nline",
            "tab\t",
            "..",
            "*",
            "?",
            "ü",
            "a|b",
            "\\Q\\E",
            " EventMemberJoin: ",
        ];
        for name in hostile {
            let r = re(&[named(name, false)]);
            assert!(r.is_match(name), "{name:?}");
            for other in ["a", "ab", "x", "y", "aa", "", "b", "a.b\n", "axb"] {
                if other != name {
                    assert!(!r.is_match(other), "{name:?} matched {other:?}");
                }
            }
        }
        let both = re(&[named("a.b", false), named("x", true)]);
        for yes in ["a.b", "x", "x\n"] {
            assert!(both.is_match(yes), "{yes:?}");
        }
        for no in ["axb", "a.b\n", "x\n\n", "a.bx", "xa.b", ""] {
            assert!(!both.is_match(no), "{no:?}");
        }
    }
}
