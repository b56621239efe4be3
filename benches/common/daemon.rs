//! A `serfnode agent` under test: its temp dir (mount, hosts file, log),
//! the wait until it follows an agent, and a stop that leaves no process or
//! mount behind, also on panic.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use serfnode::surface::files;

use super::{detach, is_mounted, signal, spawn, tail};

/// A `serfnode agent` with its mount and log.
pub struct Daemon {
    pub name: String,
    pub mount: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    /// SIGTERM was sent: a second one would make serfnode exit at once,
    /// skipping its agent's leave.
    terminated: bool,
    /// The temp dir [`Daemon::start`] made; removed once the process is gone
    /// (the drop stops it first).
    dir: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Spawns `serfnode` (the binary at `bin`) with the arguments `args`
    /// adds and `--mount mount`, logging to `log`, at the bench's priority;
    /// does not wait for it.
    pub fn spawn(
        bin: &str,
        name: &str,
        mount: PathBuf,
        log: PathBuf,
        args: impl FnOnce(&mut Command),
    ) -> Result<Daemon> {
        fs::create_dir_all(&mount).with_context(|| format!("create {}", mount.display()))?;
        let mut daemon = Daemon {
            name: name.to_owned(),
            mount,
            log,
            child: None,
            terminated: false,
            dir: None,
        };
        let mut cmd = Command::new(bin);
        args(&mut cmd);
        cmd.arg("--mount")
            .arg(&daemon.mount)
            .env("SERFNODE_LOG", "info");
        // The bench says everything on the command line.
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
        daemon.child = Some(spawn(cmd, &daemon.log, libc::SIGTERM, None)?);
        Ok(daemon)
    }

    /// [`Daemon::spawn`] in a temp dir of its own with a hosts file of its
    /// own, then waits until it follows an agent.
    pub fn start(bin: &str, name: &str, args: impl FnOnce(&mut Command)) -> Result<Daemon> {
        let dir = tempfile::Builder::new()
            .prefix("serfnode-bench-")
            .tempdir()
            .context("temp dir for serfnode")?;
        let hosts = dir.path().join("hosts");
        fs::write(&hosts, "127.0.0.1\tlocalhost\n").context("hosts file")?;
        let started = Instant::now();
        let mut daemon = Daemon::spawn(
            bin,
            name,
            dir.path().join("mnt"),
            dir.path().join("serfnode.log"),
            |cmd| {
                args(cmd);
                cmd.arg("--hosts-file").arg(&hosts);
            },
        )?;
        daemon.dir = Some(dir);
        daemon.wait_following(Duration::from_secs(30))?;
        progress!(
            "serfnode {name} follows its agent after {} ms",
            started.elapsed().as_millis()
        );
        Ok(daemon)
    }

    /// Waits until `status.json` says the daemon follows its agent.
    pub fn wait_following(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while !self
            .json(files::STATUS)
            .is_ok_and(|s| s["agent"]["connected"] == true)
        {
            self.check_alive()?;
            ensure!(
                Instant::now() < deadline,
                "serfnode {} does not follow its agent after {limit:?}\n{}",
                self.name,
                tail(&self.log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The temp dir of a daemon made by [`Daemon::start`].
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or_else(|| self.log.parent().unwrap_or(Path::new("/")), |d| d.path())
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.mount.join(file)
    }

    pub fn json(&self, file: &str) -> Result<Value> {
        let path = self.path(file);
        let bytes = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not json", path.display()))
    }

    pub fn pid(&self) -> Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .with_context(|| format!("serfnode {} is not running", self.name))
    }

    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = &mut self.child {
            if let Some(status) = child.try_wait().context("wait for serfnode")? {
                bail!(
                    "serfnode {} exited with {status}\n{}",
                    self.name,
                    tail(&self.log)
                );
            }
        }
        Ok(())
    }

    /// Waits until `serfnodes_by_id.json` lists `n` members, calling `also`
    /// (to check the other processes) on each look; the time since `since`.
    pub fn wait_listed(
        &mut self,
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
                .json(files::BY_ID)
                .ok()
                .and_then(|v| v.as_object().map(|o| o.len()))
                .unwrap_or(0);
            if listed == n {
                let took = since.elapsed();
                progress!(
                    "{} lists {n} after {:.2} s",
                    files::BY_ID,
                    took.as_secs_f64()
                );
                return Ok(took);
            }
            if listed != shown.0 && shown.1.elapsed() >= Duration::from_secs(1) {
                progress!("listed {listed}/{n}");
                shown = (listed, Instant::now());
            }
            ensure!(
                since.elapsed() < limit,
                "{} lists {listed} of {n} members after {limit:?}\n{}",
                files::BY_ID,
                tail(&self.log)
            );
            std::thread::sleep(Duration::from_millis(100));
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
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", tail(&self.log));
        }
        if let Err(e) = self.stop() {
            eprintln!("cleanup: {e:#}");
        }
    }
}
