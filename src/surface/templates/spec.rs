//! A template as the manifest declares it: the `templates:` list at the top
//! level (the node's) and under a child (that child's), read into
//! [`TemplateSpec`]s and checked whole before anything starts, each error
//! naming the key path and line as the manifest's other errors do:
//!
//! ```text
//! /serfnode.yml: templates[0].wait: invalid value: string "5s:1s", expected MIN:MAX durations, MIN at most MAX (`1s:5s`) at line 6 column 11
//! ```
//!
//! ```yaml
//! templates:
//!   - name: upstreams                  # the file /serfnode/templates/upstreams
//!     source: /etc/serfnode/templates/upstreams.conf.j2   # or `template: |` inline
//!     destination: /etc/nginx/conf.d/upstreams.conf        # optional
//!     mode: "0644"                     # optional, the destination's
//!     command: nginx -s reload         # optional: a list, or split as a shell would
//!     signal: HUP                      # children only, instead of command
//!     wait: 1s:5s                      # optional: quiet MIN, at most MAX
//! ```
//!
//! A spec is serde-serializable as it is, so a child's templates can travel
//! to the child, where they are rendered.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, SeqAccess, Unexpected, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::names::is_event_name;

/// One entry of a `templates:` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateSpec {
    /// Unique in its list; the file name under `/serfnode/templates/`.
    pub name: String,
    pub body: Body,
    /// Also written here, when the rendered bytes differ from the file's.
    pub destination: Option<PathBuf>,
    /// The destination's permission bits.
    pub mode: Option<u32>,
    /// Run after the output changed (and the destination was written).
    pub command: Option<Vec<String>>,
    /// A child's only: sent to its application instead of a command.
    pub signal: Option<Signal>,
    /// Quiescence before the destination and the command.
    pub wait: Option<Wait>,
}

/// Where a template's text comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    /// `source:`: a file, read where the template is rendered (inside the
    /// child for a child's template).
    Source(PathBuf),
    /// `template:`: the text itself, and where it sits in the manifest.
    Inline {
        text: String,
        placement: Option<Placement>,
    },
}

/// Where an inline template's text sits in its manifest, so that errors
/// name the manifest's line. With `exact`, the template's line `l` column
/// `c` is the manifest's line `line + l - 1` column `column + c - 1` (a
/// literal block or a one-line scalar); otherwise `line`/`column` is where
/// the value starts and errors give the template's own line after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub file: PathBuf,
    /// The key path of the value: `children[0].web.templates[1].template`.
    pub key: String,
    pub line: usize,
    pub column: usize,
    pub exact: bool,
}

/// `wait: MIN:MAX`: after a change, wait until the view has been quiet for
/// `min`, but never longer than `max` after the first change. One duration
/// alone is MIN, with MAX four times it (as consul-template).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wait {
    pub min: Duration,
    pub max: Duration,
}

/// The signals a child's application may be sent when its output changed.
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("TERM", libc::SIGTERM),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("WINCH", libc::SIGWINCH),
    ("ALRM", libc::SIGALRM),
    ("CONT", libc::SIGCONT),
];

/// A signal by its name without `SIG` (`HUP`), as it is written and sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Signal(&'static str);

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Signal, D::Error> {
        struct SignalVisitor;
        impl Visitor<'_> for SignalVisitor {
            type Value = Signal;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a signal name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Signal, E> {
                Signal::try_from(v.to_owned()).map_err(E::custom)
            }
        }
        d.deserialize_str(SignalVisitor)
    }
}

impl Signal {
    pub fn name(self) -> &'static str {
        self.0
    }

    pub fn number(self) -> i32 {
        SIGNALS
            .iter()
            .find(|(n, _)| *n == self.0)
            .map_or(libc::SIGHUP, |&(_, s)| s)
    }
}

impl TryFrom<String> for Signal {
    type Error = String;

    /// `HUP`, `SIGHUP`, `hup`: one of [`SIGNALS`].
    fn try_from(s: String) -> Result<Signal, String> {
        let upper = s.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        SIGNALS
            .iter()
            .find(|(n, _)| *n == bare)
            .map(|&(n, _)| Signal(n))
            .ok_or_else(|| {
                let names: Vec<&str> = SIGNALS.iter().map(|(n, _)| *n).collect();
                format!("unknown signal `{s}`: one of {}", names.join(", "))
            })
    }
}

impl From<Signal> for String {
    fn from(s: Signal) -> String {
        s.0.to_owned()
    }
}

/// The node's `templates:` (no `signal`: there is no application to send
/// it to).
pub fn node_templates<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TemplateSpec>, D::Error> {
    d.deserialize_any(List { child: false })
}

/// A child's `templates:`.
pub fn child_templates<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TemplateSpec>, D::Error> {
    d.deserialize_any(List { child: true })
}

struct List {
    child: bool,
}

impl<'de> Visitor<'de> for List {
    type Value = Vec<TemplateSpec>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of templates (`- name: ...`)")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut specs: Vec<TemplateSpec> = Vec::new();
        while let Some(spec) = seq.next_element_seed(Entry {
            child: self.child,
            earlier: &specs,
        })? {
            specs.push(spec);
        }
        Ok(specs)
    }
}

/// One `- name: ...` entry; its errors are reported at the entry's line.
struct Entry<'a> {
    child: bool,
    earlier: &'a [TemplateSpec],
}

impl<'de> DeserializeSeed<'de> for Entry<'_> {
    type Value = TemplateSpec;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<TemplateSpec, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Entry<'_> {
    type Value = TemplateSpec;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a template: name, and source or template")
    }

    // Checked inside the map's visit, so that errors are at the entry.
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<TemplateSpec, A::Error> {
        let raw = Raw::deserialize(de::value::MapAccessDeserializer::new(map))?;
        let spec = raw.check(self.child).map_err(de::Error::custom)?;
        if self.earlier.iter().any(|s| s.name == spec.name) {
            return Err(de::Error::custom(format_args!(
                "duplicate template name `{}`",
                spec.name
            )));
        }
        Ok(spec)
    }
}

/// The keys as written, before the checks that span several of them.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a template: name, and source or template"
)]
struct Raw {
    #[serde(deserialize_with = "name")]
    name: String,
    #[serde(default, deserialize_with = "absolute")]
    source: Option<PathBuf>,
    template: Option<String>,
    #[serde(default, deserialize_with = "absolute")]
    destination: Option<PathBuf>,
    #[serde(default, deserialize_with = "mode")]
    mode: Option<u32>,
    #[serde(default, deserialize_with = "words")]
    command: Option<Vec<String>>,
    signal: Option<Signal>,
    #[serde(default, deserialize_with = "wait")]
    wait: Option<Wait>,
}

impl Raw {
    fn check(self, child: bool) -> Result<TemplateSpec, String> {
        let name = &self.name;
        let body = match (self.source, self.template) {
            (Some(path), None) => Body::Source(path),
            (None, Some(text)) => Body::Inline {
                text,
                placement: None,
            },
            (None, None) => {
                return Err(format!(
                    "template `{name}` needs `source` (a file) or `template` (the text)"
                ))
            }
            (Some(_), Some(_)) => {
                return Err(format!(
                    "template `{name}` has both `source` and `template`: give one"
                ))
            }
        };
        if self.signal.is_some() && !child {
            return Err(format!(
                "template `{name}`: `signal` is for a child's templates (it goes to the child's application); the node's run a `command`"
            ));
        }
        if self.signal.is_some() && self.command.is_some() {
            return Err(format!(
                "template `{name}` has both `command` and `signal`: give one"
            ));
        }
        if self.mode.is_some() && self.destination.is_none() {
            return Err(format!(
                "template `{name}`: `mode` is the destination's, and there is no `destination`"
            ));
        }
        let acts = self.destination.is_some() || self.command.is_some() || self.signal.is_some();
        if self.wait.is_some() && !acts {
            return Err(format!(
                "template `{name}`: `wait` delays the destination, command or signal, and there is none"
            ));
        }
        Ok(TemplateSpec {
            name: self.name,
            body,
            destination: self.destination,
            mode: self.mode,
            command: self.command,
            signal: self.signal,
            wait: self.wait,
        })
    }
}

/// A string checked inside the deserializer, so that an error has the
/// value's key path and line.
fn checked<'de, D: Deserializer<'de>>(
    d: D,
    expecting: &'static str,
    valid: fn(&str) -> bool,
) -> Result<String, D::Error> {
    struct CheckedVisitor(&'static str, fn(&str) -> bool);
    impl Visitor<'_> for CheckedVisitor {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            if (self.1)(v) {
                Ok(v.to_owned())
            } else {
                Err(E::invalid_value(Unexpected::Str(v), &self))
            }
        }
    }
    d.deserialize_str(CheckedVisitor(expecting, valid))
}

fn name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    // The rule of event names: one safe file name, nothing that walks a path.
    checked(
        d,
        "a file name: 1 to 128 letters, digits and `._:@+-`, not starting with `.`",
        is_event_name,
    )
}

fn absolute<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let valid = |p: &str| p.starts_with('/') && !p.ends_with('/') && !p.contains('\0');
    checked(d, "an absolute path to a file", valid).map(|p| Some(PathBuf::from(p)))
}

/// An octal mode: `"0644"`, `0644`, `644` or `0o644`, each read from the
/// text as written (so `644` is never taken for decimal).
fn mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    struct ModeVisitor;
    impl Visitor<'_> for ModeVisitor {
        type Value = u32;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an octal mode such as \"0644\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u32, E> {
            let digits = v.strip_prefix("0o").unwrap_or(v);
            u32::from_str_radix(digits, 8)
                .ok()
                .filter(|m| !digits.is_empty() && !digits.starts_with('+') && *m <= 0o7777)
                .ok_or_else(|| E::invalid_value(Unexpected::Str(v), &self))
        }
    }
    Ok(Some(d.deserialize_str(ModeVisitor)?))
}

/// A command line: a list of words, or a string split as a shell would. It
/// is run without a shell (write `sh -c '...'` for one).
fn words<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    struct WordsVisitor;
    impl<'de> Visitor<'de> for WordsVisitor {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a command line or a list of words")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            let words = shell_words::split(v)
                .map_err(|e| E::custom(format_args!("cannot split {v:?} into words: {e}")))?;
            some_words(words)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<String>, A::Error> {
            some_words(Deserialize::deserialize(
                de::value::SeqAccessDeserializer::new(seq),
            )?)
        }
    }
    fn some_words<E: de::Error>(words: Vec<String>) -> Result<Vec<String>, E> {
        if words.is_empty() {
            return Err(E::invalid_length(0, &"a command of at least one word"));
        }
        Ok(words)
    }
    Ok(Some(d.deserialize_any(WordsVisitor)?))
}

fn wait<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Wait>, D::Error> {
    struct WaitVisitor;
    impl Visitor<'_> for WaitVisitor {
        type Value = Wait;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("MIN:MAX durations, MIN at most MAX (`1s:5s`)")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Wait, E> {
            parse_wait(v).ok_or_else(|| E::invalid_value(Unexpected::Str(v), &self))
        }
    }
    Ok(Some(d.deserialize_str(WaitVisitor)?))
}

/// `MIN:MAX` or `MIN` (MAX = 4 × MIN).
pub(crate) fn parse_wait(text: &str) -> Option<Wait> {
    let (min, max) = match text.split_once(':') {
        Some((min, max)) => (parse_duration(min)?, parse_duration(max)?),
        None => {
            let min = parse_duration(text)?;
            (min, min.checked_mul(4)?)
        }
    };
    (min <= max).then_some(Wait { min, max })
}

/// `250ms`, `1s`, `1.5s`, `2m`, `1h`: a unit is required.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let at = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(at);
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    Duration::try_from_secs_f64(value * scale).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[serde(default, deserialize_with = "node_templates")]
        templates: Vec<TemplateSpec>,
        #[serde(default, deserialize_with = "child_templates")]
        child: Vec<TemplateSpec>,
    }

    fn parse(yaml: &str) -> Result<Doc, String> {
        serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())
    }

    fn inline(text: &str) -> Body {
        Body::Inline {
            text: text.into(),
            placement: None,
        }
    }

    #[test]
    fn every_key_parses() {
        let doc = parse(concat!(
            "templates:\n",
            "  - name: upstreams\n",
            "    source: /etc/serfnode/templates/upstreams.conf.j2\n",
            "    destination: /etc/nginx/conf.d/upstreams.conf\n",
            "    mode: \"0644\"\n",
            "    command: nginx -s 'reload'\n",
            "    wait: 1s:5s\n",
            "  - name: peers.txt\n",
            "    template: \"{{ alive | length }}\"\n",
            "child:\n",
            "  - name: app.env\n",
            "    template: |\n",
            "      A=1\n",
            "    destination: /app/.env\n",
            "    mode: 0600\n",
            "    signal: sighup\n",
            "    wait: 500ms\n",
        ))
        .unwrap();
        assert_eq!(
            doc.templates,
            [
                TemplateSpec {
                    name: "upstreams".into(),
                    body: Body::Source("/etc/serfnode/templates/upstreams.conf.j2".into()),
                    destination: Some("/etc/nginx/conf.d/upstreams.conf".into()),
                    mode: Some(0o644),
                    command: Some(vec!["nginx".into(), "-s".into(), "reload".into()]),
                    signal: None,
                    wait: Some(Wait {
                        min: Duration::from_secs(1),
                        max: Duration::from_secs(5)
                    }),
                },
                TemplateSpec {
                    name: "peers.txt".into(),
                    body: inline("{{ alive | length }}"),
                    destination: None,
                    mode: None,
                    command: None,
                    signal: None,
                    wait: None,
                }
            ]
        );
        let app = &doc.child[0];
        assert_eq!(app.body, inline("A=1\n"));
        assert_eq!(app.mode, Some(0o600));
        for mode in ["644", "0644", "0o644", "\"0644\""] {
            let yaml = format!(
                "templates:\n  - {{name: a, template: x, destination: /a, mode: {mode}}}\n"
            );
            assert_eq!(
                parse(&yaml).unwrap().templates[0].mode,
                Some(0o644),
                "{mode}"
            );
        }
        assert_eq!(app.signal.map(Signal::number), Some(libc::SIGHUP));
        assert_eq!(app.signal.map(Signal::name), Some("HUP"));
        let half = Duration::from_millis(500);
        assert_eq!(
            app.wait,
            Some(Wait {
                min: half,
                max: half * 4
            })
        );
    }

    #[test]
    fn a_spec_travels_as_json() {
        let doc = parse("child:\n  - name: a\n    template: x\n    destination: /a\n    signal: USR1\n    wait: 1s:2s\n").unwrap();
        let wire = serde_json::to_string(&doc.child[0]).unwrap();
        let back: TemplateSpec = serde_json::from_str(&wire).unwrap();
        assert_eq!(back, doc.child[0]);
        assert!(wire.contains("\"signal\":\"USR1\""), "{wire}");
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let cases = [
            (
                "templates:\n  - name: a/b\n    template: x\n",
                "templates[0].name: invalid value: string \"a/b\", expected a file name: 1 to 128 letters, digits and `._:@+-`, not starting with `.` at line 2 column 11",
            ),
            (
                "templates:\n  - name: .hidden\n    template: x\n",
                "templates[0].name: invalid value: string \".hidden\", expected a file name: 1 to 128 letters, digits and `._:@+-`, not starting with `.` at line 2 column 11",
            ),
            (
                "templates:\n  - template: x\n",
                "templates[0]: missing field `name` at line 2 column 5",
            ),
            (
                "templates:\n  - name: a\n",
                "templates[0]: template `a` needs `source` (a file) or `template` (the text) at line 2 column 5",
            ),
            (
                "templates:\n  - name: a\n    source: /a\n    template: x\n",
                "templates[0]: template `a` has both `source` and `template`: give one at line 2 column 5",
            ),
            (
                "templates:\n  - name: a\n    source: a.j2\n",
                "templates[0].source: invalid value: string \"a.j2\", expected an absolute path to a file at line 3 column 13",
            ),
            (
                "templates:\n  - name: a\n    template: x\n    destination: /etc/\n",
                "templates[0].destination: invalid value: string \"/etc/\", expected an absolute path to a file at line 4 column 18",
            ),
            (
                "templates:\n  - name: a\n    template: x\n    destinaton: /a\n",
                "templates[0]: unknown field `destinaton`, expected one of `name`, `source`, `template`, `destination`, `mode`, `command`, `signal`, `wait` at line 4 column 5",
            ),
            (
                "templates:\n  - name: a\n    template: x\n    destination: /a\n    mode: \"0899\"\n",
                "templates[0].mode: invalid value: string \"0899\", expected an octal mode such as \"0644\" at line 5 column 11",
            ),
            (
                "templates:\n  - name: a\n    template: x\n    mode: \"0644\"\n",
                "templates[0]: template `a`: `mode` is the destination's, and there is no `destination` at line 2 column 5",
            ),
            (
                "templates:\n  - name: a\n    template: x\n    destination: /a\n    wait: 5s:1s\n",
                "templates[0].wait: invalid value: string \"5s:1s\", expected MIN:MAX durations, MIN at most MAX (`1s:5s`) at line 5 column 11",
            ),
            (
                "templates:\n  - name: a\n    template: x\n    destination: /a\n    wait: 5\n",
                "templates[0].wait: invalid value: string \"5\", expected MIN:MAX durations, MIN at most MAX (`1s:5s`) at line 5 column 11",
            ),
            (
                "templates:\n  - name: a\n    template: x\n    wait: 1s\n",
                "templates[0]: template `a`: `wait` delays the destination, command or signal, and there is none at line 2 column 5",
            ),
            (
                "templates:\n  - name: a\n    template: x\n    command: \"sh -c 'x\"\n",
                "templates[0].command: cannot split \"sh -c 'x\" into words: missing closing quote at line 4 column 14",
            ),
            (
                "templates:\n  - name: a\n    template: x\n    command: []\n",
                "templates[0].command: invalid length 0, expected a command of at least one word at line 4 column 14",
            ),
            (
                "templates:\n  - name: a\n    template: x\n    signal: HUP\n",
                "templates[0]: template `a`: `signal` is for a child's templates (it goes to the child's application); the node's run a `command` at line 2 column 5",
            ),
            (
                "child:\n  - name: a\n    template: x\n    signal: KILL\n",
                "child[0].signal: unknown signal `KILL`: one of HUP, INT, QUIT, TERM, USR1, USR2, WINCH, ALRM, CONT at line 4 column 13",
            ),
            (
                "child:\n  - name: a\n    template: x\n    signal: HUP\n    command: x\n",
                "child[0]: template `a` has both `command` and `signal`: give one at line 2 column 5",
            ),
            (
                "templates:\n  - name: a\n    template: x\n  - name: a\n    template: y\n",
                "templates[1]: duplicate template name `a` at line 4 column 5",
            ),
            (
                "templates: {name: a}\n",
                "templates: invalid type: map, expected a list of templates (`- name: ...`) at line 1 column 12",
            ),
        ];
        for (yaml, message) in cases {
            assert_eq!(parse(yaml).unwrap_err(), message, "{yaml}");
        }
    }

    #[test]
    fn an_empty_list_is_no_templates() {
        assert!(parse("templates:\n").unwrap().templates.is_empty());
        assert!(parse("templates: []\n").unwrap().templates.is_empty());
    }

    #[test]
    fn durations_and_waits() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("250ms"), Some(ms(250)));
        assert_eq!(parse_duration("1.5s"), Some(ms(1500)));
        assert_eq!(parse_duration("2m"), Some(ms(120_000)));
        for bad in ["", "5", "s", "1x", "-1s", "1.2.3s", "1 s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_wait("0s:2s"),
            Some(Wait {
                min: ms(0),
                max: ms(2000)
            })
        );
        assert_eq!(parse_wait("2s:1s"), None);
        assert_eq!(parse_wait("1s:"), None);
    }
}
