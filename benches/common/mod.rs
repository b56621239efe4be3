//! What every benchmark needs to run processes and mounts and leave none
//! behind: progress lines, a subreaper that reaps orphaned descendants,
//! signals, mount checks and log tails; and, in submodules, how figures are
//! printed ([`report`]), what is read from /proc ([`procfs`]), a serfnode
//! daemon under test ([`daemon`]), raw serf agents beside it ([`agents`])
//! and synthetic members ([`synth`]).

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

macro_rules! progress {
    ($($arg:tt)*) => { eprintln!("· {}", format_args!($($arg)*)) };
}

// Each bench uses a part of these.
#[allow(dead_code)]
pub mod agents;
#[allow(dead_code)]
pub mod daemon;
#[allow(dead_code)]
pub mod procfs;
#[allow(dead_code)]
pub mod report;
#[allow(dead_code)]
pub mod synth;

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
            // the bench waits for itself is reaped by now.
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

/// Spawns `cmd` with its output in `log`, at priority `nice` (`None`: the
/// bench's own). The child gets `death_signal` when the spawning (main)
/// thread dies, so a killed bench leaves nothing behind.
pub fn spawn(
    mut cmd: Command,
    log: &Path,
    death_signal: libc::c_int,
    nice: Option<libc::c_int>,
) -> Result<Child> {
    let out = File::create(log).with_context(|| format!("create {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().context("log file handle")?)
        .stderr(out);
    // SAFETY: prctl(2) and setpriority(2) are plain syscalls, safe between
    // fork and exec; the closure touches no shared state.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal) != 0
                || nice.is_some_and(|n| libc::setpriority(libc::PRIO_PROCESS, 0, n) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("spawn {:?}", cmd.get_program()))
}

pub fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(pid, sig) };
}

pub fn is_mounted(path: &Path) -> bool {
    let Some(p) = path.to_str() else { return false };
    fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|info| info.lines().any(|l| l.split(' ').nth(4) == Some(p)))
}

pub fn detach(path: &Path) {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: umount2(2) on a NUL-terminated path we own.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

/// The last lines of a log file.
pub fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_else(|e| format!("(no log: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(40);
    format!(
        "--- {} (tail) ---\n{}",
        log.display(),
        lines[from..].join("\n")
    )
}
