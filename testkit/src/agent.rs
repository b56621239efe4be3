//! Raw `serf agent` processes: one [`Agent`] for a test (its own
//! [`unique_ip`] with Serf's default ports, so agents of concurrently
//! running test binaries never meet), a numbered fleet of [`Agents`]
//! standing in for other hosts in a benchmark. Dropping either kills and
//! reaps its processes, also when the test panics; a panicking test then
//! gets the agent's log.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

pub use crate::addr::{unique_ip, GOSSIP_PORT, RPC_PORT};
use crate::process::{self, signal};

/// How long an agent may take to answer RPC after its start.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `stop` waits for a graceful leave before killing.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How to start an agent; `Default` gives a lone agent with a generated name.
#[derive(Debug, Clone, Default)]
pub struct AgentOpts {
    /// Node name; default `agent-<ip>`.
    pub name: Option<String>,
    /// Address to use instead of a fresh [`unique_ip`] (restarting in place).
    pub ip: Option<IpAddr>,
    pub tags: BTreeMap<String, String>,
    /// Gossip address of an agent to join at start (`-join`).
    pub join: Option<SocketAddr>,
    /// Written to a file passed with `-config-file`, e.g. `{"rpc_auth": "…"}`.
    pub config: Option<serde_json::Value>,
    /// Further `serf agent` arguments, e.g. `["-encrypt", key]`.
    pub args: Vec<String>,
}

impl AgentOpts {
    pub fn named(name: &str) -> AgentOpts {
        AgentOpts {
            name: Some(name.to_owned()),
            ..AgentOpts::default()
        }
    }

    pub fn tag(mut self, key: &str, value: &str) -> AgentOpts {
        self.tags.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn join(mut self, agent: &Agent) -> AgentOpts {
        self.join = Some(agent.bind_addr());
        self
    }

    pub fn args(mut self, args: &[&str]) -> AgentOpts {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }
}

/// A running `serf agent`.
pub struct Agent {
    child: Option<Child>,
    name: String,
    ip: IpAddr,
    log: PathBuf,
    /// Holds the log and config file; removed on drop.
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Starts an agent and waits until its RPC answers a handshake. Panics,
    /// showing the log, when it does not come up.
    pub fn start(opts: AgentOpts) -> Agent {
        Agent::start_os(opts, &[])
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn wait_for_rpc(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("agent {} exited with {status}:\n{}", self.name, self.log());
            }
            if handshake(self.rpc_addr()) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "agent {} not answering RPC after {START_TIMEOUT:?}:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    pub fn rpc_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, RPC_PORT))
    }

    pub fn bind_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, GOSSIP_PORT))
    }

    /// The agent's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Whether the process still runs (false once it exited or was reaped).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sets tags on the running agent with `serf tags` (a `member-update`
    /// for the cluster). Panics, showing the output, when the agent refuses.
    pub fn set_tags(&self, tags: &[(&str, &str)]) {
        let mut cmd = Command::new("serf");
        cmd.arg("tags")
            .arg(format!("-rpc-addr={}", self.rpc_addr()));
        for (k, v) in tags {
            cmd.args(["-set", &format!("{k}={v}")]);
        }
        let out = cmd.output().expect("run `serf tags`");
        assert!(
            out.status.success(),
            "serf tags on {}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// How this agent sees member `name` (`alive`, `left`, `failed`, ...),
    /// by `serf members`; `None` when it does not know it.
    pub fn member_status(&self, name: &str) -> Option<String> {
        let out = Command::new("serf")
            .arg("members")
            .arg(format!("-rpc-addr={}", self.rpc_addr()))
            .arg("-format=json")
            .stdin(Stdio::null())
            .output()
            .expect("run `serf members`");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["members"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m["status"].as_str())
            .map(String::from)
    }

    /// SIGKILL, no leave: the cluster sees the node fail.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGINT: the agent leaves the cluster gracefully and exits. Killed
    /// after a while if it does not.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(&child, libc::SIGINT);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                signal(&child, libc::SIGKILL);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- log of serf agent {} ({}) ----\n{}",
                self.name,
                self.ip,
                self.log()
            );
        }
    }
}

/// Whether the agent at `addr` answers the RPC handshake.
fn handshake(addr: SocketAddr) -> bool {
    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Header {
        command: &'static str,
        seq: u64,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Handshake {
        version: i32,
    }
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let mut request = rmp_serde::to_vec_named(&Header {
        command: "handshake",
        seq: 0,
    })
    .expect("encode header");
    rmp_serde::encode::write_named(&mut request, &Handshake { version: 1 }).expect("encode body");
    // Any reply at all means the RPC layer is up.
    let mut reply = [0u8; 1];
    conn.set_read_timeout(Some(Duration::from_secs(1))).is_ok()
        && conn.write_all(&request).is_ok()
        && matches!(conn.read(&mut reply), Ok(1))
}

impl Agent {
    /// Like [`Agent::start`], with further arguments that need not be UTF-8
    /// (a `-node` or `-tag` with arbitrary bytes, as any machine may send).
    /// A later `-node=…` among them overrides the generated name, which
    /// still names the temp dir; [`Agent::name`] stays the generated one.
    pub fn start_os(opts: AgentOpts, extra: &[std::ffi::OsString]) -> Agent {
        let ip = opts.ip.unwrap_or_else(unique_ip);
        let name = opts.name.unwrap_or_else(|| format!("agent-{ip}"));
        let dir = tempfile::Builder::new()
            .prefix("serf-agent-")
            .tempdir()
            .expect("temp dir for the agent");
        let log = dir.path().join("agent.log");
        let log_file = std::fs::File::create(&log).expect("agent log file");
        let mut cmd = Command::new("serf");
        cmd.arg("agent")
            .args(["-node", &name])
            .args(["-bind", &SocketAddr::from((ip, GOSSIP_PORT)).to_string()])
            .args(["-rpc-addr", &SocketAddr::from((ip, RPC_PORT)).to_string()])
            .args(["-log-level", "debug"]);
        for (k, v) in &opts.tags {
            cmd.args(["-tag", &format!("{k}={v}")]);
        }
        if let Some(join) = opts.join {
            cmd.args(["-join", &join.to_string()]);
        }
        if let Some(config) = &opts.config {
            let path = dir.path().join("config.json");
            std::fs::write(&path, config.to_string()).expect("agent config file");
            cmd.arg("-config-file").arg(path);
        }
        cmd.args(&opts.args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file handle"))
            .stderr(log_file);
        let child = cmd
            .spawn()
            .expect("spawn `serf agent` (is serf installed?)");
        let mut agent = Agent {
            child: Some(child),
            name,
            ip,
            log,
            _dir: dir,
        };
        agent.wait_for_rpc();
        agent
    }
}

/// A fleet of agents numbered from 1, each with its log in one directory,
/// at a lower priority than the node under test.
pub struct Agents {
    children: Vec<Child>,
    dir: PathBuf,
    name: fn(usize) -> String,
    nice: Option<libc::c_int>,
}

impl Agents {
    /// Agents named by `name` (numbered from 1), logging into `dir`
    /// (created), at priority `nice` (`None`: the caller's own).
    pub fn new(
        dir: PathBuf,
        name: fn(usize) -> String,
        nice: Option<libc::c_int>,
    ) -> Result<Agents> {
        std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
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
        let log = self.log(n);
        process::new_log(&log)?;
        process::set_death_signal_and_nice(&mut cmd, Some(libc::SIGKILL), self.nice);
        let child = process::spawn_logged(&mut cmd, &log).with_context(|| {
            format!("spawn `serf agent` {} (is serf installed?)", (self.name)(n))
        })?;
        self.children.push(child);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.children.len()
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
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
                    process::tail(&(self.name)(n), &self.log(n), 40)
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
