//! The templates stage of a surface (a parent's, a host's or a child's
//! alike): it follows the view, renders every template against each new
//! snapshot (on a blocking thread, the newest snapshot only: a burst of
//! changes costs one render), and publishes the outputs and their state as
//! [`TemplateFiles`], which the file tree serves as `templates/<name>` and
//! in `status.json`. An output that did not change keeps its version (the
//! generation at which it last changed), so its file keeps its page cache
//! and its pollers sleep. Each new output goes to the template's actor
//! ([`super::action`]), if it has one.
//!
//! A render error keeps the last good output everywhere (the file, the
//! destination, no command), is logged once per distinct error, and shows
//! in `status.json` until a render succeeds again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::action::{Acted, Actor, Application, Shared};
use super::{Context, Documents, Outcome, Outputs, TemplateSet, TemplateSpec};
use crate::cluster::membership::View;
use crate::surface::files::TemplateFiles;
use crate::surface::restrict::Restrictions;

/// A running templates stage.
pub struct Templates {
    files: watch::Receiver<Arc<TemplateFiles>>,
    application: Arc<Application>,
    /// How many actors have acted on their first output, and how many
    /// there are.
    acted_first: watch::Receiver<usize>,
    actors: usize,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// What a stage is started with.
pub struct StageConfig {
    pub specs: Vec<TemplateSpec>,
    /// A command still running after this is killed.
    pub timeout: Duration,
    /// Applied to every command (and destination write): in a child, the
    /// application's restrictions.
    pub restrict: Restrictions,
}

impl Templates {
    /// No templates: nothing runs, no file is served.
    pub fn none() -> Templates {
        let (_, files) = watch::channel(Arc::new(TemplateFiles::default()));
        Templates {
            files,
            application: Arc::default(),
            acted_first: watch::channel(0).1,
            actors: 0,
            stop: CancellationToken::new(),
            tasks: Vec::new(),
        }
    }

    /// Starts rendering `set` (compiled from `cfg.specs`) against `view`.
    pub fn start(set: TemplateSet, view: View, cfg: StageConfig) -> Templates {
        if cfg.specs.is_empty() {
            return Templates::none();
        }
        let stop = CancellationToken::new();
        let application = Arc::new(Application::default());
        let changed = Arc::new(Notify::new());
        let (acted_first, acted_first_rx) = watch::channel(0);
        let shared = Shared {
            acted_first: Arc::new(acted_first),
            application: application.clone(),
            changed: changed.clone(),
            timeout: cfg.timeout,
            restrict: cfg.restrict,
            stop: stop.clone(),
        };
        let mut tasks = Vec::new();
        let mut feeds = BTreeMap::new();
        let mut records = BTreeMap::new();
        for spec in &cfg.specs {
            if let Some(actor) = Actor::of(spec, shared.clone()) {
                let (tx, rx) = watch::channel(None);
                feeds.insert(spec.name.clone(), tx);
                records.insert(spec.name.clone(), actor.record.clone());
                tasks.push(tokio::spawn(actor.run(rx)));
            }
        }
        let initial = TemplateFiles {
            enabled: true,
            ..TemplateFiles::default()
        };
        let (files_tx, files) = watch::channel(Arc::new(initial));
        let actors = records.len();
        let stage = Stage {
            set: Arc::new(set),
            specs: cfg.specs,
            feeds,
            records,
            files: files_tx,
            revision: 0,
            last_status: Value::Null,
        };
        tasks.push(tokio::spawn(stage.run(view, changed, stop.clone())));
        Templates {
            files,
            application,
            acted_first: acted_first_rx,
            actors,
            stop,
            tasks,
        }
    }

    /// The outputs and their state, as last published.
    pub fn files(&self) -> watch::Receiver<Arc<TemplateFiles>> {
        self.files.clone()
    }

    /// Waits until every template with a destination, command or signal
    /// has acted on its first output (its destination written, its command
    /// run), at most `bound`; whether they all did. A child starts its
    /// application after this, so that the application reads its files
    /// as rendered from the cluster when it starts, and is not signalled
    /// in its first instants, before it can have set its handlers.
    pub async fn first_acted(&self, bound: Duration) -> bool {
        let mut rx = self.acted_first.clone();
        let all = self.actors;
        let waited =
            tokio::time::timeout(bound, async { rx.wait_for(|&n| n >= all).await.is_ok() }).await;
        waited == Ok(true)
    }

    /// The child's application, which `signal:` goes to (0: none running).
    pub fn set_application(&self, pid: libc::pid_t) {
        self.application.set(pid);
    }

    /// Stops rendering and acting; a command still running is killed with
    /// its process group.
    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

struct Stage {
    set: Arc<TemplateSet>,
    specs: Vec<TemplateSpec>,
    /// Each actor's newest output.
    feeds: BTreeMap<String, watch::Sender<Option<Arc<Vec<u8>>>>>,
    records: BTreeMap<String, Arc<Mutex<Acted>>>,
    files: watch::Sender<Arc<TemplateFiles>>,
    revision: u64,
    last_status: Value,
}

impl Stage {
    async fn run(mut self, view: View, acted: Arc<Notify>, stop: CancellationToken) {
        let mut rx = view.subscribe();
        let mut outputs = Outputs::default();
        let mut published: BTreeMap<String, (u64, Arc<Vec<u8>>)> = BTreeMap::new();
        let mut render = true;
        loop {
            // Only a render marks the view seen: a change that came while
            // the stage woke for an actor's news is rendered below.
            let snap = render.then(|| rx.borrow_and_update().clone());
            // A view that holds no member, not even this node, has not
            // heard from the cluster yet (a parent before its agent's first
            // answer, a child before its parent's first view): rendering it
            // would write an empty list over a real one, and tell the
            // program.
            if let Some(snap) = snap.filter(|s| !s.members.is_empty()) {
                let set = self.set.clone();
                let done = tokio::task::spawn_blocking(move || {
                    let ctx = Context::new(Documents::of_snapshot(&snap));
                    let outcomes = set.render_all(&ctx, snap.generation, &mut outputs);
                    // Dropped here, off the runtime's threads.
                    drop(ctx);
                    (outputs, outcomes)
                })
                .await;
                let outcomes;
                (outputs, outcomes) = match done {
                    Ok(r) => r,
                    Err(_) => return,
                };
                for (name, outcome) in outcomes {
                    let out = outputs.get(&name).expect("rendered");
                    match outcome {
                        Outcome::Changed => {
                            let bytes = Arc::new(out.bytes.as_deref().unwrap_or_default().to_vec());
                            tracing::debug!(template = %name, generation = out.generation, bytes = bytes.len(), "template output changed");
                            published.insert(name.clone(), (out.generation, bytes.clone()));
                            if let Some(feed) = self.feeds.get(&name) {
                                feed.send_replace(Some(bytes));
                            }
                        }
                        Outcome::Unchanged => {}
                        Outcome::Failed { repeated: false } => {
                            if let Some(e) = &out.error {
                                tracing::warn!("{e}; its last good output stands");
                            }
                        }
                        Outcome::Failed { repeated: true } => {}
                    }
                }
            }
            self.publish(&outputs, &published);
            tokio::select! {
                r = rx.changed() => {
                    if r.is_err() { return }
                    render = true;
                }
                _ = acted.notified() => render = false,
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Publishes the outputs and the status, if either changed.
    fn publish(&mut self, outputs: &Outputs, published: &BTreeMap<String, (u64, Arc<Vec<u8>>)>) {
        let status = self.status(outputs);
        let current = self.files.borrow().clone();
        if status == self.last_status && current.outputs == *published {
            return;
        }
        if status != self.last_status {
            self.revision += 1;
            self.last_status = status.clone();
        }
        self.files.send_replace(Arc::new(TemplateFiles {
            enabled: true,
            outputs: published.clone(),
            status,
            revision: self.revision,
        }));
    }

    /// `status.json`'s `templates`: `{name: {ok, error, generation,
    /// rendered_at, command: {last_exit, last_run, runs}, destination:
    /// {written_at}, last_error}}`.
    fn status(&self, outputs: &Outputs) -> Value {
        let map: serde_json::Map<String, Value> = self
            .specs
            .iter()
            .map(|spec| {
                let out = outputs.get(&spec.name);
                let mut doc = json!({
                    "ok": out.is_some_and(|o| o.error.is_none() && o.bytes.is_some()),
                    "error": out.and_then(|o| o.error.as_ref()).map(|e| e.to_string()),
                    "generation": out.filter(|o| o.bytes.is_some()).map(|o| o.generation),
                    "rendered_at": out.and_then(|o| o.rendered_at).map(unix),
                });
                if let Some(record) = self.records.get(&spec.name) {
                    let r = record.lock().clone();
                    if spec.command.is_some() || spec.signal.is_some() {
                        doc["command"] = json!({
                            "last_exit": r.last_exit,
                            "last_run": r.last_run.map(unix),
                            "runs": r.runs,
                        });
                    }
                    if spec.destination.is_some() {
                        doc["destination"] = json!({"written_at": r.written_at.map(unix)});
                    }
                    doc["last_error"] = json!(r.last_error);
                }
                (spec.name.clone(), doc)
            })
            .collect();
        Value::Object(map)
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
