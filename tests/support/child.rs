//! A `serfnode child` wrapper on the host, fed by a parent daemon's share
//! socket (the container tests run the same binary inside Docker): its own
//! mount in a temp dir; killed, reaped and unmounted on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::node::{detach, is_mounted, Daemon, DaemonOpts, SERFNODE};

const T: Duration = Duration::from_secs(30);

pub struct Wrapped {
    pub mount: PathBuf,
    pub child: Child,
    _dir: tempfile::TempDir,
}

impl Wrapped {
    /// `serfnode child --name NAME [EXTRA] -- CMD` against `share`'s socket.
    pub fn start(share: &Path, name: &str, extra: &[&str], cmd: &[&str]) -> Wrapped {
        Wrapped::start_ignoring(share, name, extra, cmd, &[])
    }

    /// As `start`, with the wrapper started with `ignored` signals set to
    /// SIG_IGN, as `nohup` or a careless supervisor starts it.
    pub fn start_ignoring(
        share: &Path,
        name: &str,
        extra: &[&str],
        cmd: &[&str],
        ignored: &[libc::c_int],
    ) -> Wrapped {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("mnt");
        let ignored = ignored.to_vec();
        let mut command = Command::new(SERFNODE);
        // SAFETY: signal(2) only, async-signal-safe between fork and exec.
        unsafe {
            command.pre_exec(move || {
                for &sig in &ignored {
                    libc::signal(sig, libc::SIG_IGN);
                }
                Ok(())
            });
        }
        let child = command
            .args(["child", "--name", name, "--me-link", "none"])
            .arg("--socket")
            .arg(share.join("replica.sock"))
            .arg("--mount")
            .arg(&mount)
            .args(extra)
            .arg("--")
            .args(cmd)
            .env("SERFNODE_LOG", "info,serfnode=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Wrapped {
            mount,
            child,
            _dir: dir,
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.mount.join(file)
    }

    pub fn json(&self, file: &str) -> Option<Value> {
        serde_json::from_slice(&std::fs::read(self.mount.join(file)).ok()?).ok()
    }

    pub fn wait_json(&self, file: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + T;
        loop {
            if let Some(v) = self.json(file).filter(|v| pred(v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{file} in the child never matched: {:?}",
                self.json(file)
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits for the wrapper to exit: its status and what it printed.
    pub fn finish(mut self, timeout: Duration) -> (i32, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut out = String::new();
                use std::io::Read;
                self.child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                assert!(!is_mounted(&self.mount), "child mount left behind");
                return (status.code().unwrap_or(-1), out);
            }
            assert!(Instant::now() < deadline, "wrapper did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Wrapped {
    fn drop(&mut self) {
        // SIGTERM first: the wrapper forwards it to the application and
        // ends after it. A SIGKILL alone would leave the application running
        // (on the host nothing else ends it, as a container's end would).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if is_mounted(&self.mount) {
            detach(&self.mount);
        }
    }
}

/// A parent daemon (role web) serving children over `share`'s socket, with
/// further arguments and environment.
pub fn parent_with(name: &str, share: &Path, args: &[&str], env: Vec<(String, String)>) -> Daemon {
    let mut all = vec!["--share".to_string(), share.to_str().unwrap().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    Daemon::start(DaemonOpts {
        name: name.into(),
        role: "web".into(),
        args: all,
        env,
        ..DaemonOpts::default()
    })
}

/// A parent daemon (role web) serving children over `share`'s socket.
pub fn parent(name: &str, share: &Path) -> Daemon {
    parent_with(name, share, &[], Vec::new())
}
