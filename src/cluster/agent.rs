//! The supervised `serf agent` process: started with this node's name,
//! addresses and tags, restarted with backoff whenever it dies, and stopped
//! with SIGINT (Serf's graceful leave) at shutdown. Its log lines are
//! forwarded to ours under the `serf` target, and the records it says it
//! dropped for a slow stream subscriber are reported (see [`Drops`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::{sleep_or_shutdown, Backoff};
use crate::cluster::rpc::peer::AgentPid;

pub(crate) const DEFAULT_RPC_PORT: u16 = 7373;

/// Where a parent keeps its agent's RPC key: not in the share, so children
/// (who share the parent's loopback) cannot use the RPC port.
pub(crate) const DEFAULT_RPC_AUTH_FILE: &str = "/var/lib/serfnode/rpc-auth";

#[derive(Debug, Clone)]
pub(crate) struct AgentConfig {
    /// The `serf` executable.
    pub serf: PathBuf,
    pub node: String,
    pub bind: SocketAddr,
    pub advertise: SocketAddr,
    pub rpc: SocketAddr,
    pub tags: BTreeMap<String, String>,
    /// Serf timing profile (lan, wan, local).
    pub profile: String,
    /// Serf's snapshot file, if any.
    pub snapshot: Option<PathBuf>,
    /// Extra agent configuration (rpc_auth, encrypt_key, keyring_file)
    /// passed as a file so no secret shows in process listings.
    pub config_file: Option<PathBuf>,
    /// A descriptor the agent inherits (the config file, in memory).
    pub inherit_fd: Option<i32>,
    /// How long the graceful leave may take at shutdown before SIGKILL.
    pub leave_timeout: Duration,
    /// Where the agent's reports of dropped stream records go.
    pub drops: Option<Drops>,
    /// Set to the agent's pid while it runs: the RPC client talks only to
    /// that process (see [`crate::cluster::rpc::peer`]).
    pub pid: AgentPid,
}

/// The RPC clients (their address, as the agent sees it) the agent said it
/// dropped a stream record for. The agent gives each subscription 512 slots
/// and drops what does not fit, logging `[WARN] agent.ipc: Dropping event to
/// ipc.client: ADDR` right after the event's `Received event: …` line; drops
/// of queries (not journaled) are not reported. Bounded: a burst of drops
/// needs only one report to be noticed.
pub(crate) type Drops = mpsc::Sender<SocketAddr>;

/// The agent's log line for a dropped stream record.
const DROPPED: &str = "agent.ipc: Dropping event to ipc.client: ";
/// The agent's log line for each event it handles.
const RECEIVED: &str = "agent: Received event: ";
/// The agent's log pipes: large, so that a daemon briefly too busy to read
/// them never stalls the agent's event loop, which logs every event before
/// handing it on.
const LOG_PIPE: libc::c_int = 1 << 20;

impl AgentConfig {
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "agent".to_owned(),
            format!("-node={}", self.node),
            format!("-bind={}", self.bind),
            format!("-advertise={}", self.advertise),
            format!("-rpc-addr={}", self.rpc),
            format!("-profile={}", self.profile),
            "-log-level=info".to_owned(),
        ];
        for (k, v) in &self.tags {
            args.push("-tag".to_owned());
            args.push(format!("{k}={v}"));
        }
        if let Some(file) = &self.snapshot {
            args.push(format!("-snapshot={}", file.display()));
        }
        if let Some(file) = &self.config_file {
            args.push(format!("-config-file={}", file.display()));
        }
        args
    }
}

/// Reads the RPC key from `path`, creating it (mode 0600, a random key) if
/// it does not exist.
pub fn rpc_auth(path: &Path) -> Result<String, AgentError> {
    let io = |what: &str, source| AgentError::Auth {
        path: path.display().to_string(),
        what: what.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("create its directory", e))?;
    }
    Ok(match std::fs::read_to_string(path) {
        Ok(k) if !k.trim().is_empty() => k.trim().to_owned(),
        Ok(_) | Err(_) => {
            let bytes = random_bytes::<24>().map_err(|e| io("read /dev/urandom for", e))?;
            let key = hex(&bytes);
            write_private(path, key.as_bytes()).map_err(|e| io("write", e))?;
            key
        }
    })
}

fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The agent's config file, holding what must not show on its command line
/// (`rpc_auth`, `encrypt_key`, `keyring_file`): on disk, mode 0600, beside
/// the RPC key file when there is one; else in memory (a memfd the agent
/// inherits and reads as `/proc/self/fd/N`), so no copy of the key is left
/// on disk, not even by a crash. Keep it for as long as the agent may be
/// (re)started.
#[derive(Debug)]
pub(crate) struct ConfigFile {
    path: PathBuf,
    memfd: Option<std::os::fd::OwnedFd>,
}

impl ConfigFile {
    /// Writes `entries` beside the RPC key file (`<rpc-auth>.json`) when
    /// there is one, else into a memfd.
    pub fn write(
        beside: Option<&Path>,
        entries: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<ConfigFile, AgentError> {
        let body = serde_json::to_vec(entries).expect("json");
        match beside {
            Some(p) => {
                let path = p.with_extension("json");
                write_private(&path, &body).map_err(|source| AgentError::Config {
                    path: path.display().to_string(),
                    source,
                })?;
                Ok(ConfigFile { path, memfd: None })
            }
            None => {
                let fd = memfd(&body).map_err(|source| AgentError::Config {
                    path: "(memfd)".into(),
                    source,
                })?;
                use std::os::fd::AsRawFd;
                Ok(ConfigFile {
                    path: PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
                    memfd: Some(fd),
                })
            }
        }
    }

    /// The path the agent reads it at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptor the agent must inherit, for a memfd.
    pub fn inherit_fd(&self) -> Option<i32> {
        use std::os::fd::AsRawFd;
        self.memfd.as_ref().map(|fd| fd.as_raw_fd())
    }
}

/// An anonymous in-memory file holding `bytes`, closed on exec (the agent
/// gets it by [`AgentConfig::inherit_fd`]).
fn memfd(bytes: &[u8]) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a NUL-terminated name; the new descriptor
    // is owned by the returned OwnedFd alone.
    let fd = unsafe { libc::memfd_create(c"serf-agent-config".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    Ok(file.into())
}

/// Writes `bytes` to `path`, readable by its owner only (also when the file
/// existed with a wider mode: the mode is narrowed before the write).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.set_len(0)?;
    f.write_all(bytes)
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum AgentError {
    #[error("rpc auth key {path}: {what} it: {source}")]
    Auth {
        path: String,
        what: String,
        source: std::io::Error,
    },
    #[error("agent config file {path}: {source}")]
    Config {
        path: String,
        source: std::io::Error,
    },
    #[error("create snapshot directory {dir}: {source}")]
    Snapshot { dir: String, source: std::io::Error },
    #[error("start {serf}: {source}")]
    Spawn {
        serf: String,
        source: std::io::Error,
    },
}

/// Runs the agent until `shutdown`, restarting it whenever it exits. Returns
/// after the agent left (or was killed past `leave_timeout`).
pub(crate) async fn supervise(cfg: AgentConfig, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let started = Instant::now();
        let mut child = match spawn(&cfg) {
            Ok(child) => child,
            Err(e) => {
                tracing::error!("serf agent: {e}");
                if sleep_or_shutdown(backoff.next_delay(), &shutdown).await {
                    return;
                }
                continue;
            }
        };
        tracing::info!(pid = child.id(), node = %cfg.node, rpc = %cfg.rpc, "serf agent started");
        cfg.pid.set(child.id());
        tokio::select! {
            status = child.wait() => {
                cfg.pid.set(None);
                let status = describe(status);
                if started.elapsed() > Duration::from_secs(30) {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                tracing::warn!(node = %cfg.node, "serf agent exited ({status}); restarting in {delay:?}");
                if sleep_or_shutdown(delay, &shutdown).await {
                    return;
                }
            }
            _ = shutdown.cancelled() => {
                stop(&mut child, cfg.leave_timeout).await;
                cfg.pid.set(None);
                return;
            }
        }
    }
}

/// Graceful leave by SIGINT; SIGKILL if it takes longer than `timeout`.
async fn stop(child: &mut Child, timeout: Duration) {
    if let Some(pid) = child.id() {
        // SAFETY: plain kill(2) on our own child, which has not been reaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
    }
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => tracing::info!(
            "serf agent left the cluster and stopped ({})",
            describe(status)
        ),
        Err(_) => {
            tracing::warn!("serf agent did not leave within {timeout:?}; killing it");
            let _ = child.kill().await;
        }
    }
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (_, Some(sig)) => format!("signal {sig}"),
            _ => s.to_string(),
        },
        Err(e) => format!("wait failed: {e}"),
    }
}

fn spawn(cfg: &AgentConfig) -> Result<Child, AgentError> {
    if let Some(dir) = cfg.snapshot.as_ref().and_then(|f| f.parent()) {
        std::fs::create_dir_all(dir).map_err(|source| AgentError::Snapshot {
            dir: dir.display().to_string(),
            source,
        })?;
    }
    let mut cmd = Command::new(&cfg.serf);
    cmd.args(cfg.args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: prctl and setpgid are async-signal-safe. The agent dies with us, so a
    // crashed serfnode never leaves an orphan holding the node's ports.
    unsafe {
        let inherit = cfg.inherit_fd;
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A process group of its own: a terminal's Ctrl-C or Ctrl-\
            // reaches the whole foreground job, and the agent must hear of
            // the stop from us alone. (A second SIGINT cuts Serf's leave
            // short; SIGQUIT kills it at once.)
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // fcntl is async-signal-safe; this clears close-on-exec in the
            // child only.
            if let Some(fd) = inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| AgentError::Spawn {
        serf: cfg.serf.display().to_string(),
        source,
    })?;
    if let Some(out) = &child.stdout {
        grow_pipe(out.as_raw_fd());
    }
    if let Some(err) = &child.stderr {
        grow_pipe(err.as_raw_fd());
    }
    forward_log(child.stdout.take(), cfg.drops.clone());
    forward_log(child.stderr.take(), cfg.drops.clone());
    Ok(child)
}

/// Enlarges a pipe to `LOG_PIPE` bytes (best effort: the default 64 KiB
/// works, only sooner stalls the agent while we do not read).
fn grow_pipe(fd: i32) {
    // SAFETY: F_SETPIPE_SZ on a pipe fd we own; no memory is passed.
    if unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, LOG_PIPE) } < 0 {
        tracing::debug!(
            "serf agent log pipe stays small: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn forward_log(out: Option<impl AsyncRead + Unpin + Send + 'static>, drops: Option<Drops>) {
    let Some(out) = out else { return };
    tokio::spawn(async move {
        // Read as bytes: the agent logs member names, which any peer
        // chooses; a line that is not UTF-8 must not end the reading, or the
        // agent dies of SIGPIPE at its next line.
        let mut out = BufReader::new(out);
        let mut buf = Vec::new();
        let mut last_query = false;
        loop {
            buf.clear();
            match out.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim();
            if let Some(event) = after(line, RECEIVED) {
                last_query = event.starts_with("query:");
            }
            if let (Some(drops), Some(addr)) = (&drops, dropped_for(line)) {
                if !last_query {
                    // Full: reports are pending anyway.
                    let _ = drops.try_send(addr);
                }
            }
            if line.contains("[ERR]") || line.contains("[WARN]") {
                tracing::warn!(target: "serf", "{line}");
            } else if !line.is_empty() {
                tracing::debug!(target: "serf", "{line}");
            }
        }
    });
}

/// What follows `marker` in `line`.
fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|at| &line[at + marker.len()..])
}

/// The client a "Dropping event" log line names.
fn dropped_for(line: &str) -> Option<SocketAddr> {
    after(line, DROPPED)?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reports_name_the_client() {
        let line =
            "2026/12/02 10:00:00 [WARN] agent.ipc: Dropping event to ipc.client: 127.0.0.1:40123";
        assert_eq!(dropped_for(line), Some("127.0.0.1:40123".parse().unwrap()));
        let v6 = "[WARN] agent.ipc: Dropping event to ipc.client: [::1]:7";
        assert_eq!(dropped_for(v6), Some("[::1]:7".parse().unwrap()));
        assert_eq!(
            dropped_for("[INFO] agent: Received event: user-event: x"),
            None
        );
        assert_eq!(
            after("[INFO] agent: Received event: query: where", RECEIVED),
            Some("query: where")
        );
    }

    #[test]
    fn the_config_file_lies_beside_the_rpc_key_or_in_memory() {
        let entries = serde_json::json!({"encrypt_key": "k"})
            .as_object()
            .unwrap()
            .clone();
        let read = |f: &ConfigFile| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(f.path()).unwrap()).unwrap()
        };

        let mem = ConfigFile::write(None, &entries).unwrap();
        assert!(mem.path().starts_with("/proc/self/fd/"));
        assert!(mem.inherit_fd().is_some());
        assert_eq!(read(&mem)["encrypt_key"], "k");

        let dir = tempfile::tempdir().unwrap();
        let auth = dir.path().join("rpc-auth");
        let key = rpc_auth(&auth).unwrap();
        assert_eq!(key.len(), 48);
        assert_eq!(rpc_auth(&auth).unwrap(), key, "kept across starts");
        std::fs::write(dir.path().join("rpc-auth.json"), "{}").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("rpc-auth.json"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let disk = ConfigFile::write(Some(&auth), &entries).unwrap();
        assert_eq!(disk.path(), dir.path().join("rpc-auth.json"));
        assert!(disk.inherit_fd().is_none());
        assert_eq!(read(&disk)["encrypt_key"], "k");
        let mode = std::fs::metadata(disk.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "narrowed");
    }
}
