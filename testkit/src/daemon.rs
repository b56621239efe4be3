//! The one fixture that runs the real `serfnode agent`: its own loopback
//! address (or an attached agent), mount point, hosts file and log in a
//! temp dir, configured by [`DaemonOpts`]; on drop (also on panic) the
//! process is stopped and reaped and its mount detached, and a panicking
//! test gets the log's tail.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::addr::{unique_ip, GOSSIP_PORT, RPC_PORT};
use crate::process::{self, detach, is_mounted, signal, spawn_logged};
use crate::progress;

/// The file that says whether the daemon follows its agent.
const STATUS: &str = "status.json";
/// The hosts file a daemon starts with unless told otherwise.
const HOSTS: &[u8] = b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n";

/// The `serfnode` binary cargo built beside this test or benchmark:
/// `target/<profile>/serfnode` for `target/<profile>/deps/<test>-<hash>`.
pub fn serfnode_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test binary in target/<profile>/deps");
    let bin = profile.join("serfnode");
    assert!(
        bin.exists(),
        "{} missing: run through `cargo test` or `cargo bench`",
        bin.display()
    );
    bin
}

/// What a drop does to a daemon still running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnDrop {
    /// SIGKILL at once, as a crash would (the tests: fast, and what they
    /// check happened before).
    #[default]
    Kill,
    /// SIGTERM, up to 10 s for a clean exit (leave, unmount), then SIGKILL
    /// (the benchmarks: their agents should not see a failure).
    Terminate,
}

/// How to run a daemon; `Default` gives a lone node with role `test` on a
/// fresh [`unique_ip`].
#[derive(Debug, Clone, Default)]
pub struct DaemonOpts {
    /// `--node`; default `node-<ip>`.
    pub name: String,
    /// `--role`; default `test`.
    pub role: String,
    pub join: Vec<SocketAddr>,
    /// Extra `serfnode agent` arguments.
    pub args: Vec<String>,
    /// Use this IP instead of a fresh one (restarting a node in place, a
    /// benchmark's fixed addresses).
    pub ip: Option<IpAddr>,
    /// Attach to the agent at this RPC address instead of starting one.
    pub attach: Option<SocketAddr>,
    /// Mount here instead of in the node's temp dir.
    pub mount: Option<PathBuf>,
    /// Log here instead of in the node's temp dir.
    pub log: Option<PathBuf>,
    /// Initial content of the node's hosts file.
    pub hosts: Option<Vec<u8>>,
    /// Keep the hosts file here instead of in the node's temp dir.
    pub hosts_path: Option<PathBuf>,
    /// `--hosts-file none`: the daemon writes no hosts file.
    pub no_hosts: bool,
    /// Extra environment for the daemon.
    pub env: Vec<(String, String)>,
    /// `SERFNODE_LOG`; default `info,serfnode=debug`.
    pub log_filter: Option<String>,
    /// Run the daemon in a session (and process group) of its own, as a
    /// shell with job control runs a foreground command: see
    /// [`Daemon::signal_group`].
    pub session: bool,
    /// The signal the daemon gets when the thread that spawned it dies (a
    /// killed benchmark leaves nothing behind).
    pub death_signal: Option<libc::c_int>,
    pub on_drop: OnDrop,
    /// The binary; default [`serfnode_bin`].
    pub bin: Option<PathBuf>,
}

impl DaemonOpts {
    /// A daemon named `name` on `ip` (Serf's default ports), role `role`,
    /// stopped gracefully on drop: how the benchmarks run theirs.
    pub fn bench(name: &str, ip: IpAddr, role: &str) -> DaemonOpts {
        DaemonOpts {
            name: name.to_owned(),
            role: role.to_owned(),
            ip: Some(ip),
            log_filter: Some("info".to_owned()),
            death_signal: Some(libc::SIGTERM),
            on_drop: OnDrop::Terminate,
            ..DaemonOpts::default()
        }
    }
}

pub struct Daemon {
    pub name: String,
    pub ip: IpAddr,
    pub mount: PathBuf,
    pub hosts: PathBuf,
    pub log: PathBuf,
    attach: Option<SocketAddr>,
    cmd: Command,
    on_drop: OnDrop,
    child: Option<Child>,
    /// SIGTERM was sent: a second one would make serfnode exit at once,
    /// skipping its agent's leave.
    terminated: bool,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts the daemon and waits until it follows its agent (see
    /// [`Daemon::wait_connected`]).
    pub fn start(opts: DaemonOpts) -> Daemon {
        let daemon = Daemon::spawn(opts);
        daemon.wait_connected();
        daemon
    }

    /// [`Daemon::start`] for a benchmark: errors instead of panics, up to
    /// 30 s, and a progress line with the time it took.
    pub fn try_start(opts: DaemonOpts) -> Result<Daemon> {
        let started = Instant::now();
        let mut daemon = Daemon::try_spawn(opts)?;
        daemon.wait_following(Duration::from_secs(30))?;
        progress!(
            "serfnode {} follows its agent after {} ms",
            daemon.name,
            started.elapsed().as_millis()
        );
        Ok(daemon)
    }

    /// Starts the daemon without waiting for anything.
    pub fn spawn(opts: DaemonOpts) -> Daemon {
        Daemon::try_spawn(opts).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`Daemon::spawn`], with errors.
    pub fn try_spawn(opts: DaemonOpts) -> Result<Daemon> {
        let dir = tempfile::Builder::new()
            .prefix("serfnode-daemon-")
            .tempdir()
            .context("temp dir for serfnode")?;
        let ip = opts.ip.unwrap_or_else(unique_ip);
        let mount = opts.mount.clone().unwrap_or_else(|| dir.path().join("mnt"));
        std::fs::create_dir_all(&mount).with_context(|| format!("create {}", mount.display()))?;
        let hosts = opts
            .hosts_path
            .clone()
            .unwrap_or_else(|| dir.path().join("hosts"));
        if !opts.no_hosts {
            std::fs::write(&hosts, opts.hosts.as_deref().unwrap_or(HOSTS))
                .with_context(|| format!("write {}", hosts.display()))?;
        }
        let log = opts
            .log
            .clone()
            .unwrap_or_else(|| dir.path().join("serfnode.log"));
        process::new_log(&log)?;
        let name = if opts.name.is_empty() {
            format!("node-{ip}")
        } else {
            opts.name.clone()
        };
        let mut cmd = Command::new(opts.bin.clone().unwrap_or_else(serfnode_bin));
        cmd.arg("agent")
            .args(["--node", name.as_str()])
            .args(match opts.attach {
                Some(rpc) => vec!["--attach".to_string(), format!("--rpc-addr={rpc}")],
                None => vec![
                    format!("--bind={}", SocketAddr::new(ip, GOSSIP_PORT)),
                    format!("--rpc-addr={}", SocketAddr::new(ip, RPC_PORT)),
                ],
            })
            .arg("--mount")
            .arg(&mount)
            .arg("--hosts-file")
            .arg(if opts.no_hosts {
                Path::new("none")
            } else {
                &hosts
            })
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
            .env(
                "SERFNODE_LOG",
                opts.log_filter.as_deref().unwrap_or("info,serfnode=debug"),
            );
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
        // Everything is said on the command line, not inherited.
        for var in [
            "ROLE",
            "PEER",
            "SERF_IP",
            "SERF_PORT",
            "NODE_NAME",
            "RPC_PORT",
            "SERFNODE_MOUNT",
            "SERFNODE_HANDLERS",
        ] {
            cmd.env_remove(var);
        }
        process::set_death_signal_and_nice(&mut cmd, opts.death_signal, None);
        let mut daemon = Daemon {
            name,
            ip,
            mount,
            hosts,
            log,
            attach: opts.attach,
            cmd,
            on_drop: opts.on_drop,
            child: None,
            terminated: false,
            dir,
        };
        daemon.try_relaunch()?;
        Ok(daemon)
    }

    /// Starts the same daemon again (same address, mount and hosts file)
    /// after it exited or crashed.
    pub fn relaunch(&mut self) {
        self.try_relaunch().unwrap_or_else(|e| panic!("{e:#}"));
    }

    fn try_relaunch(&mut self) -> Result<()> {
        assert!(self.child.is_none(), "relaunch of a running node");
        self.child = Some(spawn_logged(&mut self.cmd, &self.log)?);
        self.terminated = false;
        Ok(())
    }

    /// Waits until the daemon follows its agent; fails, with the log, when
    /// it exits or `limit` passes first.
    pub fn wait_following(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if self
                .try_json(STATUS)
                .is_ok_and(|s| s["agent"]["connected"] == true)
            {
                return Ok(());
            }
            self.check_alive()?;
            ensure!(
                Instant::now() < deadline,
                "serfnode {} does not follow its agent after {limit:?}\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the daemon follows its agent; panics past 20 s with the
    /// last status and the log.
    pub fn wait_connected(&self) {
        self.wait_json(STATUS, Duration::from_secs(20), |s| {
            s["agent"]["connected"] == true
        });
    }

    /// The daemon's temp dir (room for what a test puts beside it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn bind_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, GOSSIP_PORT)
    }

    pub fn rpc_addr(&self) -> SocketAddr {
        self.attach.unwrap_or(SocketAddr::new(self.ip, RPC_PORT))
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.mount.join(file)
    }

    pub fn read(&self, file: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.path(file))
    }

    /// `file` parsed as JSON; panics, with the log, when it cannot be.
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

    /// [`Daemon::json`], with errors.
    pub fn try_json(&self, file: &str) -> Result<Value> {
        let path = self.path(file);
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not json", path.display()))
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

    /// Waits until `file` (an object keyed by member, as
    /// `serfnodes_by_id.json`) has `n` keys, calling `also` (to check the
    /// other processes) on each look; the time since `since`.
    pub fn wait_listed(
        &mut self,
        file: &str,
        n: usize,
        since: Instant,
        limit: Duration,
        mut also: impl FnMut() -> Result<()>,
    ) -> Result<Duration> {
        let mut shown = (0, Instant::now());
        loop {
            self.check_alive()?;
            also()?;
            let listed = self
                .try_json(file)
                .ok()
                .and_then(|v| v.as_object().map(|o| o.len()))
                .unwrap_or(0);
            if listed == n {
                let took = since.elapsed();
                progress!("{file} lists {n} after {:.2} s", took.as_secs_f64());
                return Ok(took);
            }
            if listed != shown.0 && shown.1.elapsed() >= Duration::from_secs(1) {
                progress!("listed {listed}/{n}");
                shown = (listed, Instant::now());
            }
            ensure!(
                since.elapsed() < limit,
                "{file} lists {listed} of {n} members after {limit:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The journal's lines (`events`, or `events_since/N`), parsed.
    pub fn journal(&self, file: &str) -> Vec<Value> {
        let bytes = self
            .read(file)
            .unwrap_or_else(|e| panic!("read {file}: {e}"));
        journal_lines(&bytes)
    }

    pub fn hosts_text(&self) -> String {
        std::fs::read_to_string(&self.hosts).unwrap()
    }

    /// The last 60 lines of the daemon's log.
    pub fn log(&self) -> String {
        process::tail(&format!("serfnode {}", self.name), &self.log, 60)
    }

    /// The daemon's whole log so far (not only the tail).
    pub fn full_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's resident set size in KiB (`VmRSS`), while it runs.
    pub fn rss_kib(&self) -> Option<u64> {
        process::rss_kib(self.pid())
    }

    /// The daemon's pid; panics once it is not running.
    pub fn pid(&self) -> i32 {
        self.try_pid().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`Daemon::pid`], with errors.
    pub fn try_pid(&self) -> Result<i32> {
        self.child
            .as_ref()
            .map(|c| c.id() as i32)
            .with_context(|| format!("serfnode {} is not running", self.name))
    }

    /// Fails, with the log, once the daemon exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = &mut self.child {
            if let Some(status) = child.try_wait().context("wait for serfnode")? {
                bail!(
                    "serfnode {} exited with {status}\n{}",
                    self.name,
                    self.log()
                );
            }
        }
        Ok(())
    }

    /// The pid of the `serf agent` the daemon runs, if one runs now.
    pub fn agent_pid(&self) -> Option<i32> {
        process::children_named(self.pid(), "serf")
            .into_iter()
            .next()
    }

    /// The pid of the `serf agent` this daemon supervises (waits for it).
    pub fn wait_agent_pid(&self) -> i32 {
        agent_pid(self.pid())
    }

    pub fn signal(&self, sig: i32) {
        process::signal_pid(self.pid(), sig);
    }

    /// `sig` to the daemon's whole process group, as a terminal sends
    /// Ctrl-C (SIGINT) or Ctrl-\\ (SIGQUIT) to its foreground job; needs
    /// [`DaemonOpts::session`].
    pub fn signal_group(&self, sig: i32) {
        process::signal_pid(-self.pid(), sig);
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

    /// Asks for a clean shutdown (leave, unmount) without waiting for it.
    pub fn terminate(&mut self) {
        if let Some(child) = self.child.as_ref().filter(|_| !self.terminated) {
            signal(child, libc::SIGTERM);
            self.terminated = true;
        }
    }

    /// SIGTERM, up to 10 s for a clean exit, then SIGKILL; reaps the
    /// process and detaches the mount if it is still there.
    pub fn stop(&mut self) -> Result<()> {
        self.terminate();
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let status = child
            .wait()
            .with_context(|| format!("reap serfnode {}", self.name))?;
        if is_mounted(&self.mount) {
            detach(&self.mount);
        }
        ensure!(
            !is_mounted(&self.mount),
            "{} is still mounted",
            self.mount.display()
        );
        progress!("serfnode {} stopped ({status}), mount detached", self.name);
        Ok(())
    }

    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.mount)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
        match self.on_drop {
            OnDrop::Kill => self.crash(),
            OnDrop::Terminate => {
                if let Err(e) = self.stop() {
                    eprintln!("cleanup: {e:#}");
                }
            }
        }
        if self.is_mounted() {
            detach(&self.mount);
        }
    }
}

/// The `serf agent` a daemon (pid `daemon`) runs: its pid, once it runs.
pub fn agent_pid(daemon: i32) -> i32 {
    crate::wait::wait_for(Duration::from_secs(30), "the daemon's serf agent", || {
        process::children_named(daemon, "serf").into_iter().next()
    })
}

/// Journal lines (one JSON object each), parsed; panics on one that is not.
pub fn journal_lines(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("journal line {l:?}: {e}")))
        .collect()
}
