//! Raw `serf agent` processes standing in for other hosts: numbered from 1,
//! each with its log in one directory, at a lower priority than the node
//! under test; killed and reaped on drop, also on panic.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command};

use anyhow::{bail, Context, Result};

use super::{signal, spawn, tail};

pub struct Agents {
    children: Vec<Child>,
    dir: PathBuf,
    name: fn(usize) -> String,
    nice: libc::c_int,
}

impl Agents {
    /// Agents named by `name`, logging into `dir` (created), at `nice`.
    pub fn new(dir: PathBuf, name: fn(usize) -> String, nice: libc::c_int) -> Result<Agents> {
        fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Agents {
            children: Vec::new(),
            dir,
            name,
            nice,
        })
    }

    /// Spawns agent `len() + 1`: `serf` with the arguments `args` adds.
    pub fn spawn(&mut self, args: impl FnOnce(&mut Command)) -> Result<()> {
        let n = self.children.len() + 1;
        let mut cmd = Command::new("serf");
        args(&mut cmd);
        let child =
            spawn(cmd, &self.log(n), libc::SIGKILL, Some(self.nice)).with_context(|| {
                format!("spawn `serf agent` {} (is serf installed?)", (self.name)(n))
            })?;
        self.children.push(child);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.children.len()
    }

    pub fn log(&self, n: usize) -> PathBuf {
        self.dir.join(format!("{}.log", (self.name)(n)))
    }

    pub fn pid(&self, n: usize) -> Result<u32> {
        n.checked_sub(1)
            .and_then(|i| self.children.get(i))
            .map(Child::id)
            .with_context(|| format!("no agent {}", (self.name)(n)))
    }

    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.children.iter().map(Child::id)
    }

    /// Fails, naming the agent and showing its log, once any exited.
    pub fn check(&mut self) -> Result<()> {
        for (i, agent) in self.children.iter_mut().enumerate() {
            if let Some(status) = agent.try_wait().context("wait for a serf agent")? {
                let n = i + 1;
                bail!(
                    "serf agent {} exited with {status}\n{}",
                    (self.name)(n),
                    tail(&self.dir.join(format!("{}.log", (self.name)(n))))
                );
            }
        }
        Ok(())
    }

    /// SIGKILLs every agent, then reaps them; how many there were.
    pub fn kill_all(&mut self) -> usize {
        let n = self.children.len();
        for agent in &self.children {
            signal(agent, libc::SIGKILL);
        }
        for mut agent in self.children.drain(..) {
            let _ = agent.wait();
        }
        n
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        self.kill_all();
    }
}
