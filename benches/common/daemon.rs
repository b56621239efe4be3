//! A `serfnode agent` under test: its temp dir (mount, hosts file, log),
//! the wait until it follows an agent, and a stop that leaves no process or
//! mount behind, also on panic.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use serfnode::files;

use super::{detach, is_mounted, signal, spawn, tail};

/// A `serfnode agent` with its mount, hosts file and log in a temp dir.
pub struct Daemon {
    pub name: String,
    pub mount: PathBuf,
    child: Option<Child>,
    /// SIGTERM was sent: a second one would make serfnode exit at once,
    /// skipping its agent's leave.
    terminated: bool,
    /// Declared last: removed only once the process is gone.
    pub dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `serfnode` (the binary at `bin`) with the arguments `args`
    /// adds, a mount and a hosts file of its own, and waits until it follows
    /// an agent.
    pub fn start(bin: &str, name: &str, args: impl FnOnce(&mut Command)) -> Result<Daemon> {
        let dir = tempfile::Builder::new()
            .prefix("serfnode-bench-")
            .tempdir()
            .context("temp dir for serfnode")?;
        let mount = dir.path().join("mnt");
        fs::create_dir(&mount).context("mount point")?;
        let hosts = dir.path().join("hosts");
        fs::write(&hosts, "127.0.0.1\tlocalhost\n").context("hosts file")?;
        let mut daemon = Daemon {
            name: name.to_owned(),
            mount,
            child: None,
            terminated: false,
            dir,
        };
        let mut cmd = Command::new(bin);
        args(&mut cmd);
        cmd.arg("--mount")
            .arg(&daemon.mount)
            .arg("--hosts-file")
            .arg(&hosts)
            .env("SERFNODE_LOG", "info");
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
        let started = Instant::now();
        daemon.child = Some(spawn(cmd, &daemon.log(), libc::SIGTERM, 0)?);
        let deadline = started + Duration::from_secs(30);
        while !daemon
            .json(files::STATUS)
            .is_ok_and(|s| s["agent"]["connected"] == true)
        {
            daemon.check_alive()?;
            ensure!(
                Instant::now() < deadline,
                "serfnode {name} does not follow its agent after 30 s\n{}",
                tail(&daemon.log())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        progress!(
            "serfnode {name} follows its agent after {} ms",
            started.elapsed().as_millis()
        );
        Ok(daemon)
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("serfnode.log")
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
                    tail(&self.log())
                );
            }
        }
        Ok(())
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
            eprintln!("{}", tail(&self.log()));
        }
        if let Err(e) = self.stop() {
            eprintln!("cleanup: {e:#}");
        }
    }
}
