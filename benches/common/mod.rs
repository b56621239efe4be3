//! What both benchmarks need to run processes and mounts and leave none
//! behind: progress lines, a subreaper that reaps orphaned descendants,
//! signals, mount checks and log tails.

use std::fs;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

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
