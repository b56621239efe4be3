//! PID 1's duties for a process that runs one main child: forward the
//! signals that stop or steer it, reap every zombie (orphans of a container
//! are reparented to PID 1) except the handlers this process runs itself,
//! and report how the main child ended. Used by
//! `serfnode child` (around the application) and `serfnode parent` (around
//! the daemon).

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How the main child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exit {
    /// Its exit code, or 128 + the signal that killed it.
    pub code: i32,
    /// Whether we forwarded a terminating signal (SIGTERM, SIGINT, SIGHUP,
    /// SIGQUIT) to it: an end asked for, not a crash.
    pub asked: bool,
}

const FORWARDED: [fn() -> SignalKind; 7] = [
    SignalKind::terminate,
    SignalKind::interrupt,
    SignalKind::hangup,
    SignalKind::quit,
    SignalKind::user_defined1,
    SignalKind::user_defined2,
    SignalKind::window_change,
];

/// The forwarded signals, caught from before the main child starts: one
/// that comes meanwhile is forwarded once it runs, and the child starts
/// with each at its default action, whatever this process was given (a
/// signal ignored here, as under `nohup`, would stay ignored across exec:
/// an application could then neither die of it nor trap it).
pub(crate) struct Caught(Vec<(SignalKind, tokio::signal::unix::Signal)>);

/// Catches the forwarded signals; call it before starting the main child.
pub(crate) fn catch() -> anyhow::Result<Caught> {
    FORWARDED
        .map(|k| k())
        .into_iter()
        .map(|kind| Ok((kind, signal(kind).context("install signal handlers")?)))
        .collect::<anyhow::Result<_>>()
        .map(Caught)
}

/// Waits for `main` to exit, forwarding the `caught` signals to it and
/// reaping others.
pub(crate) async fn wait_forwarding(main: libc::pid_t, caught: Caught) -> anyhow::Result<Exit> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || {
            let _ = tx.send(reap_until(main));
        })
        .context("start the reaper thread")?;
    let (asked_tx, mut asked_rx) = tokio::sync::watch::channel(false);
    let mut forwarders = Vec::new();
    for (kind, mut sig) in caught.0 {
        let asked = asked_tx.clone();
        forwarders.push(tokio::spawn(async move {
            while sig.recv().await.is_some() {
                let raw = kind.as_raw_value();
                if [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT].contains(&raw) {
                    asked.send_replace(true);
                }
                // SAFETY: kill(2) on the main child's pid. Forwarders are
                // aborted as soon as the reaper reports it, so only a signal
                // racing that instant could reach a reused pid.
                unsafe { libc::kill(main, raw) };
            }
        }));
    }
    let code = rx.await.context("reaper thread died")?;
    for f in forwarders {
        f.abort();
    }
    let asked = *asked_rx.borrow_and_update();
    Ok(Exit { code, asked })
}

fn reap_until(main: libc::pid_t) -> i32 {
    loop {
        // Peek first: the handlers this process runs are reaped by tokio,
        // which needs their exit status.
        // SAFETY: waitid(2) with a zeroed siginfo_t out pointer.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                // Cannot happen while the main child lives; never spin if it does.
                Some(libc::ECHILD) => return 255,
                _ => continue,
            }
        }
        // SAFETY: waitid filled `info` for an exited child.
        let pid = unsafe { info.si_pid() };
        if crate::surface::handlers::is_handler_pid(pid) {
            // tokio reaps it as soon as its SIGCHLD is handled.
            std::thread::sleep(std::time::Duration::from_millis(1));
            continue;
        }
        let mut status = 0;
        // SAFETY: waitpid(2) with a valid out pointer.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
            continue;
        }
        if pid == main {
            if libc::WIFEXITED(status) {
                return libc::WEXITSTATUS(status);
            }
            return 128 + libc::WTERMSIG(status);
        }
    }
}
