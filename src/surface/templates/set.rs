//! A node's (or a child's) templates, compiled once, rendered per view.
//! A template that does not parse is refused at [`TemplateSet::load`],
//! naming its file (or the manifest, for an inline one), line and column. A
//! render runs under minijinja's strict undefined behaviour (a misspelled
//! variable is an error, not an empty output), with a budget of [`FUEL`]
//! (instructions, and about 64 bytes of created data each) and a recursion
//! limit, so no template can hang or exhaust the daemon; its error names
//! the template, line and column. [`TemplateSet::render_all`] keeps, per
//! template, the last good bytes and the generation at which they last
//! changed (see [`Outputs`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};

use super::context::Context;
use super::filters;
use super::spec::{Body, Placement, TemplateSpec};

/// What one render may spend: about this many instructions, or 64 times as
/// many bytes of strings and lists. An upstream list of 10,000 members
/// takes about 1/20 of it (BENCHMARKS.md).
pub const FUEL: u64 = 5_000_000;

/// Nesting of loops, conditions, includes and macro calls at render time.
pub const RECURSION_LIMIT: usize = 100;

/// Where a template's text came from, for its errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    Stdin,
    /// Inline in a manifest.
    Manifest(Placement),
    /// Inline, with no known place.
    Inline(String),
}

impl Origin {
    /// Where the template's line `line`, column `column` is, in words:
    /// `/t.j2: ... at line 3 column 7`.
    fn locate(&self, line: usize, column: Option<usize>) -> (String, String) {
        let at = |l: usize, c: Option<usize>| match c {
            Some(c) => format!("at line {l} column {c}"),
            None => format!("at line {l}"),
        };
        match self {
            Origin::File(path) => (path.display().to_string(), at(line, column)),
            Origin::Stdin => ("<stdin>".into(), at(line, column)),
            Origin::Inline(name) => (format!("template `{name}`"), at(line, column)),
            Origin::Manifest(p) => {
                let head = format!("{}: {}", p.file.display(), p.key);
                if p.exact {
                    // Every line of a literal block has the same indent.
                    (
                        head,
                        at(p.line + line - 1, column.map(|c| p.column + c - 1)),
                    )
                } else {
                    let inner = at(line, column);
                    (
                        head,
                        format!(
                            "{inner} of the template, which starts at line {} column {}",
                            p.line, p.column
                        ),
                    )
                }
            }
        }
    }
}

/// One template's text, ready to compile.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
    pub origin: Origin,
}

impl Source {
    /// The spec's text: an inline one as it is, a `source:` file read now.
    pub fn of_spec(spec: &TemplateSpec) -> Result<Source, LoadError> {
        let (text, origin) = match &spec.body {
            Body::Source(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| LoadError::Read {
                    name: spec.name.clone(),
                    path: path.clone(),
                    error,
                })?;
                (text, Origin::File(path.clone()))
            }
            Body::Inline { text, placement } => (
                text.clone(),
                match placement {
                    Some(p) => Origin::Manifest(p.clone()),
                    None => Origin::Inline(spec.name.clone()),
                },
            ),
        };
        Ok(Source {
            name: spec.name.clone(),
            text,
            origin,
        })
    }
}

/// A place in a template and what is wrong there, named as the manifest's
/// errors are: `/t.j2: syntax error: unexpected `}` at line 3 column 7`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {message} {at}")]
pub struct Located {
    /// The template's file, or the manifest and key.
    pub origin: String,
    pub message: String,
    /// `at line L column C`.
    pub at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the source of template `{name}`, {}: {error}", path.display())]
    Read {
        name: String,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Syntax(Located),
}

/// A render that failed; the template's last good output stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template `{name}`: {located}")]
pub struct RenderError {
    pub name: String,
    pub located: Located,
}

/// Compiled templates and what they came from.
pub struct TemplateSet {
    env: Environment<'static>,
    /// In the order given.
    names: Vec<String>,
    origins: BTreeMap<String, (Origin, String)>,
}

impl std::fmt::Debug for TemplateSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateSet")
            .field("names", &self.names)
            .finish()
    }
}

/// The environment every template of serfnode compiles and renders in.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(RECURSION_LIMIT);
    // Configuration files, not HTML, whatever the name says.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    // A block tag alone on its line leaves no line behind, and a file's
    // last newline stays: the output reads as the template looks.
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(true)
            .build()
            .expect("the default delimiters are valid"),
    );
    filters::register(&mut env);
    env
}

impl TemplateSet {
    /// Reads every spec's source and compiles it; the first that cannot be
    /// read or parsed is the error.
    pub fn load(specs: &[TemplateSpec]) -> Result<TemplateSet, LoadError> {
        let sources = specs
            .iter()
            .map(Source::of_spec)
            .collect::<Result<Vec<_>, _>>()?;
        TemplateSet::compile(sources)
    }

    /// Compiles the sources (unique names).
    pub fn compile(sources: Vec<Source>) -> Result<TemplateSet, LoadError> {
        let mut set = TemplateSet {
            env: environment(),
            names: Vec::new(),
            origins: BTreeMap::new(),
        };
        for source in sources {
            let Source { name, text, origin } = source;
            if let Err(e) = set.env.add_template_owned(name.clone(), text.clone()) {
                return Err(LoadError::Syntax(locate(&e, &origin, &text)));
            }
            set.names.push(name.clone());
            set.origins.insert(name, (origin, text));
        }
        Ok(set)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// One template against one view.
    pub fn render(&self, name: &str, ctx: &Context) -> Result<Vec<u8>, RenderError> {
        self.render_costed(name, ctx).map(|(bytes, _)| bytes)
    }

    /// [`TemplateSet::render`], and the fuel the render consumed.
    pub fn render_costed(&self, name: &str, ctx: &Context) -> Result<(Vec<u8>, u64), RenderError> {
        let fail = |e: &minijinja::Error| {
            // The cause of an include's error is the included template's.
            let mut e = e;
            while let Some(inner) = std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<minijinja::Error>())
                .filter(|inner| inner.line().is_some())
            {
                e = inner;
            }
            let at = e
                .name()
                .filter(|n| self.origins.contains_key(*n))
                .unwrap_or(name);
            let (origin, text) = &self.origins[at];
            RenderError {
                name: name.to_owned(),
                located: locate(e, origin, text),
            }
        };
        let template = self.env.get_template(name).map_err(|e| fail(&e))?;
        let captured = template
            .render_captured(ctx.value())
            .map_err(|e| fail(&e))?;
        let fuel = captured.state().fuel_levels().map_or(0, |(used, _)| used);
        Ok((captured.into_output().into_bytes(), fuel))
    }

    /// Renders every template against the view of `generation` into
    /// `outputs`, and says what became of each, in order.
    pub fn render_all(
        &self,
        ctx: &Context,
        generation: u64,
        outputs: &mut Outputs,
    ) -> Vec<(String, Outcome)> {
        self.names
            .iter()
            .map(|name| {
                let out = outputs.0.entry(name.clone()).or_default();
                let outcome = out.update(self.render(name, ctx), generation);
                (name.clone(), outcome)
            })
            .collect()
    }
}

/// minijinja's error, at the template's line and column.
fn locate(e: &minijinja::Error, origin: &Origin, text: &str) -> Located {
    let message = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    let column = e
        .range()
        .filter(|r| text.is_char_boundary(r.start))
        .map(|r| {
            let start = text[..r.start].rfind('\n').map_or(0, |i| i + 1);
            text[start..r.start].chars().count() + 1
        });
    let (origin, at) = origin.locate(e.line().unwrap_or(1), column);
    Located {
        origin,
        message,
        at,
    }
}

/// What each template rendered last, across views.
#[derive(Debug, Clone, Default)]
pub struct Outputs(BTreeMap<String, Output>);

impl Outputs {
    pub fn get(&self, name: &str) -> Option<&Output> {
        self.0.get(name)
    }
}

/// One template's state: the last good output stands while renders fail.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    /// The last good output; none before the first good render.
    pub bytes: Option<Arc<[u8]>>,
    /// The view generation at which `bytes` last changed: the version of
    /// the live file (and of its page cache).
    pub generation: u64,
    /// When `bytes` last changed.
    pub rendered_at: Option<SystemTime>,
    /// Why the last render failed, while it does.
    pub error: Option<RenderError>,
}

/// What a render did to a template's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// New bytes (the first good render included).
    Changed,
    /// The same bytes as before: generation kept, nothing to write or run.
    Unchanged,
    /// The render failed; `repeated` when with the same error as the last
    /// render (log once per distinct error).
    Failed { repeated: bool },
}

impl Output {
    fn update(&mut self, rendered: Result<Vec<u8>, RenderError>, generation: u64) -> Outcome {
        match rendered {
            Ok(bytes) => {
                self.error = None;
                if self.bytes.as_deref() == Some(&bytes[..]) {
                    return Outcome::Unchanged;
                }
                self.bytes = Some(bytes.into());
                self.generation = generation;
                self.rendered_at = Some(SystemTime::now());
                Outcome::Changed
            }
            Err(e) => {
                let repeated = self.error.as_ref() == Some(&e);
                self.error = Some(e);
                Outcome::Failed { repeated }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::surface::templates::context::Documents;
    use serde_json::json;

    fn source(name: &str, text: &str) -> Source {
        Source {
            name: name.into(),
            text: text.into(),
            origin: Origin::File(format!("/t/{name}.j2").into()),
        }
    }

    fn set(text: &str) -> TemplateSet {
        TemplateSet::compile(vec![source("t", text)]).unwrap()
    }

    fn web(id: &str, ip: &str, port: &str, ts: &str, status: &str) -> serde_json::Value {
        json!({
            "id": id, "role": "web", "status": status, "timestamp": ts,
            "service_ip": ip, "service_port": port, "tags": {"role": "web", "weight": "1"},
        })
    }

    fn ctx() -> Context {
        Context::new(Documents {
            members: vec![
                web("w1", "10.0.0.1", "8080", "2", "alive"),
                web("w2", "10.0.0.2", "8081", "1", "alive"),
                web("w3", "10.0.0.3", "8082", "3", "failed"),
            ],
            ..Documents::default()
        })
    }

    fn render(text: &str) -> Result<String, String> {
        set(text)
            .render("t", &ctx())
            .map(|b| String::from_utf8(b).unwrap())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn an_nginx_upstream_lists_the_alive_members_of_a_role() {
        let template = "\
upstream web {
  {% for m in alive | role('web') | sort_by('name') %}
  server {{ m | service_addr }};
  {% endfor %}
}
";
        assert_eq!(
            render(template).unwrap(),
            "upstream web {\n  server 10.0.0.1:8080;\n  server 10.0.0.2:8081;\n}\n"
        );
    }

    #[test]
    fn a_template_that_does_not_parse_names_file_line_and_column() {
        let cases = [
            ("a\nb {{ x }\n", "/t/t.j2: syntax error: unexpected `}`, expected end of variable block at line 2 column 8"),
            ("{% for m in alive %}\n{{ m }}\n", "/t/t.j2: syntax error: unexpected end of input, expected end of block at line 2 column 8"),
            ("ok\n\n  {{ 1 + }}", "/t/t.j2: syntax error: unexpected end of variable block at line 3 column 10"),
        ];
        for (text, message) in cases {
            let err = TemplateSet::compile(vec![source("t", text)]).unwrap_err();
            assert_eq!(err.to_string(), message, "{text:?}");
        }
    }

    #[test]
    fn a_misspelled_variable_is_an_error_not_empty_output() {
        assert_eq!(
            render("x\n{{ alvie | length }}").unwrap_err(),
            "template `t`: /t/t.j2: undefined value: `alvie` is undefined at line 2 column 12"
        );
        assert_eq!(
            render("{% for m in alive %}{{ m.servce_ip }}{% endfor %}").unwrap_err(),
            "template `t`: /t/t.j2: undefined value: `m.servce_ip` is undefined at line 1 column 24"
        );
        assert!(render("{% if nope %}x{% endif %}").is_err());
        // Asking is not an error.
        assert_eq!(
            render("{{ 'yes' if alive[0].tags.zone is defined else 'no' }}").unwrap(),
            "no"
        );
        assert_eq!(
            render("{{ alive[0].tags.zone | default('none') }}").unwrap(),
            "none"
        );
    }

    #[test]
    fn an_unknown_filter_fails_the_render_with_its_line() {
        let err = render("\n{{ alive | rol('web') }}").unwrap_err();
        assert!(
            err.starts_with("template `t`: /t/t.j2: unknown filter"),
            "{err}"
        );
        assert!(err.ends_with("at line 2 column 12"), "{err}");
    }

    #[test]
    fn a_runaway_template_runs_out_of_fuel() {
        let started = std::time::Instant::now();
        let err = render(
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        )
        .unwrap_err();
        assert!(err.contains("engine ran out of fuel"), "{err}");
        let err = render("{% set s = 'x' * 1000000000 %}{{ s | length }}").unwrap_err();
        assert!(err.contains("fuel"), "{err}");
        let err = render("{% for a in range(100000) %}{{ 'y' * 10000 }}{% endfor %}").unwrap_err();
        assert!(err.contains("fuel"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
    }

    #[test]
    fn deep_recursion_is_an_error_not_a_crash() {
        let err = render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").unwrap_err();
        assert!(err.contains("recursion"), "{err}");
    }

    #[test]
    fn html_names_are_not_escaped_and_the_last_newline_stays() {
        let set = TemplateSet::compile(vec![source("index.html", "{{ '<b>' }}\n")]).unwrap();
        assert_eq!(set.render("index.html", &ctx()).unwrap(), b"<b>\n");
        assert_eq!(
            render("{{ 1 == 1 }} {{ 1 == 2 }} {{ none }}").unwrap(),
            "True False None"
        );
    }

    #[test]
    fn an_included_templates_error_names_that_template() {
        let set = TemplateSet::compile(vec![
            source("part", "\n\n{{ nope }}"),
            source("whole", "{% include 'part' %}"),
        ])
        .unwrap();
        let err = set.render("whole", &ctx()).unwrap_err().to_string();
        assert!(err.starts_with("template `whole`: /t/part.j2: "), "{err}");
        assert!(err.ends_with("at line 3 column 4"), "{err}");
    }

    #[test]
    fn outputs_keep_their_generation_while_unchanged_and_the_last_good_bytes_on_error() {
        let set = TemplateSet::compile(vec![
            source("count", "{{ alive | length }}"),
            source("first", "{{ alive[0].id }}"),
        ])
        .unwrap();
        let mut outputs = Outputs::default();
        let view = |members: Vec<serde_json::Value>| {
            Context::new(Documents {
                members,
                ..Documents::default()
            })
        };
        let a = web("a", "10.0.0.1", "80", "1", "alive");
        let b = web("b", "10.0.0.2", "80", "2", "alive");
        let outcomes = set.render_all(&view(vec![a.clone()]), 1, &mut outputs);
        assert_eq!(
            outcomes,
            [
                ("count".into(), Outcome::Changed),
                ("first".into(), Outcome::Changed)
            ]
        );
        let outcomes = set.render_all(&view(vec![a.clone(), b.clone()]), 2, &mut outputs);
        assert_eq!(outcomes[0], ("count".into(), Outcome::Changed));
        assert_eq!(outcomes[1], ("first".into(), Outcome::Unchanged));
        assert_eq!(outputs.get("count").unwrap().generation, 2);
        assert_eq!(
            outputs.get("first").unwrap().generation,
            1,
            "unchanged keeps its generation"
        );
        assert_eq!(
            outputs.get("count").unwrap().bytes.as_deref(),
            Some(&b"2"[..])
        );

        // No member: `alive[0].id` fails; its last good output stands.
        for (generation, repeated) in [(3, false), (4, true)] {
            let outcomes = set.render_all(&view(vec![]), generation, &mut outputs);
            assert_eq!(outcomes[1], ("first".into(), Outcome::Failed { repeated }));
        }
        let first = outputs.get("first").unwrap();
        assert_eq!(first.bytes.as_deref(), Some(&b"a"[..]));
        assert_eq!(first.generation, 1);
        assert!(first
            .error
            .as_ref()
            .unwrap()
            .to_string()
            .contains("/t/first.j2"));
        // Recovered: the error clears; the same bytes keep their generation.
        let outcomes = set.render_all(&view(vec![a]), 5, &mut outputs);
        assert_eq!(outcomes[1], ("first".into(), Outcome::Unchanged));
        assert_eq!(outputs.get("first").unwrap().error, None);
        assert_eq!(outputs.get("first").unwrap().generation, 1);
    }

    #[test]
    fn load_reads_sources_and_names_what_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up.j2");
        std::fs::write(&path, "{{ alive | length }} up\n").unwrap();
        let spec = |body| TemplateSpec {
            name: "up".into(),
            body,
            destination: None,
            mode: None,
            command: None,
            signal: None,
            wait: None,
        };
        let set = TemplateSet::load(&[spec(Body::Source(path.clone()))]).unwrap();
        assert_eq!(set.render("up", &ctx()).unwrap(), b"2 up\n");
        let missing = dir.path().join("nope.j2");
        let err = TemplateSet::load(&[spec(Body::Source(missing.clone()))]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot read the source of template `up`, {}: No such file or directory (os error 2)", missing.display())
        );
        std::fs::write(&path, "\n{% if %}").unwrap();
        let err = TemplateSet::load(&[spec(Body::Source(path.clone()))]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{}: syntax error", path.display())),
            "{err}"
        );
        assert!(err.to_string().ends_with("at line 2 column 7"), "{err}");
    }

    #[test]
    fn inline_errors_name_the_manifest_line() {
        let placed = |exact| Source {
            name: "t".into(),
            text: "a\nb {{ x }\n".into(),
            origin: Origin::Manifest(Placement {
                file: "/serfnode.yml".into(),
                key: "templates[0].template".into(),
                line: 5,
                column: 7,
                exact,
            }),
        };
        let err = TemplateSet::compile(vec![placed(true)])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "/serfnode.yml: templates[0].template: syntax error: unexpected `}`, expected end of variable block at line 6 column 14");
        let err = TemplateSet::compile(vec![placed(false)])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "/serfnode.yml: templates[0].template: syntax error: unexpected `}`, expected end of variable block at line 2 column 8 of the template, which starts at line 5 column 7");
    }
}
