//! Processes and mounts the tests and benchmarks start, and leaving none
//! behind: spawning with a death signal and a priority, signals, a
//! subreaper for orphaned descendants, stopping a process for sure, what
//! /proc says of a process (children, RSS), mount checks and log tails.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::wait::wait_for;

/// A benchmark's progress line on stderr (the figures go to stdout).
#[macro_export]
macro_rules! progress {
    ($($arg:tt)*) => { eprintln!("· {}", format_args!($($arg)*)) };
}

/// Makes this process the reaper of its orphaned descendants (serfnode's
/// agent, should serfnode die first) and reaps them on drop, also on panic:
/// this machine's init does not, and they would stay as zombies.
pub struct Reaper;

impl Reaper {
    pub fn new() -> Result<Reaper> {
        // SAFETY: prctl(2) with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        ensure!(
            rc == 0,
            "prctl(PR_SET_CHILD_SUBREAPER): {}",
            std::io::Error::last_os_error()
        );
        Ok(Reaper)
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut reaped = 0;
        loop {
            // SAFETY: waitpid(2) for any child, without blocking; every child
            // the caller waits for itself is reaped by now.
            match unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } {
                pid if pid > 0 => reaped += 1,
                0 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                0 => {
                    eprintln!("cleanup: a descendant is still running after 5 s");
                    break;
                }
                _ => break, // ECHILD: none left
            }
        }
        if reaped > 0 {
            progress!("reaped {reaped} orphaned descendant(s)");
        }
    }
}

/// Has `cmd`'s process get `death_signal` when the thread that spawns it
/// dies (so a killed benchmark leaves nothing behind) and run at priority
/// `nice`; `None` leaves each as it is.
pub fn set_death_signal_and_nice(
    cmd: &mut Command,
    death_signal: Option<libc::c_int>,
    nice: Option<libc::c_int>,
) {
    if death_signal.is_none() && nice.is_none() {
        return;
    }
    // SAFETY: prctl(2) and setpriority(2) are plain syscalls, safe between
    // fork and exec; the closure touches no shared state.
    unsafe {
        cmd.pre_exec(move || {
            if death_signal.is_some_and(|s| libc::prctl(libc::PR_SET_PDEATHSIG, s) != 0)
                || nice.is_some_and(|n| libc::setpriority(libc::PRIO_PROCESS, 0, n) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Spawns `cmd` (again, for a relaunch) with its output appended to `log`.
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().context("log file handle")?)
        .stderr(out);
    cmd.spawn()
        .with_context(|| format!("spawn {:?}", cmd.get_program()))
}

/// Creates (truncates) `log` for [`spawn_logged`].
pub fn new_log(log: &Path) -> Result<()> {
    File::create(log).with_context(|| format!("create {}", log.display()))?;
    Ok(())
}

/// Sends `sig` to our own child (not yet reaped).
pub fn signal(child: &Child, sig: libc::c_int) {
    signal_pid(i32::try_from(child.id()).expect("pid fits pid_t"), sig);
}

/// Sends `sig` to process `pid` (a daemon, its agent, a wrapper).
pub fn signal_pid(pid: i32, sig: libc::c_int) {
    // SAFETY: plain kill(2); a stale pid at worst gets ESRCH.
    unsafe { libc::kill(pid, sig) };
}

/// Stops process `pid` (SIGSTOP) and waits until every thread of it is
/// stopped: kill(2) returns before the stop takes effect.
pub fn stop_pid(pid: i32) {
    signal_pid(pid, libc::SIGSTOP);
    wait_for(
        Duration::from_secs(10),
        &format!("process {pid} to stop"),
        || {
            let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
                return false;
            };
            tasks.filter_map(Result::ok).all(|t| {
                let stat = fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                let state = stat
                    .rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().next());
                matches!(state, Some("T" | "t"))
            })
        },
    );
}

/// The direct children of `pid` named `comm` (e.g. `serf`), from /proc.
pub fn children_named(pid: i32, comm: &str) -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().into_string().ok()?.parse::<i32>().ok())
                .filter(|p| {
                    let stat = fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                    // pid (comm) state ppid ...: comm may hold spaces, not ')'.
                    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
                    after.split_whitespace().nth(1) == Some(&pid.to_string())
                        && stat.contains(&format!("({comm})"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `VmRSS` of process `pid` in KiB, from /proc; None once it is gone.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// Whether something is mounted at `path` (this process's mount table).
pub fn is_mounted(path: &Path) -> bool {
    let Some(p) = path.to_str() else { return false };
    fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|info| info.lines().any(|l| l.split(' ').nth(4) == Some(p)))
}

/// Detaches whatever is mounted at `path` (lazily: a dead FUSE mount too).
pub fn detach(path: &Path) {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: umount2(2) on a NUL-terminated path we own.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

/// The last `lines` lines of a log file, under a heading naming `what`.
pub fn tail(what: &str, log: &Path, lines: usize) -> String {
    let text = fs::read_to_string(log).unwrap_or_else(|e| format!("(no log: {e})"));
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    format!("--- {what} log (tail) ---\n{}", all[from..].join("\n"))
}
