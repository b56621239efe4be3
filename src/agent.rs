//! The supervised `serf agent` process: started with this node's name,
//! addresses and tags, restarted with backoff whenever it dies, and stopped
//! with SIGINT (Serf's graceful leave) at shutdown. Its log lines are
//! forwarded to ours under the `serf` target.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::backoff::{sleep_or_shutdown, Backoff};

#[derive(Debug, Clone)]
pub struct AgentConfig {
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
    /// Extra agent configuration (rpc_auth, keyring) passed as a file so no
    /// secret shows in process listings.
    pub config_file: Option<PathBuf>,
    /// How long the graceful leave may take at shutdown before SIGKILL.
    pub leave_timeout: Duration,
}

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
/// it does not exist, and writes the agent config file that hands it to the
/// agent (`<path>.json`, 0600). Returns the key and that config file.
pub fn rpc_auth(path: &Path) -> Result<(String, PathBuf), AgentError> {
    let io = |what: &str, source| AgentError::Auth {
        path: path.display().to_string(),
        what: what.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("create its directory", e))?;
    }
    let key = match std::fs::read_to_string(path) {
        Ok(k) if !k.trim().is_empty() => k.trim().to_owned(),
        Ok(_) | Err(_) => {
            let mut bytes = [0u8; 24];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
                .map_err(|e| io("read /dev/urandom for", e))?;
            let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            write_private(path, key.as_bytes()).map_err(|e| io("write", e))?;
            key
        }
    };
    let config = path.with_extension("json");
    let body = serde_json::to_vec(&serde_json::json!({ "rpc_auth": key })).expect("json");
    write_private(&config, &body).map_err(|e| io("write the agent config beside", e))?;
    Ok((key, config))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("rpc auth key {path}: {what} it: {source}")]
    Auth {
        path: String,
        what: String,
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
pub async fn supervise(cfg: AgentConfig, shutdown: CancellationToken) {
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
        tokio::select! {
            status = child.wait() => {
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
    // SAFETY: prctl is async-signal-safe. The agent dies with us, so a
    // crashed serfnode never leaves an orphan holding the node's ports.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| AgentError::Spawn {
        serf: cfg.serf.display().to_string(),
        source,
    })?;
    forward_log(child.stdout.take());
    forward_log(child.stderr.take());
    Ok(child)
}

fn forward_log(out: Option<impl AsyncRead + Unpin + Send + 'static>) {
    let Some(out) = out else { return };
    tokio::spawn(async move {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let line = line.trim();
            if line.contains("[ERR]") || line.contains("[WARN]") {
                tracing::warn!(target: "serf", "{line}");
            } else if !line.is_empty() {
                tracing::debug!(target: "serf", "{line}");
            }
        }
    });
}
