//! `serfnode parent`: PID 1 of a parent container. It runs the daemon as its
//! child (`serfnode agent --docker ...`, same arguments) and restarts it when
//! it dies, so a daemon crash costs neither the container, nor its network
//! namespace, nor the children sharing it: their mounts serve the last view
//! (stale) until the new daemon is back.

use std::ffi::OsString;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::backoff::Backoff;
use crate::containers::init;

/// `argv` with the `parent` subcommand replaced by `agent --docker`.
pub(crate) fn daemon_args(argv: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::with_capacity(argv.len() + 1);
    let mut replaced = false;
    for a in argv.iter().skip(1) {
        if !replaced && a == "parent" {
            out.push("agent".into());
            out.push("--docker".into());
            replaced = true;
        } else {
            out.push(a.clone());
        }
    }
    out
}

/// Supervises the daemon until it exits because we were asked to stop;
/// returns its exit code.
pub async fn run(argv: Vec<OsString>) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("find the serfnode executable")?;
    let args = daemon_args(&argv);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let started = Instant::now();
        let caught = init::catch()?;
        let child = Command::new(&exe)
            .args(&args)
            .spawn()
            .with_context(|| format!("start {}", exe.display()))?;
        let pid = child.id() as libc::pid_t;
        tracing::info!(pid, "serfnode daemon started");
        let exit = init::wait_forwarding(pid, caught).await?;
        if exit.asked {
            return Ok(exit.code);
        }
        if exit.code == 1 && started.elapsed() < Duration::from_secs(2) {
            // A configuration error fails fast and would fail again.
            anyhow::bail!("serfnode daemon failed at start (exit code 1); see the log above");
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::warn!(
            code = exit.code,
            "serfnode daemon died; restarting in {delay:?}"
        );
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_gets_the_same_arguments_as_agent_with_docker() {
        let argv: Vec<OsString> = ["serfnode", "--log", "debug", "parent", "--role", "parent"]
            .map(OsString::from)
            .into();
        let args: Vec<String> = daemon_args(&argv)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            ["--log", "debug", "agent", "--docker", "--role", "parent"]
        );
    }
}
