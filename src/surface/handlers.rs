//! Event handlers: in every member, the executable named after a cluster
//! event (a user event, `member-join` and the other member events,
//! `container`, a query name) in the handlers directory runs when that event
//! arrives, as Serf's own event handlers do, but without their flaw: Serf
//! runs its handlers inline, so a slow one holds up its event stream. Here
//! [`Handlers::dispatch`] only queues a job and returns; a fixed number of
//! slots run the jobs in arrival order, each handler in its own process
//! group, killed with that group when it overstays its timeout or at
//! shutdown. This module owns those processes, their output and the counts
//! `status.json` shows.
//!
//! A handler's run ends when it exits. Whatever it left running in its
//! process group is not killed then (a handler may start something on
//! purpose), but it cannot hold the slot: its output is read for a short
//! grace only. The timeout and shutdown kill the whole group; a process
//! that left the group (`setsid`) has chosen to outlive its handler.
//!
//! Safety of the name: an event name is chosen by whoever raises the event,
//! anywhere in the cluster, and becomes a path here. It is checked before the
//! file system is touched ([`is_handler_name`]): a single plain file name in
//! the handlers directory, nothing that walks out of it or hides in it.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::names::is_event_name;
use crate::surface::restrict::Restrictions;

/// Where handlers live unless configured otherwise.
pub(crate) const DEFAULT_DIR: &str = "/etc/serfnode/handlers";

/// Each of a handler's stdout and stderr is kept up to this many bytes (the
/// head of stdout, which is a query's answer; the tail of stderr, where the
/// error usually is); the rest is read and counted, not kept.
pub(crate) const OUTPUT_CAP: usize = 64 * 1024;

/// Output lines logged per stream and run, and bytes logged per line: enough
/// to see what a handler said without letting a chatty one flood the log.
const LOG_LINES: usize = 50;
const LOG_LINE_BYTES: usize = 1024;

/// How much of stderr a failure's warning quotes.
const STDERR_TAIL: usize = 1024;

/// After a handler has ended, how long its output pipes may stay open: a
/// process it left behind (`cmd &`) inherits them and may hold them for
/// ever. Past this the pipes are closed on our side and the slot freed.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// How long a killed handler may take to be reaped before its slot is freed
/// anyway (SIGKILL cannot be ignored, but a process stuck in the kernel only
/// dies when it leaves it).
const REAP_BOUND: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub(crate) struct HandlerConfig {
    pub dir: PathBuf,
    /// Handlers running at once (default 8).
    pub concurrency: usize,
    /// A handler still running after this is killed, with its process group
    /// (default 30 s).
    pub timeout: Duration,
    /// Jobs waiting for a slot beyond this are dropped and logged (default
    /// 1024).
    pub queue: usize,
    /// Applied to every handler process before it execs: in a child, the
    /// application's restrictions (a handler never has more privilege than
    /// the application that may have installed it); none in a parent.
    pub restrict: Restrictions,
}

impl Default for HandlerConfig {
    fn default() -> HandlerConfig {
        HandlerConfig {
            dir: PathBuf::from(DEFAULT_DIR),
            concurrency: 8,
            timeout: Duration::from_secs(30),
            queue: 1024,
            restrict: Restrictions::none(),
        }
    }
}

/// One run of a handler.
#[derive(Debug)]
pub(crate) struct Job {
    /// The handler's file name: the event, member event or query name.
    pub name: String,
    /// How logs name the event, e.g. "user event deploy (ltime 7) from
    /// n1/web".
    pub label: String,
    /// Added to the inherited environment (SERF_EVENT, SERF_USER_EVENT,
    /// SERF_SELF_NAME, ..., computed by the caller).
    pub env: Vec<(String, String)>,
    /// Written to the handler's stdin, which is then closed.
    pub stdin: Vec<u8>,
    /// For queries: receives the outcome when the handler ends. Dropped
    /// unanswered if the job never runs (queue full, shutdown).
    pub respond: Option<oneshot::Sender<Outcome>>,
}

/// How a handler run ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The first [`OUTPUT_CAP`] bytes of its stdout.
    pub stdout: Vec<u8>,
    /// Bytes of stdout past the cap, read and discarded.
    pub stdout_cut: usize,
    /// The last [`OUTPUT_CAP`] bytes of its stderr.
    pub stderr: Vec<u8>,
    /// Bytes of stderr before those, discarded.
    pub stderr_cut: usize,
    /// Its exit code, if it exited.
    pub status: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Killed at the timeout.
    pub timed_out: bool,
    /// Why it did not run or did not finish, when not for one of the above:
    /// it could not be started, or was killed at shutdown.
    pub error: Option<String>,
    /// From start to end (including the wait for its output).
    pub elapsed: Duration,
}

impl Outcome {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// Its stdout as a query response of at most `limit` bytes, marked when
    /// cut (counting what the output cap already discarded).
    pub fn response(self, limit: usize) -> Vec<u8> {
        truncate_with(self.stdout, self.stdout_cut, limit)
    }
}

/// What [`Handlers::dispatch`] did with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dispatch {
    /// No executable regular file by that name: nothing to run.
    NoHandler,
    /// Waiting for (or already in) a slot.
    Queued,
    /// Not run: the queue was full, or the runner has stopped.
    Dropped,
    /// The name cannot be a handler's ([`is_handler_name`]); nothing looked
    /// up.
    Refused,
}

/// Counts since start, as the unit tests read them (the log says each
/// outcome as it happens).
#[cfg(test)]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    /// Jobs that got a slot (including those that then failed to start).
    pub started: u64,
    /// Exited with status 0.
    pub succeeded: u64,
    /// Exited non-zero, killed by a signal, or could not be started.
    pub failed: u64,
    /// Killed at the timeout.
    pub timed_out: u64,
    /// Not run: queue full, runner stopped, or still queued at shutdown.
    pub dropped: u64,
    /// Holding a slot now.
    pub running: usize,
    /// Waiting for a slot now.
    pub queued: usize,
    /// The latest failure, drop or timeout, as the log said it.
    pub last_error: Option<String>,
}

/// Whether `name` may name a handler file. It must be an event name
/// ([`is_event_name`]); the structural rules are checked here again so that
/// this module's safety does not hang on that character set: one path
/// component (no '/'), not hidden or a dot entry (no leading '.'), no NUL,
/// within a file name's 255 bytes.
pub(crate) fn is_handler_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains(['/', '\0'])
        && is_event_name(name)
}

/// Runs handlers; cheap to clone, every clone feeds the same runner.
#[derive(Clone)]
pub struct Handlers {
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    /// Closed once the runner and every job task have ended.
    done: Arc<watch::Sender<()>>,
}

/// What the runner's tasks and [`Handlers`] share.
struct Shared {
    dir: PathBuf,
    timeout: Duration,
    restrict: Restrictions,
    started: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    dropped: AtomicU64,
    running: AtomicUsize,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn error(&self, msg: String) {
        *self.last_error.lock() = Some(msg);
    }
}

impl Handlers {
    /// Starts the runner on the current tokio runtime (panics outside one).
    /// When `shutdown` is cancelled, queued jobs are dropped and handlers
    /// still running are killed with their process groups; [`stopped`]
    /// tells when that is done.
    ///
    /// [`stopped`]: Handlers::stopped
    pub fn start(cfg: HandlerConfig, shutdown: CancellationToken) -> Handlers {
        // An empty directory would make `dir.join(name)` a bare name, which
        // spawning looks up in PATH: anchor it so a handler is always a path.
        let dir = if cfg.dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            cfg.dir
        };
        let shared = Arc::new(Shared {
            dir,
            timeout: cfg.timeout,
            restrict: cfg.restrict,
            started: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            last_error: Mutex::new(None),
        });
        let (jobs, rx) = mpsc::channel(cfg.queue.max(1));
        let (done, alive) = watch::channel(());
        tokio::spawn(run_slots(
            rx,
            Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            shared.clone(),
            shutdown,
            alive,
        ));
        Handlers {
            jobs,
            shared,
            done: Arc::new(done),
        }
    }

    /// [`Handlers::dispatch_with`] for a job already built.
    #[cfg(test)]
    pub fn dispatch(&self, job: Job) -> Dispatch {
        let name = job.name.clone();
        self.dispatch_with(&name, || job)
    }

    /// Queues the job `make` builds if an executable regular file named
    /// `name` is in the handlers directory now (symlinks followed: the
    /// operator put them there). Never blocks beyond that one stat. The job
    /// is built only then: most events of most members have no handler, and
    /// building one renders the event and the local member.
    pub fn dispatch_with(&self, name: &str, make: impl FnOnce() -> Job) -> Dispatch {
        if !is_handler_name(name) {
            tracing::debug!(handler = ?name, "no handler can have this name");
            return Dispatch::Refused;
        }
        let path = self.shared.dir.join(name);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
            Ok(_) => return Dispatch::NoHandler,
            // No such file, or no handlers directory at all: no handler.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Dispatch::NoHandler
            }
            Err(e) => {
                tracing::warn!("look up handler {}: {e}", path.display());
                return Dispatch::NoHandler;
            }
        }
        let job = make();
        debug_assert_eq!(job.name, name, "the job is for the handler looked up");
        let label = job.label.clone();
        let why = match self.jobs.try_send(job) {
            Ok(()) => {
                tracing::debug!(handler = %name, event = %label, "handler queued");
                return Dispatch::Queued;
            }
            Err(mpsc::error::TrySendError::Full(_)) => "queue full",
            Err(mpsc::error::TrySendError::Closed(_)) => "runner stopped",
        };
        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        let msg = format!("handler {name} for {label} dropped: {why}");
        tracing::warn!("{msg}");
        self.shared.error(msg);
        Dispatch::Dropped
    }

    #[cfg(test)]
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        Stats {
            started: s.started.load(Ordering::Relaxed),
            succeeded: s.succeeded.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            timed_out: s.timed_out.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            running: s.running.load(Ordering::Relaxed),
            queued: self.jobs.max_capacity() - self.jobs.capacity(),
            last_error: s.last_error.lock().clone(),
        }
    }

    /// Resolves once the runner has stopped (after shutdown) and every job
    /// has ended, handlers killed and reaped.
    pub async fn stopped(&self) {
        self.done.closed().await;
    }
}

/// Takes jobs in arrival order, each as soon as a slot is free. A slot is
/// taken before a job is, so the channel holds exactly the jobs waiting:
/// its capacity is the queue bound.
async fn run_slots(
    mut jobs: mpsc::Receiver<Job>,
    slots: Arc<Semaphore>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    alive: watch::Receiver<()>,
) {
    loop {
        let slot = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break, // never closed
            },
        };
        let job = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            j = jobs.recv() => match j {
                Some(j) => j,
                None => break, // every Handlers dropped
            },
        };
        shared.started.fetch_add(1, Ordering::Relaxed);
        shared.running.fetch_add(1, Ordering::Relaxed);
        let (shared, shutdown, alive) = (shared.clone(), shutdown.clone(), alive.clone());
        tokio::spawn(async move {
            let _alive = alive;
            let _slot = slot;
            let respond = job_outcome(job, &shared, &shutdown).await;
            shared.running.fetch_sub(1, Ordering::Relaxed);
            if let Some((tx, outcome)) = respond {
                let _ = tx.send(outcome);
            }
        });
    }
    jobs.close();
    let mut dropped = 0;
    while jobs.try_recv().is_ok() {
        dropped += 1;
    }
    if dropped > 0 {
        shared.dropped.fetch_add(dropped, Ordering::Relaxed);
        tracing::info!(dropped, "handler jobs still queued at shutdown dropped");
    }
}

/// Runs one job, logs and counts how it ended; returns the outcome with
/// whoever waits for it.
async fn job_outcome(
    job: Job,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Option<(oneshot::Sender<Outcome>, Outcome)> {
    let Job {
        name,
        label,
        env,
        stdin,
        respond,
    } = job;
    let outcome = run_one(&name, &label, env, stdin, shared, shutdown).await;
    let what = format!("handler {name} for {label}");
    if outcome.success() {
        shared.succeeded.fetch_add(1, Ordering::Relaxed);
        tracing::info!(handler = %name, event = %label, elapsed = ?outcome.elapsed, "handler succeeded");
    } else if outcome.timed_out {
        shared.timed_out.fetch_add(1, Ordering::Relaxed);
        let msg = format!(
            "{what} timed out after {:?}: killed with its process group",
            shared.timeout
        );
        tracing::warn!("{msg}");
        shared.error(msg);
    } else if let Some(e) = &outcome.error {
        // Killed at shutdown or never started: not the handler's verdict.
        if shutdown.is_cancelled() {
            tracing::info!("{what}: {e}");
        } else {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            let msg = format!("{what}: {e}");
            tracing::warn!("{msg}");
            shared.error(msg);
        }
    } else {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        let how = match (outcome.status, outcome.signal) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "ended without a status".to_owned(),
        };
        let tail = stderr_tail(&outcome.stderr);
        tracing::warn!(stderr = %tail, "{what} failed: {how}");
        shared.error(format!("{what} failed: {how}"));
    }
    respond.map(|tx| (tx, outcome))
}

/// How the wait for a handler ended.
enum End {
    Exited(io::Result<ExitStatus>),
    TimedOut,
    Shutdown,
}

async fn run_one(
    name: &str,
    label: &str,
    env: Vec<(String, String)>,
    stdin: Vec<u8>,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Outcome {
    let path = shared.dir.join(name);
    let run = Run {
        program: path.as_os_str(),
        args: &[],
        name,
        label,
        env,
        stdin,
        timeout: shared.timeout,
        restrict: &shared.restrict,
    };
    run_process(run, shutdown).await
}

/// One process to run as a handler runs: in its own process group, with
/// the restrictions, killed with its group at the timeout or at shutdown,
/// its output captured and logged (the templates' commands run so too).
pub(crate) struct Run<'a> {
    /// A path, or a name looked up in PATH.
    pub program: &'a std::ffi::OsStr,
    pub args: &'a [String],
    /// How logs name it (`handler = ...`) and what it ran for.
    pub name: &'a str,
    pub label: &'a str,
    pub env: Vec<(String, String)>,
    pub stdin: Vec<u8>,
    pub timeout: Duration,
    pub restrict: &'a Restrictions,
}

/// Runs `run` to its end (see [`Run`]).
pub(crate) async fn run_process(run: Run<'_>, shutdown: &CancellationToken) -> Outcome {
    let Run {
        program,
        args,
        name,
        label,
        env,
        stdin,
        timeout,
        restrict,
    } = run;
    let begun = Instant::now();
    let path = std::path::Path::new(program);
    let mut outcome = Outcome::default();
    if shutdown.is_cancelled() {
        outcome.error = Some("not started: shutting down".into());
        return outcome;
    }
    let mut cmd = Command::new(program);
    // A child wrapper's token proves its identity to the parent; handlers
    // have no use for it.
    cmd.args(args)
        .env_remove(crate::surface::restrict::TOKEN_ENV)
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so the timeout kills whatever it started too.
        .process_group(0);
    restrict.on_tokio(&mut cmd);
    let mut child = match spawn(&mut cmd).await {
        Ok(c) => c,
        Err(e) => {
            outcome.error = Some(format!("start {}: {e}", path.display()));
            outcome.elapsed = begun.elapsed();
            return outcome;
        }
    };
    // Declared after `child`, so dropped before it: should this task be
    // dropped mid-run (runtime shutdown), the group dies with it.
    let mut group = match child.id().and_then(|id| GroupKill::new(id as libc::pid_t)) {
        Some(g) => g,
        None => {
            // Cannot happen for a child not yet waited for; never signal a
            // made-up group if it does.
            outcome.error = Some("started without a process id".into());
            return outcome;
        }
    };
    tracing::debug!(handler = %name, event = %label, pid = group.pgid, "handler started");

    let writer = child.stdin.take().map(|mut pipe| {
        let name = name.to_owned();
        tokio::spawn(async move {
            // A handler need not read its stdin: EPIPE is no error.
            if let Err(e) = pipe.write_all(&stdin).await {
                if e.kind() != io::ErrorKind::BrokenPipe {
                    tracing::debug!(handler = %name, "write handler stdin: {e}");
                }
            }
        })
    });
    let stop_reading = CancellationToken::new();
    let out = child.stdout.take().map(|pipe| {
        let lines = Lines::new(name, label, "stdout");
        tokio::spawn(capture(pipe, Keep::Head, lines, stop_reading.clone()))
    });
    let err = child.stderr.take().map(|pipe| {
        let lines = Lines::new(name, label, "stderr");
        tokio::spawn(capture(pipe, Keep::Tail, lines, stop_reading.clone()))
    });

    let end = tokio::select! {
        s = child.wait() => End::Exited(s),
        _ = tokio::time::sleep(timeout) => End::TimedOut,
        _ = shutdown.cancelled() => End::Shutdown,
    };
    let status = match end {
        End::Exited(s) => s,
        End::TimedOut | End::Shutdown => {
            group.kill();
            outcome.timed_out = matches!(end, End::TimedOut);
            if matches!(end, End::Shutdown) {
                outcome.error = Some("killed at shutdown".into());
            }
            match tokio::time::timeout(REAP_BOUND, child.wait()).await {
                Ok(s) => s,
                Err(_) => Err(io::Error::other(format!(
                    "still not dead {REAP_BOUND:?} after SIGKILL"
                ))),
            }
        }
    };
    match status {
        Ok(s) => {
            // Reaped: from here the pid, and so the group id, may be reused.
            group.disarm();
            outcome.status = s.code();
            outcome.signal = s.signal();
        }
        Err(e) => {
            // Left armed: dropping it kills the group once more, and the
            // child is reaped by tokio in the background.
            if outcome.error.is_none() && !outcome.timed_out {
                outcome.error = Some(format!("wait for {}: {e}", path.display()));
            }
        }
    }

    // Whatever it left running may hold the pipes open: wait only a little.
    let mut readers = std::pin::pin!(async {
        let out = match out {
            Some(t) => t.await.unwrap_or_default(),
            None => Capture::default(),
        };
        let err = match err {
            Some(t) => t.await.unwrap_or_default(),
            None => Capture::default(),
        };
        (out, err)
    });
    let (out, err) = match tokio::time::timeout(OUTPUT_GRACE, &mut readers).await {
        Ok(r) => r,
        Err(_) => {
            tracing::debug!(handler = %name, event = %label, "output still open after the handler ended; closed");
            stop_reading.cancel();
            readers.await
        }
    };
    if let Some(w) = writer {
        w.abort();
    }
    outcome.stdout = out.buf;
    outcome.stdout_cut = out.cut;
    outcome.stderr = err.buf;
    outcome.stderr_cut = err.cut;
    for (stream, cut) in [("stdout", out.cut), ("stderr", err.cut)] {
        if cut > 0 {
            tracing::info!(handler = %name, event = %label, "handler {stream} over {OUTPUT_CAP} bytes: {cut} bytes not kept");
        }
    }
    OWN.write().remove(&group.pgid);
    outcome.elapsed = begun.elapsed();
    outcome
}

/// Spawns, retrying briefly on ETXTBSY: a handler file still open for
/// writing somewhere (being installed, or inherited for an instant by a
/// process forked elsewhere in this daemon) cannot be executed yet.
async fn spawn(cmd: &mut Command) -> io::Result<Child> {
    let mut tries = 0;
    loop {
        let res = {
            let mut own = OWN.write();
            let res = cmd.spawn();
            if let Some(pid) = res.as_ref().ok().and_then(Child::id) {
                own.insert(pid as libc::pid_t);
            }
            res
        };
        match res {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 10 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20 * tries)).await;
            }
            res => return res,
        }
    }
}

/// Handler processes this process started and has not reaped. When the
/// process is also PID 1 (the child wrapper), its reaper must leave these to
/// tokio, or their exit status is lost: see [`is_handler_pid`].
static OWN: std::sync::LazyLock<parking_lot::RwLock<std::collections::HashSet<libc::pid_t>>> =
    std::sync::LazyLock::new(Default::default);

/// Whether `pid` is a handler this process started and will reap itself.
/// A spawn registers its pid before anyone can see it, so a reaper that
/// asks about a zombie it found gets a true answer.
pub(crate) fn is_handler_pid(pid: libc::pid_t) -> bool {
    OWN.read().contains(&pid)
}

/// SIGKILL for a handler's process group. Armed only while the leader is
/// unreaped: until then its pid, which is the group's id, cannot belong to
/// any other process or group, so the signal cannot reach a stranger.
struct GroupKill {
    pgid: libc::pid_t,
    armed: bool,
}

impl GroupKill {
    fn new(pgid: libc::pid_t) -> Option<GroupKill> {
        // kill(-0) would be our own group, kill(-1) everything.
        (pgid > 1).then_some(GroupKill { pgid, armed: true })
    }

    fn kill(&self) {
        if self.armed {
            // SAFETY: kill(2) on the process group of our unreaped child
            // (see above); pgid > 1.
            unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Which part of an over-long stream is kept.
#[derive(Clone, Copy)]
enum Keep {
    Head,
    Tail,
}

/// A captured stream: at most [`OUTPUT_CAP`] bytes, and how many more there
/// were.
#[derive(Default)]
struct Capture {
    buf: Vec<u8>,
    cut: usize,
}

impl Capture {
    fn push(&mut self, data: &[u8], keep: Keep) {
        match keep {
            Keep::Head => {
                let room = OUTPUT_CAP.saturating_sub(self.buf.len()).min(data.len());
                self.buf.extend_from_slice(&data[..room]);
                self.cut += data.len() - room;
            }
            Keep::Tail => {
                self.buf.extend_from_slice(data);
                if self.buf.len() > OUTPUT_CAP {
                    let excess = self.buf.len() - OUTPUT_CAP;
                    self.buf.drain(..excess);
                    self.cut += excess;
                }
            }
        }
    }
}

/// Reads a stream to its end (or until told to stop), keeping part of it and
/// logging its lines.
async fn capture(
    mut pipe: impl AsyncRead + Unpin,
    keep: Keep,
    mut lines: Lines,
    stop: CancellationToken,
) -> Capture {
    let mut cap = Capture::default();
    let mut chunk = vec![0; 8192];
    loop {
        let n = tokio::select! {
            biased;
            r = pipe.read(&mut chunk) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = stop.cancelled() => break,
        };
        cap.push(&chunk[..n], keep);
        lines.feed(&chunk[..n]);
    }
    lines.finish();
    cap
}

/// Logs a stream's lines at info, [`LOG_LINES`] at most, each cut at
/// [`LOG_LINE_BYTES`].
struct Lines {
    handler: String,
    event: String,
    stream: &'static str,
    left: usize,
    /// Told that lines past the budget are not logged.
    told: bool,
    line: Vec<u8>,
    long: bool,
}

impl Lines {
    fn new(handler: &str, event: &str, stream: &'static str) -> Lines {
        Lines {
            handler: handler.to_owned(),
            event: event.to_owned(),
            stream,
            left: LOG_LINES,
            told: false,
            line: Vec::new(),
            long: false,
        }
    }

    fn feed(&mut self, data: &[u8]) {
        for part in data.split_inclusive(|&b| b == b'\n') {
            let (body, ends) = match part.split_last() {
                Some((b'\n', body)) => (body, true),
                _ => (part, false),
            };
            let room = LOG_LINE_BYTES.saturating_sub(self.line.len());
            if body.len() > room {
                self.long = true;
            }
            self.line.extend_from_slice(&body[..room.min(body.len())]);
            if ends {
                self.emit();
            }
        }
    }

    fn finish(&mut self) {
        if !self.line.is_empty() || self.long {
            self.emit();
        }
    }

    fn emit(&mut self) {
        if self.left > 0 {
            self.left -= 1;
            let text = String::from_utf8_lossy(&self.line);
            let more = if self.long { "…" } else { "" };
            tracing::info!(
                handler = %self.handler,
                event = %self.event,
                stream = self.stream,
                "{}{more}",
                text.trim_end_matches('\r')
            );
        } else if !self.told {
            self.told = true;
            tracing::info!(
                handler = %self.handler,
                event = %self.event,
                stream = self.stream,
                "further {} lines not logged",
                self.stream
            );
        }
        self.line.clear();
        self.long = false;
    }
}

/// The last lines of stderr, up to [`STDERR_TAIL`] bytes, for a warning.
fn stderr_tail(stderr: &[u8]) -> String {
    let from = stderr.len().saturating_sub(STDERR_TAIL);
    let text = String::from_utf8_lossy(&stderr[from..]);
    text.trim().to_owned()
}

/// Truncates a query response to `limit` bytes, ending it with a marker
/// saying how much was cut when it is, e.g. `"\n…[truncated 1234 bytes]"`.
/// Cuts at a UTF-8 character boundary where the output is text. A limit
/// too small for the marker gets the output's first `limit` bytes.
#[cfg(test)]
fn truncate_response(out: Vec<u8>, limit: usize) -> Vec<u8> {
    truncate_with(out, 0, limit)
}

/// [`truncate_response`] of output of which `already` more bytes were
/// discarded before.
fn truncate_with(mut out: Vec<u8>, already: usize, limit: usize) -> Vec<u8> {
    let total = out.len() + already;
    if total <= limit {
        return out;
    }
    let marker = |kept: usize| format!("\n…[truncated {} bytes]", total - kept);
    if marker(0).len() > limit {
        out.truncate(char_floor(&out, limit));
        return out;
    }
    // The marker's length depends on the count it shows: shrink what is
    // kept until both fit.
    let mut kept = limit.min(out.len());
    loop {
        kept = char_floor(&out, kept);
        let m = marker(kept);
        if kept + m.len() <= limit {
            out.truncate(kept);
            out.extend_from_slice(m.as_bytes());
            return out;
        }
        kept = limit - m.len();
    }
}

/// The largest index ≤ `at` that does not split a UTF-8 sequence; `at`
/// itself for output that is not UTF-8 there.
fn char_floor(bytes: &[u8], at: usize) -> usize {
    if at >= bytes.len() {
        return bytes.len();
    }
    // A UTF-8 character is at most 4 bytes: its first byte is within 3.
    (at.saturating_sub(3)..=at)
        .rev()
        .find(|&i| bytes[i] & 0xC0 != 0x80)
        .unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn config(dir: &Path) -> HandlerConfig {
        HandlerConfig {
            dir: dir.to_owned(),
            concurrency: 4,
            timeout: Duration::from_secs(60),
            queue: 16,
            restrict: Restrictions::none(),
        }
    }

    /// A job whose handler sees `D` (a scratch directory) in its environment.
    fn job(name: &str, d: &Path) -> Job {
        Job {
            name: name.into(),
            label: format!("test event {name}"),
            env: vec![("D".into(), d.display().to_string())],
            stdin: Vec::new(),
            respond: None,
        }
    }

    fn query(name: &str, d: &Path) -> (Job, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let mut j = job(name, d);
        j.respond = Some(tx);
        (j, rx)
    }

    /// The outcome, waiting generously: only "eventually" is asserted.
    async fn outcome(rx: oneshot::Receiver<Outcome>) -> Outcome {
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("the handler ended within 30 s")
            .expect("the outcome was sent")
    }

    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(Instant::now() < deadline, "not within 30 s: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Gone, or a zombie waiting for an init that may not reap in a test
    /// sandbox: either way no longer running.
    fn dead(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => {
                let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
                matches!(state, Some("Z" | "X"))
            }
        }
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_the_matching_handler_with_its_stdin_and_environment() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        script(
            d,
            "deploy",
            r#"cat > "$D/stdin"
printf '%s|%s|%s\n' "$SERF_EVENT" "$SERF_USER_EVENT" "${PATH:+inherited}" > "$D/env"
echo done"#,
        );
        let h = Handlers::start(config(d), CancellationToken::new());
        let (mut j, rx) = query("deploy", d);
        j.env.push(("SERF_EVENT".into(), "user".into()));
        j.env.push(("SERF_USER_EVENT".into(), "deploy".into()));
        j.stdin = br#"{"v":2}"#.to_vec();
        assert_eq!(h.dispatch(j), Dispatch::Queued);
        let out = outcome(rx).await;
        assert!(out.success(), "{out:?}");
        assert_eq!(out.stdout, b"done\n");
        assert_eq!(read(&d.join("stdin")), r#"{"v":2}"#);
        assert_eq!(read(&d.join("env")), "user|deploy|inherited\n");
        eventually("counted", || h.stats().succeeded == 1).await;
        let s = h.stats();
        assert_eq!((s.started, s.failed, s.running), (1, 0, 0));
    }

    #[tokio::test]
    async fn only_an_executable_regular_file_is_a_handler() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::write(d.join("plain"), "#!/bin/sh\ntouch \"$D/ran\"\n").unwrap();
        std::fs::create_dir(d.join("adir")).unwrap();
        let h = Handlers::start(config(d), CancellationToken::new());
        assert_eq!(h.dispatch(job("missing", d)), Dispatch::NoHandler);
        assert_eq!(h.dispatch(job("plain", d)), Dispatch::NoHandler);
        assert_eq!(h.dispatch(job("adir", d)), Dispatch::NoHandler);

        let absent = Handlers::start(config(&d.join("nope")), CancellationToken::new());
        assert_eq!(absent.dispatch(job("plain", d)), Dispatch::NoHandler);

        // A handler added later is picked up; symlinks are followed.
        let elsewhere = tempfile::tempdir().unwrap();
        let target = script(elsewhere.path(), "real", "echo linked");
        std::os::unix::fs::symlink(target, d.join("linked")).unwrap();
        let (j, rx) = query("linked", d);
        assert_eq!(h.dispatch(j), Dispatch::Queued);
        assert_eq!(outcome(rx).await.stdout, b"linked\n");
        assert!(!d.join("ran").exists());
        assert_eq!(h.stats().started, 1);
    }

    #[tokio::test]
    async fn hostile_names_are_refused_and_nothing_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let dir = root.join("handlers");
        let marks = root.join("marks");
        std::fs::create_dir_all(dir.join("a")).unwrap();
        std::fs::create_dir(&marks).unwrap();
        // Each of these would run if its name got through.
        script(root, "x", r#"touch "$D/x""#);
        script(&dir.join("a"), "b", r#"touch "$D/a-b""#);
        script(&dir, ".hidden", r#"touch "$D/hidden""#);
        script(&dir, "ok", r#"touch "$D/ok""#);
        let h = Handlers::start(config(&dir), CancellationToken::new());
        let long = "a".repeat(256);
        for name in [
            "../x",
            "a/b",
            ".hidden",
            "",
            "x\0y",
            ".",
            "..",
            "/bin/true",
            &long,
        ] {
            assert_eq!(h.dispatch(job(name, &marks)), Dispatch::Refused, "{name:?}");
        }
        // The runner is alive and FIFO: once this has run, nothing else will.
        let (j, rx) = query("ok", &marks);
        assert_eq!(h.dispatch(j), Dispatch::Queued);
        assert!(outcome(rx).await.success());
        let ran: Vec<_> = std::fs::read_dir(&marks)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(ran, ["ok"]);
        assert_eq!(h.stats().started, 1);
    }

    #[test]
    fn handler_names() {
        for ok in [
            "deploy",
            "member-join",
            "container",
            "a.b",
            &"e".repeat(128),
        ] {
            assert!(is_handler_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "../x", "a/b", ".hidden", "x\0y", "a b", "é"] {
            assert!(!is_handler_name(bad), "{bad:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_handler_is_killed_at_the_timeout_with_its_group() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        script(d, "stuck", r#"sleep 1000 & echo $! > "$D/bg"; sleep 1000"#);
        script(d, "quick", "echo quick");
        // One slot: the quick job runs only once the stuck one's is freed.
        let h = Handlers::start(
            HandlerConfig {
                concurrency: 1,
                timeout: Duration::from_millis(500),
                ..config(d)
            },
            CancellationToken::new(),
        );
        let (stuck, stuck_rx) = query("stuck", d);
        let (quick, quick_rx) = query("quick", d);
        assert_eq!(h.dispatch(stuck), Dispatch::Queued);
        assert_eq!(h.dispatch(quick), Dispatch::Queued);
        let out = outcome(stuck_rx).await;
        assert!(out.timed_out, "{out:?}");
        assert_eq!((out.status, out.signal), (None, Some(libc::SIGKILL)));
        assert!(outcome(quick_rx).await.success());
        let bg = read(&d.join("bg"));
        assert!(
            !bg.trim().is_empty(),
            "the stuck handler wrote its child's pid"
        );
        eventually("the handler's child is killed too", || dead(bg.trim())).await;
        eventually("counted", || h.stats().succeeded == 1).await;
        let s = h.stats();
        assert_eq!((s.timed_out, s.failed, s.running), (1, 0, 0));
        let err = s.last_error.unwrap();
        assert!(
            err.contains("handler stuck for test event stuck timed out after 500ms"),
            "{err}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_handler_holds_one_slot_and_dies_at_shutdown() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        script(d, "stuck", r#"sleep 1000 & echo $! > "$D/bg"; sleep 1000"#);
        script(d, "quick", "echo quick");
        let shutdown = CancellationToken::new();
        let h = Handlers::start(
            HandlerConfig {
                concurrency: 2,
                ..config(d)
            },
            shutdown.clone(),
        );
        let (stuck, mut stuck_rx) = query("stuck", d);
        assert_eq!(h.dispatch(stuck), Dispatch::Queued);
        let mut quick = Vec::new();
        for _ in 0..5 {
            let (j, rx) = query("quick", d);
            assert_eq!(h.dispatch(j), Dispatch::Queued);
            quick.push(rx);
        }
        for rx in quick {
            assert_eq!(outcome(rx).await.stdout, b"quick\n");
        }
        // Its timeout is a minute away: it is still running.
        assert!(stuck_rx.try_recv().is_err());
        assert_eq!(h.stats().running, 1);
        eventually("the stuck handler started its child", || {
            !read(&d.join("bg")).trim().is_empty()
        })
        .await;

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), h.stopped())
            .await
            .expect("stopped within 30 s");
        let out = outcome(stuck_rx).await;
        assert_eq!(out.error.as_deref(), Some("killed at shutdown"));
        let bg = read(&d.join("bg"));
        eventually("the handler's child is killed too", || dead(bg.trim())).await;
        let s = h.stats();
        assert_eq!(
            (s.succeeded, s.failed, s.timed_out, s.running),
            (5, 0, 0, 0)
        );
        assert_eq!(h.dispatch(job("quick", d)), Dispatch::Dropped);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_more_than_the_concurrency_run_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let marks = tmp.path().join("marks");
        std::fs::create_dir(&marks).unwrap();
        // Each run counts the runs marked when it has marked itself.
        script(
            tmp.path(),
            "count",
            r#"touch "$D/run.$$"
ls "$D" | grep -c '^run\.' >> "$D/../counts"
sleep 0.2
rm "$D/run.$$""#,
        );
        let h = Handlers::start(
            HandlerConfig {
                concurrency: 2,
                ..config(tmp.path())
            },
            CancellationToken::new(),
        );
        let mut rxs = Vec::new();
        for _ in 0..8 {
            let (j, rx) = query("count", &marks);
            assert_eq!(h.dispatch(j), Dispatch::Queued);
            rxs.push(rx);
        }
        for rx in rxs {
            assert!(outcome(rx).await.success());
        }
        let counts: Vec<u32> = read(&tmp.path().join("counts"))
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        assert_eq!(counts.len(), 8);
        assert!(counts.iter().all(|&n| (1..=2).contains(&n)), "{counts:?}");
    }

    #[tokio::test]
    async fn a_failure_is_counted_with_its_stderr() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        script(d, "broken", "echo partial; echo 'it broke' >&2; exit 3");
        // Executable, but no `#!`: exec fails (ENOEXEC), no shell guesses.
        std::fs::write(d.join("bare"), "echo hi\n").unwrap();
        std::fs::set_permissions(d.join("bare"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let h = Handlers::start(config(d), CancellationToken::new());
        let (j, rx) = query("broken", d);
        assert_eq!(h.dispatch(j), Dispatch::Queued);
        let out = outcome(rx).await;
        assert_eq!(out.status, Some(3));
        assert_eq!(out.stdout, b"partial\n");
        assert_eq!(out.stderr, b"it broke\n");
        eventually("counted", || h.stats().failed == 1).await;
        let err = h.stats().last_error.unwrap();
        assert_eq!(
            err,
            "handler broken for test event broken failed: exit status 3"
        );

        let (j, rx) = query("bare", d);
        assert_eq!(h.dispatch(j), Dispatch::Queued);
        let out = outcome(rx).await;
        let err = out.error.unwrap_or_default();
        assert!(err.starts_with("start ") && err.contains("bare"), "{err}");
        assert_eq!((out.status, out.stdout.len()), (None, 0));
        eventually("counted", || h.stats().failed == 2).await;
        let err = h.stats().last_error.unwrap();
        assert!(
            err.starts_with("handler bare for test event bare: start "),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unread_stdin_and_lingering_children_do_not_hold_a_slot() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        script(d, "deaf", "exit 0");
        // The backgrounded sleep keeps the output pipes open after the
        // handler exits.
        script(d, "linger", r#"sleep 1000 & echo $$ > "$D/pg"; echo bye"#);
        let h = Handlers::start(config(d), CancellationToken::new());
        let (mut j, rx) = query("deaf", d);
        j.stdin = vec![b'x'; 1 << 20];
        assert_eq!(h.dispatch(j), Dispatch::Queued);
        assert!(outcome(rx).await.success());

        let (j, rx) = query("linger", d);
        assert_eq!(h.dispatch(j), Dispatch::Queued);
        let out = outcome(rx).await;
        let pg: libc::pid_t = read(&d.join("pg")).trim().parse().unwrap();
        // SAFETY: kill(2) on the group the lingering sleep is still in.
        unsafe { libc::kill(-pg, libc::SIGKILL) };
        assert!(out.success(), "{out:?}");
        assert_eq!(out.stdout, b"bye\n");
    }

    /// The restrictions reach every handler process (as root, which the
    /// tests are: the switch to another user needs it).
    #[tokio::test]
    async fn handlers_run_with_the_restrictions_given() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        script(d, "who", "id -u; id -G; grep NoNewPrivs /proc/self/status");
        let h = Handlers::start(
            HandlerConfig {
                restrict: Restrictions {
                    confine: true,
                    ids: Some(crate::surface::restrict::Ids {
                        uid: 4242,
                        gid: 4343,
                        groups: vec![4343, 4444],
                    }),
                },
                ..config(d)
            },
            CancellationToken::new(),
        );
        let (j, rx) = query("who", d);
        assert_eq!(h.dispatch(j), Dispatch::Queued);
        let out = outcome(rx).await;
        assert!(out.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "4242\n4343 4444\nNoNewPrivs:\t1\n"
        );
    }

    #[tokio::test]
    async fn output_is_capped() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        script(
            d,
            "loud",
            "head -c 200000 /dev/zero | tr '\\0' a
head -c 100000 /dev/zero | tr '\\0' b >&2
echo end >&2",
        );
        let h = Handlers::start(config(d), CancellationToken::new());
        let (j, rx) = query("loud", d);
        assert_eq!(h.dispatch(j), Dispatch::Queued);
        let out = outcome(rx).await;
        assert!(out.success());
        assert_eq!(out.stdout.len(), OUTPUT_CAP);
        assert_eq!(out.stdout_cut, 200_000 - OUTPUT_CAP);
        assert_eq!(out.stderr.len(), OUTPUT_CAP);
        assert_eq!(out.stderr_cut, 100_004 - OUTPUT_CAP);
        assert!(out.stderr.ends_with(b"bbbend\n"));
        // The response counts what the cap discarded too.
        let resp = out.response(1024);
        let text = String::from_utf8(resp).unwrap();
        assert!(text.len() <= 1024);
        let (kept, marker) = text.split_once('\n').unwrap();
        assert!(kept.bytes().all(|b| b == b'a'));
        assert_eq!(
            marker,
            format!("…[truncated {} bytes]", 200_000 - kept.len())
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        script(d, "stuck", "sleep 1000");
        script(d, "quick", "echo quick");
        let shutdown = CancellationToken::new();
        let h = Handlers::start(
            HandlerConfig {
                concurrency: 1,
                queue: 2,
                ..config(d)
            },
            shutdown.clone(),
        );
        assert_eq!(h.dispatch(job("stuck", d)), Dispatch::Queued);
        eventually("the stuck job holds the only slot", || {
            let s = h.stats();
            s.running == 1 && s.queued == 0
        })
        .await;
        let (a, a_rx) = query("quick", d);
        let (b, _b_rx) = query("quick", d);
        let (c, c_rx) = query("quick", d);
        assert_eq!(h.dispatch(a), Dispatch::Queued);
        assert_eq!(h.dispatch(b), Dispatch::Queued);
        assert_eq!(h.dispatch(c), Dispatch::Dropped);
        // A dropped query's caller learns it will get no answer.
        assert!(c_rx.await.is_err());
        let s = h.stats();
        assert_eq!((s.dropped, s.queued, s.running, s.started), (1, 2, 1, 1));
        assert_eq!(
            s.last_error.as_deref(),
            Some("handler quick for test event quick dropped: queue full")
        );

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), h.stopped())
            .await
            .expect("stopped within 30 s");
        // Queued jobs are dropped at shutdown, never run.
        assert!(a_rx.await.is_err());
        assert_eq!(h.stats().started, 1);
    }

    #[test]
    fn truncate_response_keeps_within_the_limit_with_a_marker() {
        assert_eq!(truncate_response(b"short".to_vec(), 5), b"short");
        assert_eq!(truncate_response(Vec::new(), 0), b"");

        let out = truncate_response(vec![b'a'; 10_000], 1024);
        assert!(out.len() <= 1024);
        let text = String::from_utf8(out).unwrap();
        let (kept, marker) = text.split_once('\n').unwrap();
        assert_eq!(
            marker,
            format!("…[truncated {} bytes]", 10_000 - kept.len())
        );
        assert!(kept.len() > 900, "keeps as much as fits");

        // Every limit, around the marker's own length and the digits' edges.
        for len in [30, 99, 100, 1_000, 1_003, 5_000] {
            for limit in 0..len + 2 {
                let out = truncate_response(vec![b'z'; len], limit);
                assert!(out.len() <= limit, "len {len} limit {limit}");
                if len <= limit {
                    assert_eq!(out.len(), len);
                } else if out.contains(&b'\n') {
                    let kept = out.iter().take_while(|&&b| b == b'z').count();
                    let marker = format!("\n…[truncated {} bytes]", len - kept);
                    assert_eq!(&out[kept..], marker.as_bytes(), "len {len} limit {limit}");
                } else {
                    // Too small for the marker: a plain cut.
                    let marker = format!("\n…[truncated {len} bytes]");
                    assert!(limit < marker.len(), "len {len} limit {limit}");
                    assert_eq!(out.len(), limit);
                }
            }
        }

        // Text is not cut inside a character.
        let text = "é".repeat(1000);
        for limit in 30..60 {
            let out = truncate_response(text.clone().into_bytes(), limit);
            assert!(out.len() <= limit);
            assert!(String::from_utf8(out).is_ok(), "limit {limit}");
        }
    }
}
