//! The daemon in the integration tests: the kit's [`Daemon`] fixture, and
//! what only these tests ask of it (single writes, journal lines,
//! libfaketime, operator commands).

use std::path::Path;
use std::process::{Command, Stdio};

#[allow(unused_imports)]
pub use serfnode_testkit::daemon::{agent_pid, journal_lines, Daemon, DaemonOpts};
#[allow(unused_imports)]
pub use serfnode_testkit::process::{detach, is_mounted, rss_kib, signal_pid, stop_pid};

pub const SERFNODE: &str = env!("CARGO_BIN_EXE_serfnode");

/// One write(2) of `bytes` to `path`: the byte count, or the errno (what a
/// writer of the write node sees, short counts included).
pub fn raw_write(path: &Path, bytes: &[u8]) -> Result<usize, i32> {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    // SAFETY: write(2) from a live buffer on an open fd.
    let n = unsafe { libc::write(f.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(n as usize)
    }
}

/// libfaketime, which `scripts/setup` installs (Debian's `faketime`).
pub const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The environment that runs a daemon under libfaketime with its wall
/// clock offset by what `offset` holds (e.g. `+0`, `-1h`; re-read on every
/// call), monotonic time untouched, as on a host whose clock is stepped.
/// (Serf, a Go program, does not read the clock through libc.)
pub fn faketime_env(offset: &Path) -> Vec<(String, String)> {
    assert!(
        Path::new(FAKETIME).exists(),
        "{FAKETIME} missing: scripts/setup installs Debian's faketime"
    );
    vec![
        ("LD_PRELOAD".to_string(), FAKETIME.to_string()),
        (
            "FAKETIME_TIMESTAMP_FILE".to_string(),
            offset.display().to_string(),
        ),
        ("FAKETIME_NO_CACHE".to_string(), "1".to_string()),
        ("DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
    ]
}

/// Runs a `serfnode` operator command with `stdin` as its input: whether it
/// succeeded, its stdout and its stderr.
pub fn operator(args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(SERFNODE)
        .args(args)
        .env_remove("SERFNODE_MOUNT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serfnode");
    let mut input = child.stdin.take().expect("piped stdin");
    // A command that does not read its input may have exited already.
    let _ = input.write_all(stdin);
    drop(input);
    let out = child.wait_with_output().expect("wait for serfnode");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
