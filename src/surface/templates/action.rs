//! What a template does beyond its live file: one actor per template with a
//! `destination`, a `command` or a `signal`, told of each new output.
//!
//! - **`wait: MIN:MAX`**: after a change the actor waits until the output
//!   has been quiet for MIN, never longer than MAX after the first change;
//!   then it takes the newest output.
//! - **Destination**: written only when its bytes differ from the file's
//!   ([`super::destination`]).
//! - **Command or signal**: only after the destination really changed (with
//!   no destination: after the output differs from the last one acted on).
//!   The actor does one thing at a time, so two runs of one template never
//!   overlap, and whatever changed during a run gives exactly one more run
//!   after it (the outputs in between are coalesced into the newest). A
//!   command runs as a handler does ([`crate::surface::handlers`]: its own
//!   process group, killed at the timeout, output logged, in a child with
//!   the application's restrictions); a signal goes to the child's
//!   application (none before it started: it reads its files then).

use std::ffi::OsStr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::destination::{Destination, Written};
use super::spec::{Signal, TemplateSpec, Wait};
use crate::surface::handlers::{run_process, Run};
use crate::surface::restrict::Restrictions;

/// An actor's record, for `status.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Acted {
    /// The last command's exit code (128 + the signal that killed it, as a
    /// shell says; none while it never ran or could not start).
    pub last_exit: Option<i32>,
    /// When the last command or signal started.
    pub last_run: Option<SystemTime>,
    /// Commands run or signals sent.
    pub runs: u64,
    /// The last destination write error or command failure, while it
    /// stands.
    pub last_error: Option<String>,
    /// When the destination was last written.
    pub written_at: Option<SystemTime>,
}

/// What actors share with the stage that feeds them.
#[derive(Clone)]
pub(crate) struct Shared {
    /// The child's application, for `signal` (0 until it runs).
    pub application: Arc<AtomicI32>,
    /// Wakes the stage to publish a new status.
    pub changed: Arc<Notify>,
    /// A command still running after this is killed.
    pub timeout: Duration,
    pub restrict: Restrictions,
    pub stop: CancellationToken,
    /// Counts the actors that have acted on their first output (a child
    /// starts its application after them: see [`super::Templates::first_acted`]).
    pub acted_first: Arc<watch::Sender<usize>>,
}

/// One template's actor.
pub(crate) struct Actor {
    spec: TemplateSpec,
    destination: Option<Destination>,
    pub record: Arc<Mutex<Acted>>,
    shared: Shared,
}

impl Actor {
    /// The actor for `spec`, if it has anything to do.
    pub fn of(spec: &TemplateSpec, shared: Shared) -> Option<Actor> {
        if spec.destination.is_none() && spec.command.is_none() && spec.signal.is_none() {
            return None;
        }
        let destination = spec.destination.as_ref().map(|path| Destination {
            name: spec.name.clone(),
            path: path.clone(),
            mode: spec.mode,
            ids: shared.restrict.ids.clone(),
        });
        Some(Actor {
            spec: spec.clone(),
            destination,
            record: Arc::default(),
            shared,
        })
    }

    /// Acts on each new output of `outputs` until the stop.
    pub async fn run(self, mut outputs: watch::Receiver<Option<Arc<Vec<u8>>>>) {
        let stop = self.shared.stop.clone();
        let mut acted: Option<Arc<Vec<u8>>> = None;
        // An output there before the actor started counts as a change.
        outputs.mark_changed();
        loop {
            tokio::select! {
                r = outputs.changed() => if r.is_err() { return },
                _ = stop.cancelled() => return,
            }
            if let Some(wait) = self.spec.wait {
                if !quiesce(&mut outputs, wait, &stop).await {
                    return;
                }
            }
            let Some(bytes) = outputs.borrow_and_update().clone() else {
                continue;
            };
            let changed = match &self.destination {
                Some(d) => self.write(d, &bytes).await,
                None => acted.as_deref() != Some(&*bytes),
            };
            let first = acted.is_none();
            acted = Some(bytes);
            if changed {
                self.act().await;
            }
            if first {
                self.shared.acted_first.send_modify(|n| *n += 1);
            }
        }
    }

    /// Writes the destination; whether its bytes changed.
    async fn write(&self, d: &Destination, bytes: &Arc<Vec<u8>>) -> bool {
        let (d2, b2) = (d.clone(), bytes.clone());
        let res = tokio::task::spawn_blocking(move || d2.write(&b2))
            .await
            .unwrap_or_else(|e| {
                Err(super::destination::WriteError {
                    name: d.name.clone(),
                    path: d.path.clone(),
                    what: "the writer",
                    error: std::io::Error::other(e.to_string()),
                })
            });
        let mut record = self.record.lock();
        let changed = match res {
            Ok(w) => {
                if w.changed() {
                    record.written_at = Some(SystemTime::now());
                    let how = if w == Written::InPlace {
                        "in place (the rename was refused: a bind-mounted file)"
                    } else {
                        "by rename"
                    };
                    tracing::info!(template = %self.spec.name, path = %d.path.display(), bytes = bytes.len(), "destination written {how}");
                }
                if record.last_error.take().is_some() {
                    tracing::info!(template = %self.spec.name, "destination written again after the error");
                }
                w.changed()
            }
            Err(e) => {
                let msg = e.to_string();
                if record.last_error.as_ref() != Some(&msg) {
                    tracing::error!("{msg}");
                }
                record.last_error = Some(msg);
                false
            }
        };
        drop(record);
        self.shared.changed.notify_one();
        changed
    }

    /// Runs the command or sends the signal, to its end.
    async fn act(&self) {
        let name = &self.spec.name;
        if let Some(signal) = self.spec.signal {
            return self.signal(signal);
        }
        let Some(command) = &self.spec.command else {
            return;
        };
        self.update(|r| {
            r.last_run = Some(SystemTime::now());
            r.runs += 1;
        });
        let (program, args) = command.split_first().expect("a command has a word");
        let label = format!("template {name}");
        tracing::info!(template = %name, command = ?command, "template changed: running its command");
        let outcome = run_process(
            Run {
                program: OsStr::new(program),
                args,
                name,
                label: &label,
                env: vec![("SERFNODE_TEMPLATE".into(), name.clone())],
                stdin: Vec::new(),
                timeout: self.shared.timeout,
                restrict: &self.shared.restrict,
            },
            &self.shared.stop,
        )
        .await;
        let exit = outcome.status.or(outcome.signal.map(|s| 128 + s));
        let error = if outcome.success() {
            tracing::info!(template = %name, elapsed = ?outcome.elapsed, "template command succeeded");
            None
        } else {
            let why = if outcome.timed_out {
                format!(
                    "timed out after {:?}: killed with its process group",
                    self.shared.timeout
                )
            } else if let Some(e) = &outcome.error {
                e.clone()
            } else {
                match (outcome.status, outcome.signal) {
                    (Some(code), _) => format!("exit status {code}"),
                    (_, Some(sig)) => format!("killed by signal {sig}"),
                    _ => "ended without a status".into(),
                }
            };
            let stderr = String::from_utf8_lossy(&outcome.stderr);
            let msg = format!("template `{name}`: command {command:?} failed: {why}");
            tracing::warn!(stderr = %stderr.trim(), "{msg}");
            Some(msg)
        };
        self.update(|r| {
            r.last_exit = exit;
            if error.is_some()
                || r.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("command"))
            {
                r.last_error = error;
            }
        });
    }

    fn signal(&self, signal: Signal) {
        let name = &self.spec.name;
        let pid = self.shared.application.load(Ordering::Acquire);
        let error = if pid <= 1 {
            // Not started yet: it reads the destination as it is when it
            // starts, and is told of the changes after that.
            tracing::debug!(template = %name, "template changed before the application started: no signal");
            None
        } else {
            self.update(|r| {
                r.last_run = Some(SystemTime::now());
                r.runs += 1;
            });
            // SAFETY: kill(2) of the application, the wrapper's child: it
            // is cleared as soon as the wrapper's wait for it returns (a
            // pid reused in that instant is the one gap).
            match unsafe { libc::kill(pid, signal.number()) } {
                0 => {
                    tracing::info!(template = %name, pid, signal = signal.name(), "template changed: application signalled");
                    None
                }
                _ => Some(format!(
                    "template `{name}`: signal {} to the application ({pid}): {}",
                    signal.name(),
                    std::io::Error::last_os_error()
                )),
            }
        };
        if let Some(e) = &error {
            tracing::warn!("{e}");
        }
        self.update(|r| r.last_error = error);
    }

    fn update(&self, f: impl FnOnce(&mut Acted)) {
        f(&mut self.record.lock());
        self.shared.changed.notify_one();
    }
}

/// Waits until `outputs` has been quiet for `wait.min`, at most `wait.max`
/// after the change that started the wait; false at the stop.
async fn quiesce(
    outputs: &mut watch::Receiver<Option<Arc<Vec<u8>>>>,
    wait: Wait,
    stop: &CancellationToken,
) -> bool {
    let deadline = Instant::now() + wait.max;
    loop {
        let quiet = (Instant::now() + wait.min).min(deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(quiet) => return true,
            r = outputs.changed() => {
                if r.is_err() {
                    return true;
                }
                if Instant::now() >= deadline {
                    return true;
                }
            }
            _ = stop.cancelled() => return false,
        }
    }
}
