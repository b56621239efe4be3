//! The manifest's inline templates: where each one's text sits in the file
//! (so that its errors name the manifest's line and column), and the check
//! that it parses, done with the rest of the manifest before anything
//! starts.

use std::fmt;
use std::path::Path;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;

use super::{Manifest, ManifestError};
use crate::surface::templates::{self, Body, Placement, TemplateSpec};

/// Places every inline template of `manifest` in `text` and checks that it
/// parses.
pub(super) fn check(
    manifest: &mut Manifest,
    text: &str,
    source: &Path,
) -> Result<(), ManifestError> {
    let node = manifest.templates.iter_mut().enumerate().map(|(i, spec)| {
        let path = vec![Step::Key("templates".into()), Step::Index(i)];
        (path, format!("templates[{i}]"), spec)
    });
    let children = manifest
        .children
        .iter_mut()
        .enumerate()
        .flat_map(|(j, child)| {
            let name = child.name.clone();
            child
                .templates
                .iter_mut()
                .enumerate()
                .map(move |(i, spec)| {
                    let path = vec![
                        Step::Key("children".into()),
                        Step::Index(j),
                        Step::Key(name.clone()),
                        Step::Key("templates".into()),
                        Step::Index(i),
                    ];
                    (path, format!("children[{j}].{name}.templates[{i}]"), spec)
                })
        });
    for (mut path, key, spec) in node.chain(children) {
        path.push(Step::Key("template".into()));
        place(spec, text, source, &path, format!("{key}.template"));
        templates::check_inline(spec).map_err(ManifestError::Template)?;
    }
    Ok(())
}

fn place(spec: &mut TemplateSpec, text: &str, source: &Path, path: &[Step], key: String) {
    let Body::Inline {
        text: template,
        placement,
    } = &mut spec.body
    else {
        return;
    };
    let Some((line, column, index)) = locate(text, path) else {
        return;
    };
    let (line, column, exact) = match_text(text, line, column, index, template);
    *placement = Some(Placement {
        file: source.to_owned(),
        key,
        line,
        column,
        exact,
    });
}

/// Where the template's line 1 column 1 is, and whether its every line maps
/// onto the manifest's at the same offset (a literal block `|`, or one line
/// written as it is); otherwise where the value starts.
fn match_text(
    text: &str,
    line: usize,
    column: usize,
    index: usize,
    template: &str,
) -> (usize, usize, bool) {
    let value = &text[index..];
    if value.starts_with('|') {
        let lines: Vec<&str> = text.lines().skip(line).collect();
        let indent = lines
            .iter()
            .find(|l| !l.trim().is_empty())
            .map_or(0, |l| l.len() - l.trim_start_matches(' ').len());
        let same = template.lines().enumerate().all(|(k, t)| {
            lines.get(k).is_some_and(|l| {
                l.get(indent..).unwrap_or_default() == t || (t.is_empty() && l.trim().is_empty())
            })
        });
        return (line + 1, indent + 1, same && indent > 0);
    }
    let one_line = !template.contains('\n');
    let quoted = value.starts_with(['"', '\'']);
    let raw = if quoted { &value[1..] } else { value };
    // A quoted value with escapes is not its text, character for character.
    let escapes = quoted
        && raw
            .get(..template.len())
            .is_some_and(|r| r.contains(['\\', '\'']));
    if one_line && !escapes && raw.starts_with(template) && !value.starts_with('>') {
        return (line, column + usize::from(quoted), true);
    }
    (line, column, false)
}

/// One step of a key path.
enum Step {
    Key(String),
    Index(usize),
}

/// The line, column and byte index where the value at `path` starts: a
/// lenient pass over the text that fails on purpose at that value, so that
/// the YAML parser says where it is.
fn locate(text: &str, path: &[Step]) -> Option<(usize, usize, usize)> {
    let error = Locate(path)
        .deserialize(serde_yaml_ng::Deserializer::from_str(text))
        .err()?;
    let at = error.location()?;
    (error.to_string().contains(HERE)).then(|| (at.line(), at.column(), at.index()))
}

const HERE: &str = "(the value looked for)";

struct Locate<'a>(&'a [Step]);

impl<'de> DeserializeSeed<'de> for Locate<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.0.is_empty() {
            // YAML gives any scalar as its text.
            return d.deserialize_str(Here);
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Locate<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping or a list")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            match &self.0[0] {
                Step::Key(k) if *k == key => map.next_value_seed(Locate(&self.0[1..]))?,
                _ => map.next_value::<IgnoredAny>().map(drop)?,
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for i in 0.. {
            let more = match self.0[0] {
                Step::Index(j) if j == i => seq.next_element_seed(Locate(&self.0[1..]))?,
                _ => seq.next_element::<IgnoredAny>()?.map(drop),
            };
            if more.is_none() {
                break;
            }
        }
        Ok(())
    }
}

/// Fails at the value it is given, whatever it is.
struct Here;

impl Visitor<'_> for Here {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value")
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(HERE))
    }
}
