//! What the parent container is told to run: `/serfnode.yml` in the original
//! project's schema, and the one extra child of `DOCKER_RUN` (+ `DOCKER_NAME`).
//!
//! This module owns reading and validating them into plain values; starting
//! anything is the docker module's. The file is checked whole before anything
//! starts: a wrong type, an unknown key (a typo such as `volume:`), a bad or
//! duplicate child name, an empty image or a `volumes_from` naming a sibling
//! that starts later is an error naming the file, the key path and the line:
//!
//! ```text
//! /serfnode.yml: children[1].web.privileged: invalid value: string "maybe", expected a boolean (true/false, yes/no, on/off) at line 7 column 19
//! ```
//!
//! ```yaml
//! serfnode:                      # every key optional
//!   role: web
//!   peer: 10.0.0.5, 10.0.0.6     # or a list
//!   serf_ip: 10.0.0.7
//!   serf_port: 7946
//!   service_ip: 10.0.0.7
//!   service_port: 80
//!   environment: {A: "1"}        # merged into every child, with
//!   volumes: [/logs:/logs]       # volumes and volumes_from
//!   volumes_from: [data]
//!   ports: ["8000:8000"]
//! children:                      # started in this order
//!   - db:
//!       image: postgres:16
//!   - web:
//!       image: debian:bookworm   # the only required key
//!       command: sleep infinity  # or a list; so is entrypoint
//!       environment: [B=2]       # or a mapping
//!       volumes_from: [db]       # a sibling: only an earlier one
//!       privileged: no           # YAML 1.1 booleans, as PyYAML read them
//!       handlers: /app/handlers  # run in the child [/etc/serfnode/handlers]
//!       allow: {events: [deploy, "app-*"], queries: [where]}  # [all]
//!       show_secrets: no         # secret-looking env values in its files [no]
//!       templates: [...]         # the child's, rendered in the child
//! handlers: /handlers            # the parent's [/etc/serfnode/handlers]
//! templates:                     # the node's (see crate::surface::templates::spec)
//!   - name: upstreams
//!     template: |
//!       {% for m in alive | role("web") %}server {{ m | service_addr }};
//!       {% endfor %}
//! ```
//!
//! An inline template that does not parse is an error at its line in the
//! manifest (`templates[0].template: syntax error: ... at line 23 column
//! 9`); a `source:` file is read and checked where it is rendered.
//!
//! Scalars are read as the original (PyYAML) read them where a string is
//! meant: `MY_VAR: 1`, `expose: [80]` and `user: 1000` are text.

mod docker_run;
mod templates;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Unexpected, Visitor};
use serde::{Deserialize, Deserializer};

pub(crate) use docker_run::parse_docker_run;

use crate::containers::grants::Allow;
use crate::surface::templates::TemplateSpec;

/// `/serfnode.yml`: the parent's own settings and the children it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub serfnode: NodeSection,
    /// In start order.
    pub children: Vec<ChildSpec>,
    /// The `handlers:` key: the parent's handlers directory.
    pub handlers: Option<PathBuf>,
    /// The `templates:` key: the node's templates.
    pub templates: Vec<TemplateSpec>,
}

/// The `serfnode:` section. Its `environment`, `volumes` and `volumes_from`
/// go into every child (see [`Manifest::effective_children`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "the serfnode settings")]
pub(crate) struct NodeSection {
    pub role: Option<String>,
    /// Join addresses: a list, or one string of addresses separated by
    /// commas or spaces.
    #[serde(deserialize_with = "peers")]
    pub peer: Vec<String>,
    pub serf_ip: Option<IpAddr>,
    pub serf_port: Option<u16>,
    pub service_ip: Option<IpAddr>,
    pub service_port: Option<u16>,
    #[serde(deserialize_with = "environment")]
    pub environment: BTreeMap<String, String>,
    pub volumes: Vec<String>,
    pub volumes_from: Vec<String>,
    #[serde(deserialize_with = "texts")]
    pub ports: Vec<String>,
}

/// One child container, as its `- name: {...}` entry (or `DOCKER_RUN`) says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "the settings of a child (image, command, ...)"
)]
pub struct ChildSpec {
    /// The key of its entry; a valid Docker container name.
    #[serde(skip)]
    pub name: String,
    #[serde(deserialize_with = "image")]
    pub image: String,
    /// A list, or a string split as a shell would.
    #[serde(default, deserialize_with = "words")]
    pub command: Option<Vec<String>>,
    /// As `command`; `Some(vec![])` clears the image's entrypoint.
    #[serde(default, deserialize_with = "words")]
    pub entrypoint: Option<Vec<String>>,
    /// A mapping, or a list of `NAME=value`.
    #[serde(default, deserialize_with = "environment")]
    pub environment: BTreeMap<String, String>,
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Containers (`name` or `name:ro`); a sibling's name means that
    /// sibling, which is then listed before this child.
    #[serde(default)]
    pub volumes_from: Vec<String>,
    pub working_dir: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub user: Option<String>,
    #[serde(default, deserialize_with = "yaml11_bool")]
    pub privileged: bool,
    #[serde(default)]
    pub links: Vec<String>,
    #[serde(default, deserialize_with = "texts")]
    pub expose: Vec<String>,
    #[serde(default, deserialize_with = "texts")]
    pub ports: Vec<String>,
    /// The child's handlers directory, inside the child
    /// [default: /etc/serfnode/handlers].
    #[serde(default, deserialize_with = "text")]
    pub handlers: Option<String>,
    /// The user events it may raise and queries it may ask.
    #[serde(default)]
    pub allow: Allow,
    /// Show this child the values of secret-looking environment variables
    /// (`*KEY*`, `*SECRET*`, `*TOKEN*`, `*PASSWORD*`) in its `parent.json`
    /// and `me.json` [default: redacted]. serfnode's own secrets are never
    /// shown.
    #[serde(default, deserialize_with = "yaml11_bool")]
    pub show_secrets: bool,
    /// Its templates, rendered in the child.
    #[serde(
        default,
        deserialize_with = "crate::surface::templates::child_templates"
    )]
    pub templates: Vec<TemplateSpec>,
}

/// What is wrong, whole in its message (the causes are not chained).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    /// Invalid YAML, or a key, type or value the schema refuses; the message
    /// has the key path and line: `children[0].web.image: ... at line 3 column 14`.
    #[error("{}: {}", path.display(), located(error))]
    Yaml {
        path: PathBuf,
        error: serde_yaml_ng::Error,
    },
    #[error("{}: serfnode.volumes_from: `{child}` is a child, and this list goes into every child: `{child}` cannot take volumes from itself or from a child started after it", path.display())]
    SectionVolumesFromChild { path: PathBuf, child: String },
    #[error("invalid DOCKER_RUN: {0}")]
    DockerRun(String),
    /// An inline template that does not parse, at its line in the file.
    #[error(transparent)]
    Template(crate::surface::templates::LoadError),
}

/// The error's message, with the location that serde_yaml_ng leaves out
/// when it is the very start of the text.
fn located(error: &serde_yaml_ng::Error) -> String {
    let message = error.to_string();
    match error.location() {
        Some(at) if (at.line(), at.column()) == (1, 1) && !message.contains("line 1 column 1") => {
            format!("{message} at line 1 column 1")
        }
        _ => message,
    }
}

impl Manifest {
    /// Reads and checks a manifest; `source` names it in errors.
    pub fn parse(text: &str, source: &Path) -> Result<Manifest, ManifestError> {
        let names = child_names(text);
        let mut manifest = Document { names: &names }
            .deserialize(serde_yaml_ng::Deserializer::from_str(text))
            .map_err(|error| ManifestError::Yaml {
                path: source.to_owned(),
                error,
            })?;
        let section = &manifest.serfnode.volumes_from;
        if let Some(child) = manifest
            .children
            .iter()
            .find(|child| section.iter().any(|from| container(from) == child.name))
        {
            return Err(ManifestError::SectionVolumesFromChild {
                path: source.to_owned(),
                child: child.name.clone(),
            });
        }
        templates::check(&mut manifest, text, source)?;
        Ok(manifest)
    }

    /// [`Manifest::parse`] of the file at `path`; `Ok(None)` when there is none.
    pub fn load(path: &Path) -> Result<Option<Manifest>, ManifestError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Manifest::parse(&text, path).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(ManifestError::Read {
                path: path.to_owned(),
                error,
            }),
        }
    }

    /// Children with the serfnode section's `environment`, `volumes` and
    /// `volumes_from` merged in, in list order. The child wins a conflict: a
    /// variable it sets, a container path it mounts, a container it takes
    /// volumes from; lists are the child's entries, then the section's.
    pub fn effective_children(&self) -> Vec<ChildSpec> {
        let section = &self.serfnode;
        self.children
            .iter()
            .map(|child| {
                let mut environment = section.environment.clone();
                environment.extend(child.environment.clone());
                ChildSpec {
                    environment,
                    volumes: merge(&child.volumes, &section.volumes, mount_point),
                    volumes_from: merge(&child.volumes_from, &section.volumes_from, container),
                    ..child.clone()
                }
            })
            .collect()
    }
}

/// `first` then those of `then` whose key is not taken yet.
fn merge(first: &[String], then: &[String], key: fn(&str) -> &str) -> Vec<String> {
    let mut merged: Vec<String> = Vec::with_capacity(first.len() + then.len());
    for entry in first.iter().chain(then) {
        if !merged.iter().any(|m| key(m) == key(entry)) {
            merged.push(entry.clone());
        }
    }
    merged
}

/// The container path of a volume: `[source:]target[:options]`.
fn mount_point(volume: &str) -> &str {
    let mut parts = volume.split(':');
    let first = parts.next().unwrap_or_default();
    parts.next().unwrap_or(first)
}

/// The container of a `volumes_from` entry: `name[:ro|:rw]`.
fn container(from: &str) -> &str {
    from.split(':').next().unwrap_or_default()
}

/// Docker's rule for container names.
fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid child name `{name}`: a container name is a letter or digit, then letters, digits, `_`, `.` or `-`"
        ))
    }
}

/// An image reference is one non-empty word.
fn valid_image(image: &str) -> bool {
    !image.is_empty() && !image.contains(char::is_whitespace)
}

/// One `NAME=value` variable.
fn split_variable(entry: &str) -> Result<(String, String), String> {
    match entry.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("`{entry}` is not NAME=value")),
    }
}

/// The children's names in list order, read leniently ahead of the typed
/// pass, so that a child's `volumes_from` is checked against the siblings
/// listed after it. Whatever the typed pass accepts is read here too.
fn child_names(text: &str) -> Vec<String> {
    #[derive(Deserialize)]
    struct Names {
        children: Option<Vec<Option<BTreeMap<String, IgnoredAny>>>>,
    }
    serde_yaml_ng::from_str::<Names>(text)
        .ok()
        .and_then(|names| names.children)
        .unwrap_or_default()
        .into_iter()
        .map(|entry| entry.and_then(|e| e.into_keys().next()).unwrap_or_default())
        .collect()
}

/// The top-level keys, in the order of [`Key`].
const KEYS: &[&str] = &["serfnode", "children", "handlers", "templates"];

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Key {
    Serfnode,
    Children,
    Handlers,
    Templates,
}

/// The whole file, knowing every child's name.
struct Document<'a> {
    names: &'a [String],
}

impl<'de> DeserializeSeed<'de> for Document<'_> {
    type Value = Manifest;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Manifest, D::Error> {
        deserializer.deserialize_struct("Manifest", KEYS, self)
    }
}

impl<'de> Visitor<'de> for Document<'_> {
    type Value = Manifest;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping with serfnode, children, handlers and templates")
    }

    fn visit_unit<E>(self) -> Result<Manifest, E> {
        Ok(Manifest::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Manifest, A::Error> {
        let (mut serfnode, mut children, mut handlers, mut templates) = (None, None, None, None);
        while let Some(key) = map.next_key()? {
            match key {
                Key::Serfnode if serfnode.is_none() => {
                    serfnode = Some(map.next_value::<Option<NodeSection>>()?)
                }
                Key::Children if children.is_none() => {
                    children = Some(map.next_value_seed(Children { names: self.names })?)
                }
                Key::Handlers if handlers.is_none() => handlers = Some(map.next_value()?),
                Key::Templates if templates.is_none() => {
                    templates = Some(map.next_value::<NodeTemplates>()?.0)
                }
                _ => return Err(de::Error::duplicate_field(KEYS[key as usize])),
            }
        }
        Ok(Manifest {
            serfnode: serfnode.flatten().unwrap_or_default(),
            children: children.unwrap_or_default(),
            handlers: handlers.flatten(),
            templates: templates.unwrap_or_default(),
        })
    }
}

/// The node's `templates:` list.
struct NodeTemplates(Vec<TemplateSpec>);

impl<'de> Deserialize<'de> for NodeTemplates {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NodeTemplates, D::Error> {
        crate::surface::templates::node_templates(d).map(NodeTemplates)
    }
}

/// The `children:` list.
struct Children<'a> {
    names: &'a [String],
}

impl<'de> DeserializeSeed<'de> for Children<'_> {
    type Value = Vec<ChildSpec>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Children<'_> {
    type Value = Vec<ChildSpec>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of `- name: {image: ...}` entries")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut children = Vec::new();
        while let Some(child) = seq.next_element_seed(Entry {
            earlier: &children,
            later: self.names.get(children.len() + 1..).unwrap_or_default(),
        })? {
            children.push(child);
        }
        Ok(children)
    }
}

/// One `- name: {...}` entry. Its errors are reported at the entry's line.
struct Entry<'a> {
    earlier: &'a [ChildSpec],
    /// The names of the siblings listed after it.
    later: &'a [String],
}

impl<'de> DeserializeSeed<'de> for Entry<'_> {
    type Value = ChildSpec;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<ChildSpec, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Entry<'_> {
    type Value = ChildSpec;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a child: `- name: {image: ...}`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ChildSpec, A::Error> {
        let Some(name) = map.next_key::<String>()? else {
            return Err(de::Error::custom(
                "empty child entry: write `- name: {image: ...}`",
            ));
        };
        check_name(&name).map_err(de::Error::custom)?;
        let is_earlier = |sibling: &str| self.earlier.iter().any(|c| c.name == sibling);
        if is_earlier(&name) {
            return Err(de::Error::custom(format_args!(
                "duplicate child name `{name}`"
            )));
        }
        let settings: Option<ChildSpec> = map.next_value()?;
        if let Some(key) = map.next_key::<String>()? {
            return Err(de::Error::custom(format_args!(
                "the entry of child `{name}` has a second key `{key}` (indent a child's settings under its name)"
            )));
        }
        let settings = settings.ok_or_else(|| {
            de::Error::custom(format_args!(
                "child `{name}` has no settings: it needs an image"
            ))
        })?;
        for from in &settings.volumes_from {
            let sibling = container(from);
            if sibling == name {
                return Err(de::Error::custom(format_args!(
                    "child `{name}` takes volumes_from itself"
                )));
            }
            if !is_earlier(sibling) && self.later.iter().any(|n| n == sibling) {
                return Err(de::Error::custom(format_args!(
                    "child `{name}` takes volumes_from `{sibling}`, which is listed after it (children start in list order)"
                )));
            }
        }
        Ok(ChildSpec { name, ..settings })
    }
}

/// A scalar read as text, as the original did with PyYAML's numbers and
/// booleans: `MY_VAR: 1`, `expose: [80]`.
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Text, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Text, E> {
                Err(E::invalid_type(Unexpected::Other("null"), &self))
            }
        }
        deserializer.deserialize_any(TextVisitor)
    }
}

fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Text>::deserialize(deserializer)?.map(|Text(s)| s))
}

fn texts<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let texts = Vec::<Text>::deserialize(deserializer)?;
    Ok(texts.into_iter().map(|Text(s)| s).collect())
}

fn image<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct ImageVisitor;
    impl Visitor<'_> for ImageVisitor {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an image reference")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            if valid_image(v) {
                Ok(v.to_owned())
            } else {
                Err(E::invalid_value(Unexpected::Str(v), &self))
            }
        }
    }
    deserializer.deserialize_str(ImageVisitor)
}

/// A command line: a list of words, or a string split as a shell would.
fn words<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<String>>, D::Error> {
    struct Words(Vec<String>);
    impl<'de> Deserialize<'de> for Words {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Words, D::Error> {
            deserializer.deserialize_any(WordsVisitor)
        }
    }
    struct WordsVisitor;
    impl<'de> Visitor<'de> for WordsVisitor {
        type Value = Words;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a command line or a list of words")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Words, E> {
            shell_words::split(v)
                .map(Words)
                .map_err(|e| E::custom(format_args!("cannot split {v:?} into words: {e}")))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Words, A::Error> {
            texts(de::value::SeqAccessDeserializer::new(seq)).map(Words)
        }
    }
    Ok(Option::<Words>::deserialize(deserializer)?.map(|Words(w)| w))
}

/// Variables: a mapping, or a list of `NAME=value`.
fn environment<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    struct EnvironmentVisitor;
    impl EnvironmentVisitor {
        fn insert<E: de::Error>(
            env: &mut BTreeMap<String, String>,
            (name, value): (String, String),
        ) -> Result<(), E> {
            if name.is_empty() || name.contains('=') {
                return Err(E::custom(format_args!("invalid variable name {name:?}")));
            }
            if env.contains_key(&name) {
                return Err(E::custom(format_args!("variable `{name}` is set twice")));
            }
            env.insert(name, value);
            Ok(())
        }
    }
    impl<'de> Visitor<'de> for EnvironmentVisitor {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a mapping of variables or a list of NAME=value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut env = BTreeMap::new();
            while let Some((name, Text(value))) = map.next_entry::<String, Text>()? {
                Self::insert(&mut env, (name, value))?;
            }
            Ok(env)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut env = BTreeMap::new();
            while let Some(entry) = seq.next_element::<String>()? {
                Self::insert(&mut env, split_variable(&entry).map_err(de::Error::custom)?)?;
            }
            Ok(env)
        }
    }
    deserializer.deserialize_any(EnvironmentVisitor)
}

/// Join addresses: a list, or a string of addresses separated by commas or
/// spaces (as `PEER`); list entries are split the same way.
fn peers<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct PeersVisitor;
    impl<'de> Visitor<'de> for PeersVisitor {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an address or a list of addresses")
        }
        fn visit_str<E>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(vec![v.to_owned()])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<String>, A::Error> {
            Deserialize::deserialize(de::value::SeqAccessDeserializer::new(seq))
        }
    }
    let peers = deserializer.deserialize_any(PeersVisitor)?;
    Ok(peers
        .iter()
        .flat_map(|p| p.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect())
}

/// A boolean, YAML 1.1 spellings included (`privileged: no`), as PyYAML
/// read the original's files.
fn yaml11_bool<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    struct BoolVisitor;
    impl Visitor<'_> for BoolVisitor {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a boolean (true/false, yes/no, on/off)")
        }
        fn visit_bool<E>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
            match v {
                "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Ok(true),
                "no" | "No" | "NO" | "off" | "Off" | "OFF" => Ok(false),
                _ => Err(E::invalid_value(Unexpected::Str(v), &self)),
            }
        }
    }
    deserializer.deserialize_any(BoolVisitor)
}

#[cfg(test)]
mod tests;
