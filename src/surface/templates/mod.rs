//! Templates: the cluster rendered into any configuration file, on
//! minijinja (Jinja2's language; serfnode adds no syntax). The spec as the
//! manifest declares it ([`spec`]), the context a template sees
//! ([`context`]), the filters beside minijinja's own ([`filters`]),
//! compiling and rendering a set of templates with their last outputs
//! ([`set`]); the stage of a surface that renders them per view and serves
//! them as `templates/<name>` and in `status.json` ([`stage`]); and what a
//! template does beyond its file: `wait`, its `destination`
//! ([`destination`]) and its `command` or `signal` ([`action`]).
//!
//! The stage is the same in a parent, on a host and in a child (a child's
//! specs travel to it as JSON: [`TemplateSpec`] is serializable): every
//! `source:` is read and compiled where it is rendered, before the mount,
//! and one that does not parse stops the start naming file, line and
//! column ([`TemplateSet::load`]).
//!
//! # Cost
//!
//! A context wraps the documents without converting them, so a render pays
//! for what the template reads: BENCHMARKS.md gives the render time of an
//! upstream list over 10,000 members, the cost of building the documents
//! from a snapshot, and the time from a change in the agent to a template's
//! command.

pub mod action;
pub mod context;
pub mod destination;
pub mod filters;
pub mod set;
pub mod spec;
pub mod stage;

pub use context::{Context, Documents, ReadError};
pub use set::{
    LoadError, Located, Origin, Outcome, Output, Outputs, RenderError, Source, TemplateSet, FUEL,
    RECURSION_LIMIT,
};
pub use spec::{child_templates, node_templates, Body, Placement, Signal, TemplateSpec, Wait};
pub use stage::{StageConfig, Templates};

/// Checks that an inline template parses (a `source:` is read and checked
/// where it is rendered, by [`TemplateSet::load`]).
pub(crate) fn check_inline(spec: &TemplateSpec) -> Result<(), LoadError> {
    match spec.body {
        Body::Inline { .. } => TemplateSet::compile(vec![Source::of_spec(spec)?]).map(drop),
        Body::Source(_) => Ok(()),
    }
}
