//! A real `serfnode agent` process for integration tests: its own loopback
//! address, mount point and hosts file in a temp dir; killed, reaped and
//! unmounted on drop even when the test panics.

use std::ffi::CString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::serf::unique_ip;

pub const SERFNODE: &str = env!("CARGO_BIN_EXE_serfnode");

#[derive(Debug, Clone, Default)]
pub struct NodeOpts {
    pub name: String,
    pub role: String,
    pub join: Vec<SocketAddr>,
    /// Extra `serfnode agent` arguments.
    pub args: Vec<String>,
    /// Use this IP instead of a fresh one (restarting a node in place).
    pub ip: Option<IpAddr>,
    /// Attach to the agent at this RPC address instead of starting one.
    pub attach: Option<SocketAddr>,
    /// Mount here instead of in the node's temp dir.
    pub mount: Option<PathBuf>,
    /// Initial content of the node's hosts file.
    pub hosts: Option<Vec<u8>>,
    /// Keep the hosts file here instead of in the node's temp dir.
    pub hosts_path: Option<PathBuf>,
    /// Extra environment for the daemon.
    pub env: Vec<(String, String)>,
    /// Run the daemon in a session (and process group) of its own, as a
    /// shell with job control runs a foreground command: see
    /// [`Node::signal_group`].
    pub session: bool,
}

pub struct Node {
    pub name: String,
    pub ip: IpAddr,
    pub mount: PathBuf,
    pub hosts: PathBuf,
    log: PathBuf,
    attach: Option<SocketAddr>,
    cmd: Command,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts the daemon and waits until it follows its agent.
    pub fn start(opts: NodeOpts) -> Node {
        let node = Node::spawn(opts);
        node.wait_connected();
        node
    }

    /// Starts the daemon without waiting for anything.
    pub fn spawn(opts: NodeOpts) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let ip = opts.ip.unwrap_or_else(unique_ip);
        let mount = opts.mount.clone().unwrap_or_else(|| dir.path().join("mnt"));
        let hosts = opts
            .hosts_path
            .clone()
            .unwrap_or_else(|| dir.path().join("hosts"));
        std::fs::write(
            &hosts,
            opts.hosts
                .as_deref()
                .unwrap_or(b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n"),
        )
        .unwrap();
        let log = dir.path().join("serfnode.log");
        let name = if opts.name.is_empty() {
            format!("node-{ip}")
        } else {
            opts.name.clone()
        };
        let mut cmd = Command::new(SERFNODE);
        cmd.arg("agent")
            .args(["--node", name.as_str()])
            .args(match opts.attach {
                Some(rpc) => vec!["--attach".to_string(), format!("--rpc-addr={rpc}")],
                None => vec![format!("--bind={ip}:7946"), format!("--rpc-addr={ip}:7373")],
            })
            .arg("--mount")
            .arg(&mount)
            .arg("--hosts-file")
            .arg(&hosts)
            .args(["--profile", "local"])
            .args([
                "--role",
                if opts.role.is_empty() {
                    "test"
                } else {
                    &opts.role
                },
            ])
            .args(
                opts.join
                    .iter()
                    .flat_map(|j| ["--join".to_string(), j.to_string()]),
            )
            .args(&opts.args)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .env("SERFNODE_LOG", "info,serfnode=debug")
            .stdin(Stdio::null());
        if opts.session {
            use std::os::unix::process::CommandExt;
            // SAFETY: setsid(2) is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                })
            };
        }
        for var in [
            "ROLE",
            "PEER",
            "SERF_IP",
            "SERF_PORT",
            "NODE_NAME",
            "RPC_PORT",
        ] {
            cmd.env_remove(var);
        }
        let mut node = Node {
            name,
            ip,
            mount,
            hosts,
            log,
            attach: opts.attach,
            cmd,
            child: None,
            _dir: dir,
        };
        node.relaunch();
        node
    }

    /// Starts the same daemon again (same address, mount and hosts file)
    /// after it exited or crashed.
    pub fn relaunch(&mut self) {
        assert!(self.child.is_none(), "relaunch of a running node");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.cmd.stdout(log.try_clone().unwrap()).stderr(log);
        self.child = Some(self.cmd.spawn().expect("spawn serfnode"));
    }

    /// Waits until the daemon follows its agent.
    pub fn wait_connected(&self) {
        self.wait_json("status.json", Duration::from_secs(20), |s| {
            s["agent"]["connected"] == true
        });
    }

    pub fn bind_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 7946)
    }

    pub fn rpc_addr(&self) -> SocketAddr {
        self.attach.unwrap_or(SocketAddr::new(self.ip, 7373))
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.mount.join(file)
    }

    pub fn read(&self, file: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.path(file))
    }

    pub fn json(&self, file: &str) -> Value {
        let bytes = self
            .read(file)
            .unwrap_or_else(|e| panic!("read {file} on {}: {e}\n{}", self.name, self.log()));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{file} on {} is not json ({e}): {}",
                self.name,
                String::from_utf8_lossy(&bytes)
            )
        })
    }

    /// Polls `file` until `pred` holds; panics with the last content and the
    /// daemon's log past `timeout`.
    pub fn wait_json(&self, file: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(bytes) = self.read(file) {
                if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                    if pred(&v) {
                        return v;
                    }
                    if Instant::now() > deadline {
                        panic!(
                            "{file} on {} never matched; last: {v}\n{}",
                            self.name,
                            self.log()
                        );
                    }
                }
            }
            if Instant::now() > deadline {
                panic!("{file} on {} unreadable\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn hosts_text(&self) -> String {
        std::fs::read_to_string(&self.hosts).unwrap()
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- serfnode {} log (tail) ---\n{}",
            self.name,
            tail.join("\n")
        )
    }

    /// The daemon's whole log so far (not only the tail).
    pub fn full_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's resident set size in KiB (`VmRSS`), while it runs.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// The pid of the `serf agent` the daemon runs, if one runs now.
    pub fn agent_pid(&self) -> Option<i32> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid())).ok()?;
        for t in tasks {
            let children = std::fs::read_to_string(t.ok()?.path().join("children")).ok()?;
            for c in children.split_whitespace() {
                let c: i32 = c.parse().ok()?;
                let comm = std::fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
                if comm.trim() == "serf" {
                    return Some(c);
                }
            }
        }
        None
    }

    /// The pid of the `serf agent` this daemon supervises (waits for it).
    pub fn wait_agent_pid(&self) -> i32 {
        agent_pid(self.pid())
    }

    /// The journal's lines (`events`, or `events_since/N`), parsed.
    pub fn journal(&self, file: &str) -> Vec<Value> {
        journal_lines(
            &self
                .read(file)
                .unwrap_or_else(|e| panic!("read {file}: {e}")),
        )
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// `sig` to the daemon's whole process group, as a terminal sends
    /// Ctrl-C (SIGINT) or Ctrl-\\ (SIGQUIT) to its foreground job; needs
    /// [`NodeOpts::session`].
    pub fn signal_group(&self, sig: i32) {
        // SAFETY: kill(2) on the group our own child leads.
        unsafe { libc::kill(-self.pid(), sig) };
    }

    /// Waits for the daemon to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "serfnode {} did not exit within {timeout:?}\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash would; the mount is left behind, dead.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.mount)
    }
}

/// One write(2) of `bytes` to `path`: the byte count, or the errno (what a
/// writer of the write node sees, short counts included).
pub fn raw_write(path: &Path, bytes: &[u8]) -> Result<usize, i32> {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    // SAFETY: write(2) from a live buffer on an open fd.
    let n = unsafe { libc::write(f.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(n as usize)
    }
}

/// The `serf agent` a daemon runs: its pid.
pub fn agent_pid(daemon: i32) -> i32 {
    let mut found = None;
    eventually(Duration::from_secs(30), "the daemon's serf agent", || {
        found = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok()?.parse::<i32>().ok())
            .find(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                // pid (comm) state ppid ...: comm may hold spaces, not ')'.
                let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
                after.split_whitespace().nth(1) == Some(&daemon.to_string())
                    && stat.contains("(serf)")
            });
        found.is_some()
    });
    found.unwrap()
}

/// libfaketime, which `scripts/setup` installs (Debian's `faketime`).
pub const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The environment that runs a daemon under libfaketime with its wall
/// clock offset by what `offset` holds (e.g. `+0`, `-1h`; re-read on every
/// call), monotonic time untouched, as on a host whose clock is stepped.
/// (Serf, a Go program, does not read the clock through libc.)
pub fn faketime_env(offset: &Path) -> Vec<(String, String)> {
    assert!(
        Path::new(FAKETIME).exists(),
        "{FAKETIME} missing: scripts/setup installs Debian's faketime"
    );
    vec![
        ("LD_PRELOAD".to_string(), FAKETIME.to_string()),
        (
            "FAKETIME_TIMESTAMP_FILE".to_string(),
            offset.display().to_string(),
        ),
        ("FAKETIME_NO_CACHE".to_string(), "1".to_string()),
        ("DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
    ]
}

/// Journal lines (one JSON object each), parsed.
pub fn journal_lines(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("journal line {l:?}: {e}")))
        .collect()
}

/// Sends `sig` to process `pid` (a daemon, its agent, a wrapper).
pub fn signal_pid(pid: i32, sig: i32) {
    // SAFETY: plain kill(2); a stale pid at worst gets ESRCH.
    unsafe { libc::kill(pid, sig) };
}

/// Stops process `pid` (SIGSTOP) and waits until every thread of it is
/// stopped: kill(2) returns before the stop takes effect.
pub fn stop_pid(pid: i32) {
    signal_pid(pid, libc::SIGSTOP);
    let stopped = || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.filter_map(Result::ok).all(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            matches!(state, Some("T" | "t"))
        })
    };
    eventually(
        Duration::from_secs(10),
        &format!("process {pid} to stop"),
        stopped,
    );
}

/// `VmRSS` of process `pid` in KiB, from /proc; None once it is gone.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

pub fn is_mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_str().unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(p))
}

pub fn detach(path: &Path) {
    let c = CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: plain umount2(2) on a path we own.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

impl Drop for Node {
    fn drop(&mut self) {
        self.crash();
        if self.is_mounted() {
            detach(&self.mount);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
    }
}

/// Polls `cond` until true; panics with `what` past `timeout`.
pub fn eventually(timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
    assert!(
        super::wait_until(timeout, cond),
        "timed out after {timeout:?} waiting for {what}"
    );
}

/// Runs a `serfnode` operator command with `stdin` as its input: whether it
/// succeeded, its stdout and its stderr.
pub fn operator(args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(SERFNODE)
        .args(args)
        .env_remove("SERFNODE_MOUNT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serfnode");
    let mut input = child.stdin.take().expect("piped stdin");
    // A command that does not read its input may have exited already.
    let _ = input.write_all(stdin);
    drop(input);
    let out = child.wait_with_output().expect("wait for serfnode");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
