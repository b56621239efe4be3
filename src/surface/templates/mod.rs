//! Templates: the cluster rendered into any configuration file, on
//! minijinja (Jinja2's language; serfnode adds no syntax). This module owns
//! the part that stands alone: the spec as the manifest declares it
//! ([`spec`]), the context a template sees ([`context`]), the filters beside
//! minijinja's own ([`filters`]), and compiling and rendering a set of
//! templates with their last outputs ([`set`]). `serfnode render` uses it
//! against a running node's files; nothing in the daemon does yet.
//!
//! # Design: what part 2 adds, and where
//!
//! After the source tree is reorganised (issue 12), templates are a stage of
//! the surface, the same in a parent, on a host and in a child:
//!
//! - **Start-up.** The surface gets the node's specs (`Manifest::templates`;
//!   a child's travel to it as JSON, [`TemplateSpec`] is serializable) and
//!   calls [`TemplateSet::load`], which reads each `source:` where it will
//!   be rendered (inside the child for a child's) and refuses a template
//!   that does not parse, naming file, line and column: start-up stops.
//!   Inline templates were already checked by `Manifest::parse`.
//! - **Render per view.** One task follows the view (the watch channel the
//!   file tree follows). For each new snapshot it builds
//!   [`Documents::of_snapshot`] → [`Context::new`] once, then
//!   [`TemplateSet::render_all`] with the snapshot's generation into its
//!   [`Outputs`]: an unchanged output keeps its generation, a failed render
//!   keeps the last good bytes and reports whether its error is new (log it
//!   once). It publishes the outputs (an `Arc<Outputs>` beside the
//!   snapshot) and wakes pollers of the changed files.
//! - **The live file.** The file tree gets a `templates/` directory: `<name>`
//!   is `Doc::new(output.generation, bytes)`, so it has the guarantees of
//!   every other file (never torn, new at the next open, POLLPRI on change,
//!   version kept while unchanged). `status.json` gains `templates: {name:
//!   {ok, error, generation, rendered_at, command: {last_exit, last_run}}}`
//!   from [`Output`] and the actor below.
//! - **Destination, command, signal.** One actor per template that has any:
//!   told of each [`Outcome::Changed`], it waits by `wait` (quiet for MIN,
//!   never more than MAX after the first change), then writes the
//!   destination only if its bytes differ (temporary file in the same
//!   directory, fsync, rename; in place with one write where rename fails
//!   with EBUSY, as the hosts hook does; with `mode`), then runs the
//!   command (never two at once: changes during a run give exactly one run
//!   after it; a timeout; status and output logged; in a child with the
//!   application's restrictions) or sends `signal` to the child's
//!   application.
//!
//! # Cost
//!
//! A context wraps the documents without converting them, so a render pays
//! for what the template reads: BENCHMARKS.md gives the render time of an
//! upstream list over 10,000 members, and the cost of building the
//! documents from a snapshot, which part 2 may cut by keeping each
//! member's document until its entry changes.

pub mod context;
pub mod filters;
pub mod set;
pub mod spec;

pub use context::{Context, Documents, ReadError};
pub use set::{
    LoadError, Located, Origin, Outcome, Output, Outputs, RenderError, Source, TemplateSet, FUEL,
    RECURSION_LIMIT,
};
pub use spec::{child_templates, node_templates, Body, Placement, Signal, TemplateSpec, Wait};

/// Checks that an inline template parses (a `source:` is read and checked
/// where it is rendered, by [`TemplateSet::load`]).
pub fn check_inline(spec: &TemplateSpec) -> Result<(), LoadError> {
    match spec.body {
        Body::Inline { .. } => TemplateSet::compile(vec![Source::of_spec(spec)?]).map(drop),
        Body::Source(_) => Ok(()),
    }
}
