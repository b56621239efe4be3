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
//! - **A signal held until the application handles it**: a signal whose
//!   default action would end (or stop) the application waits while the
//!   application neither catches nor ignores it (`SigCgt`, `SigIgn` of
//!   `/proc/PID/status`, looked at every [`HOLD_POLL`]), at most
//!   [`HOLD_BOUND`] after the application's start; then it is sent anyway,
//!   with a warning (and at once where that file cannot be read). An
//!   application still starting (a shell before its `trap`, nginx before
//!   its handlers) would otherwise be killed by the change it was meant to
//!   be told of. The actor waits with it, so changes while it is held give
//!   one signal more after it, as for a command.

use std::ffi::OsStr;
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
    /// The child's application, for `signal` (none until it runs).
    pub application: Arc<Application>,
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

/// The child's application, which `signal:` goes to.
#[derive(Debug, Default)]
pub(crate) struct Application(Mutex<Option<Started>>);

/// A running application: its pid and when it was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Started {
    pub pid: libc::pid_t,
    pub at: Instant,
}

impl Application {
    /// The application started as `pid`, now (0: none running).
    pub fn set(&self, pid: libc::pid_t) {
        *self.0.lock() = (pid > 1).then(|| Started {
            pid,
            at: Instant::now(),
        });
    }

    pub fn get(&self) -> Option<Started> {
        *self.0.lock()
    }
}

/// How often a held signal looks again at the application's handlers.
const HOLD_POLL: Duration = Duration::from_millis(10);

/// How long after the application's start a signal is held for it to set
/// a handler.
const HOLD_BOUND: Duration = Duration::from_secs(10);

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
            return self.signal(signal).await;
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

    /// Sends `signal` to the application, once it handles it (see the
    /// module doc).
    async fn signal(&self, signal: Signal) {
        let name = &self.spec.name;
        let Some(app) = self.shared.application.get() else {
            // Not started yet: it reads the destination as it is when it
            // starts, and is told of the changes after that.
            tracing::debug!(template = %name, "template changed before the application started: no signal");
            return self.update(|r| r.last_error = None);
        };
        let pid = app.pid;
        match hold(
            &self.shared.application,
            app,
            signal,
            app.at + HOLD_BOUND,
            &self.shared.stop,
            || tracing::info!(template = %name, pid, signal = signal.name(), "template changed: signal held until the application catches or ignores it"),
        )
        .await
        {
            Hold::Handled => {}
            Hold::Bound => tracing::warn!(
                template = %name,
                pid,
                signal = signal.name(),
                "the application never set a handler for SIG{} within {HOLD_BOUND:?} of its start: sent anyway",
                signal.name()
            ),
            Hold::Gone => {
                tracing::debug!(template = %name, pid, "the application ended while its signal was held: no signal");
                return self.update(|r| r.last_error = None);
            }
            Hold::Stopped => return,
        }
        self.update(|r| {
            r.last_run = Some(SystemTime::now());
            r.runs += 1;
        });
        // SAFETY: kill(2) of the application, the wrapper's child: it is
        // cleared as soon as the wrapper's wait for it returns, and the
        // hold has just seen it set (a pid reused in that instant is the
        // one gap).
        let error = match unsafe { libc::kill(pid, signal.number()) } {
            0 => {
                tracing::info!(template = %name, pid, signal = signal.name(), "template changed: application signalled");
                None
            }
            _ => {
                let e = format!(
                    "template `{name}`: signal {} to the application ({pid}): {}",
                    signal.name(),
                    std::io::Error::last_os_error()
                );
                tracing::warn!("{e}");
                Some(e)
            }
        };
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

/// How a signal's hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// The application catches or ignores it (or it is not one to hold,
    /// or its handlers cannot be read): send it.
    Handled,
    /// The bound passed without a handler: send it anyway.
    Bound,
    /// The application ended (or was replaced): nothing to send.
    Gone,
    /// The stop: nothing to send.
    Stopped,
}

/// Waits while `app` neither catches nor ignores `signal` and would be
/// ended by it, until `deadline`; `held` is called once if it waits at all.
async fn hold(
    application: &Application,
    app: Started,
    signal: Signal,
    deadline: Instant,
    stop: &CancellationToken,
    held: impl FnOnce(),
) -> Hold {
    let number = signal.number();
    if !held_until_handled(number) {
        return Hold::Handled;
    }
    let mut held = Some(held);
    loop {
        if application.get() != Some(app) {
            return Hold::Gone;
        }
        match handles_now(app.pid, number) {
            Ok(true) => return Hold::Handled,
            Ok(false) => {}
            Err(e) => {
                // Without its handlers to read, holding could only ever end
                // at the bound: it is sent as it always was.
                tracing::debug!(pid = app.pid, "{e}: signal sent without a hold");
                return Hold::Handled;
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Hold::Bound;
        }
        if let Some(held) = held.take() {
            held();
        }
        tokio::select! {
            _ = tokio::time::sleep_until((now + HOLD_POLL).min(deadline)) => {}
            _ = stop.cancelled() => return Hold::Stopped,
        }
    }
}

/// Whether `signal` is held until the application handles it: every
/// signal whose default action ends (or stops) a process, but SIGKILL and
/// SIGSTOP, which no process can catch.
fn held_until_handled(signal: i32) -> bool {
    !matches!(
        signal,
        libc::SIGCHLD
            | libc::SIGCONT
            | libc::SIGURG
            | libc::SIGWINCH
            | libc::SIGKILL
            | libc::SIGSTOP
    )
}

/// Whether process `pid` catches or ignores `signal` now, from its
/// `/proc/PID/status` (procfs answers from memory: no blocking read).
fn handles_now(pid: libc::pid_t, signal: i32) -> Result<bool, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .map_err(|e| format!("read the application's handlers from {path}: {e}"))?;
    handles(&status, signal).ok_or_else(|| {
        format!("read the application's handlers from {path}: no well-formed SigCgt and SigIgn")
    })
}

/// Whether the process whose `/proc/PID/status` is `status` catches or
/// ignores `signal`: bit `signal - 1` of its `SigCgt` or `SigIgn` (hex
/// masks); none if either is missing or malformed, or `signal` is out of
/// range.
fn handles(status: &str, signal: i32) -> Option<bool> {
    let bit = 1u64.checked_shl(u32::try_from(signal.checked_sub(1)?).ok()?)?;
    let mask = |key: &str| {
        let value = status
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| *k == key))?
            .1
            .trim();
        u64::from_str_radix(value, 16).ok()
    };
    Some((mask("SigCgt")? | mask("SigIgn")?) & bit != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of a real status around the masks.
    fn status(ign: &str, cgt: &str) -> String {
        format!(
            "Name:\tsh\nState:\tS (sleeping)\nPid:\t4242\nSigQ:\t0/63477\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\nSigBlk:\t0000000000000000\nSigIgn:\t{ign}\nSigCgt:\t{cgt}\nCapInh:\t0000000000000000\n"
        )
    }

    #[test]
    fn a_caught_or_ignored_signal_is_handled() {
        // SIGHUP is 1: bit 0; SIGTERM is 15: bit 14 (0x4000).
        let caught = status("0000000000000000", "0000000000000001");
        assert_eq!(handles(&caught, libc::SIGHUP), Some(true));
        assert_eq!(handles(&caught, libc::SIGTERM), Some(false));
        let ignored = status("0000000000004000", "0000000000000000");
        assert_eq!(handles(&ignored, libc::SIGTERM), Some(true));
        assert_eq!(handles(&ignored, libc::SIGHUP), Some(false));
        // The highest real-time signal is bit 63.
        let top = status("8000000000000000", "0000000000000000");
        assert_eq!(handles(&top, 64), Some(true));
    }

    #[test]
    fn no_bit_no_handler() {
        // sh before its trap: it catches SIGINT and SIGCHLD, not SIGHUP.
        let sh = status("0000000000000000", "0000000000010002");
        assert_eq!(handles(&sh, libc::SIGHUP), Some(false));
        assert_eq!(handles(&sh, libc::SIGINT), Some(true));
    }

    #[test]
    fn malformed_masks_tell_nothing() {
        assert_eq!(handles("", libc::SIGHUP), None);
        assert_eq!(handles("SigCgt:\t0000000000000001\n", libc::SIGHUP), None);
        assert_eq!(
            handles(&status("zz", "0000000000000001"), libc::SIGHUP),
            None
        );
        assert_eq!(handles(&status("0", ""), libc::SIGHUP), None);
        assert_eq!(
            handles(&status("10000000000000000", "0"), libc::SIGHUP),
            None,
            "more than 64 bits"
        );
        assert_eq!(handles(&status("0", "1"), 0), None);
        assert_eq!(handles(&status("0", "1"), 65), None);
        assert_eq!(handles(&status("0", "1"), -1), None);
    }

    /// A real `sh` running `script`, once it printed its first line.
    fn shell(script: &str) -> (std::process::Child, Started) {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        // As the wrapper starts an application, HUP at its default: a test
        // run under nohup would hand it on ignored, and a shell cannot trap
        // a signal ignored at its start.
        // SAFETY: signal(2) between fork and exec, nothing allocated.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGHUP, libc::SIG_DFL);
                Ok(())
            })
        };
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n");
        let app = Started {
            pid: child.id() as libc::pid_t,
            at: Instant::now(),
        };
        (child, app)
    }

    fn hup() -> Signal {
        Signal::try_from("HUP".to_string()).unwrap()
    }

    fn running(app: Started) -> Arc<Application> {
        Arc::new(Application(Mutex::new(Some(app))))
    }

    fn end(mut child: std::process::Child) {
        let _ = child.kill();
        let _ = child.wait();
    }

    const FAR: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn a_signal_the_application_traps_is_not_held() {
        let (child, app) = shell("trap : HUP; echo ready; while :; do sleep 0.05; done");
        let stop = CancellationToken::new();
        let got = hold(&running(app), app, hup(), app.at + FAR, &stop, || {
            panic!("held")
        })
        .await;
        assert_eq!(got, Hold::Handled);
        end(child);
    }

    #[tokio::test]
    async fn a_signal_is_held_until_the_application_traps_it() {
        // The trap only once the test writes a line: the signal comes first.
        let (mut child, app) =
            shell("echo ready; read go; trap : HUP; while :; do sleep 0.05; done");
        let application = running(app);
        let stop = CancellationToken::new();
        let (held_tx, held_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn({
            let (application, stop) = (application.clone(), stop.clone());
            async move {
                hold(&application, app, hup(), app.at + FAR, &stop, move || {
                    let _ = held_tx.send(());
                })
                .await
            }
        });
        held_rx.await.unwrap();
        assert!(!task.is_finished(), "the hold ended before the trap");
        use std::io::Write;
        child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        assert_eq!(task.await.unwrap(), Hold::Handled);
        end(child);
    }

    #[tokio::test]
    async fn a_signal_never_trapped_is_sent_at_the_bound() {
        let (child, app) = shell("echo ready; read go");
        let stop = CancellationToken::new();
        let got = hold(&running(app), app, hup(), app.at, &stop, || {}).await;
        assert_eq!(got, Hold::Bound);
        end(child);
    }

    #[tokio::test]
    async fn a_held_signal_is_dropped_when_the_application_ends_or_at_the_stop() {
        let (child, app) = shell("echo ready; read go");
        let application = running(app);
        let stop = CancellationToken::new();
        let got = hold(&application, app, hup(), app.at + FAR, &stop, || {
            application.set(0)
        })
        .await;
        assert_eq!(got, Hold::Gone);
        let application = running(app);
        let got = hold(&application, app, hup(), app.at + FAR, &stop, || {
            stop.cancel()
        })
        .await;
        assert_eq!(got, Hold::Stopped);
        end(child);
    }

    #[test]
    fn only_signals_that_would_end_the_application_are_held() {
        for s in [libc::SIGHUP, libc::SIGTERM, libc::SIGUSR1, libc::SIGALRM] {
            assert!(held_until_handled(s), "{s}");
        }
        for s in [libc::SIGWINCH, libc::SIGCONT, libc::SIGKILL, libc::SIGSTOP] {
            assert!(!held_until_handled(s), "{s}");
        }
    }
}
