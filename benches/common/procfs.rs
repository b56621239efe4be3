//! What the benchmarks read from /proc: how busy the machine is, the CPU
//! time and memory of the processes under test, and their children.

use std::fs;
use std::time::Duration;

use anyhow::{Context, Result};

/// Share of the machine's CPU time that was not idle during `over`.
pub fn cpu_busy(over: Duration) -> Result<f64> {
    let (total0, idle0) = cpu_sample()?;
    std::thread::sleep(over);
    let (total1, idle1) = cpu_sample()?;
    let total = total1.saturating_sub(total0).max(1) as f64;
    Ok(100.0 * (1.0 - idle1.saturating_sub(idle0) as f64 / total))
}

/// The machine's CPU time so far, all and idle, in ticks.
pub fn cpu_sample() -> Result<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .context("no cpu line in /proc/stat")?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait …: idle and iowait are not busy.
    let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    Ok((cpu.iter().sum(), idle))
}

/// CPU time (user + system) used so far by `pids`, in ms.
pub fn cpu_ms(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks as f64 * 1e3 / hz
}

/// CPU time (user + system) used so far by process `pid` and all its
/// threads, those that already exited included, in ms at nanosecond
/// resolution: the kernel's own sum of each thread's run time, read through
/// the process's CPU-time clock (`clock_getcpuclockid`). Unlike the tick
/// counts of [`cpu_ms`] it resolves a single change's cost, and unlike
/// summing `/proc/<pid>/task/*/schedstat` it keeps what threads that came
/// and went (a runtime's blocking threads) used.
pub fn cpu_clock_ms(pid: u32) -> Result<f64> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a valid out-pointer for the call's duration.
    let rc = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc))
            .with_context(|| format!("the CPU-time clock of process {pid}"));
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for the call's duration.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("read the CPU-time clock of process {pid}"));
    }
    Ok(ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6)
}

/// VmRSS and VmHWM, in KiB.
pub struct ProcMem {
    pub rss: u64,
    pub hwm: u64,
}

pub fn proc_status(pid: u32) -> Result<ProcMem> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let field = |key: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{key} in {path}"))
    };
    Ok(ProcMem {
        rss: field("VmRSS:")?,
        hwm: field("VmHWM:")?,
    })
}

/// Child pids of `pid` from /proc/<pid>/task/*/children (empty if unsupported).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
