//! The Docker daemon restarted under a running parent (a fault of issue 5),
//! on a private `dockerd` of the test's own: the machine's Docker is only
//! asked for the images (`docker save`), never restarted or reconfigured.
//!
//! The private daemon gets its own data root, exec root (and with it its
//! own containerd), pid file, no iptables rules or sysctls, and for its
//! default bridge a bridge link the test makes, on a 10.x subnet outside
//! Docker's default pools. (Not `--bridge none`: a dockerd started with it
//! deletes the link `docker0`, the machine daemon's bridge.) Its API socket
//! is held by the test and handed to each dockerd it starts (`-H fd://`),
//! as systemd's `docker.socket` does on most hosts: so the parent's
//! `-v <socket>:/var/run/docker.sock` stays the daemon's socket across
//! restarts, and a request made while dockerd is down waits for it.
//!
//! One parent (a one-node cluster, run as the README says, on the private
//! daemon's default bridge, with `--restart unless-stopped`) has two
//! children: `reader` reads `serfnodes_by_id.json` and
//! `children_by_name.json` in a loop and records every failed read in a
//! host directory (no `docker exec` while dockerd is down); `crash` exits
//! with status 7 when a file appears in that directory.
//!
//! 1. live restore: dockerd is stopped, stays down a few seconds, and comes
//!    back with the same flags. No read failed in `reader` (whose loop went
//!    on during the outage); the containers are the same ones, `reader` never
//!    restarted; `crash`, made to exit while dockerd was down, is restarted
//!    once dockerd is back (same container, no duplicate); the parent's
//!    daemon logged the outage; `docker kill` of `crash` afterwards is
//!    restarted as before; `children_by_name.json` is current; the journal
//!    has no false `container` event of `reader`.
//! 2. no live restore: a fresh parent on a dockerd without
//!    `--live-restore`, which is restarted (it stops the containers as it
//!    shuts down, and starts those with a restart policy as it comes back):
//!    the parent comes back (same container), adopts its children (the same
//!    containers, none duplicated or left over) and serves the files again.
//!
//! Needs root, `dockerd` (Docker 20.10 or later), the images of
//! scripts/build-images in the machine's Docker, /dev/fuse; fails (does not
//! skip) without them. The daemon, its containers, mounts, processes,
//! network link and directories are removed on drop, also on failure.

mod support;

use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use serfnode_testkit::wait_for_every;
use support::docker::{debian_image, parent_image, DOCKER_POLL, LABEL_CHILD, LABEL_PARENT};
use support::Clock;

/// For anything that starts containers or a daemon; generous for a loaded
/// 2-core machine.
const START: Duration = Duration::from_secs(90);
/// Any one docker CLI call to the private daemon.
const CALL: Duration = Duration::from_secs(60);

/// Runs `cmd` to completion, output captured (in files, so a large output
/// cannot block it); killed past `timeout`.
fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let mut out = tempfile::tempfile().expect("temp file");
    let mut err = tempfile::tempfile().expect("temp file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let status = child.wait().unwrap();
            let _ = writeln!(err, "\n(killed after {timeout:?})");
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |f: &mut std::fs::File| {
        let mut v = Vec::new();
        f.rewind().unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    };
    Output {
        status,
        stdout: read(&mut out),
        stderr: read(&mut err),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A dockerd of the test's own under a short temp dir (a unix socket path
/// is limited to 108 bytes, containerd's sockets live under it).
struct Dockerd {
    dir: tempfile::TempDir,
    /// The API socket, held here across daemon restarts.
    listener: UnixListener,
    process: Option<Child>,
    live_restore: bool,
    /// The default bridge's link, made by the test.
    bridge: String,
    /// Containers whose logs a failure report shows.
    report: Vec<String>,
}

impl Dockerd {
    fn new() -> Dockerd {
        let version = Command::new("dockerd").arg("--version").output();
        match version {
            Ok(out) if out.status.success() => {}
            other => panic!("this test needs `dockerd` (Docker Engine) on PATH: {other:?}"),
        }
        let dir = tempfile::Builder::new()
            .prefix("snrd")
            .tempdir_in("/tmp")
            .expect("temp dir for the private dockerd");
        std::fs::write(dir.path().join("daemon.json"), "{}\n").unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let listener = UnixListener::bind(dir.path().join("sock")).expect("bind the API socket");
        Dockerd {
            dir,
            listener,
            process: None,
            live_restore: true,
            bridge: format!("snrd{}", std::process::id()),
            report: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn host(&self) -> String {
        format!("unix://{}", self.path("sock").display())
    }

    /// The directory bind-mounted at /out in the children.
    fn out(&self) -> PathBuf {
        self.path("out")
    }

    /// Starts dockerd on the held socket (socket activation: fd 3,
    /// LISTEN_FDS, LISTEN_PID) and waits until it answers.
    fn start(&mut self) {
        assert!(self.process.is_none(), "dockerd already running");
        if let Err(e) = self.try_start() {
            panic!("{e}");
        }
    }

    /// [`Dockerd::start`], or why not (for the cleanup, which must not
    /// panic).
    fn try_start(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("dockerd.log"))
            .unwrap();
        let p = |n: &str| self.path(n).display().to_string();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$@\"",
            "sh",
            "dockerd",
            "--config-file",
            &p("daemon.json"),
            "-H",
            "fd://",
            "--data-root",
            &p("d"),
            "--exec-root",
            &p("x"),
            "--pidfile",
            &p("dockerd.pid"),
            "--bridge",
            &self.bridge,
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
        ]);
        if self.live_restore {
            cmd.arg("--live-restore");
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let fd = self.listener.as_raw_fd();
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let r = if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, 3)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("spawn dockerd: {e}"))?;
        self.process = Some(child);
        let start = Instant::now();
        loop {
            let out = self.docker(&["version", "--format", "{{.Server.Version}}"]);
            if out.status.success() {
                return Ok(());
            }
            let exited = self.process.as_mut().and_then(|p| p.try_wait().ok()?);
            if exited.is_some() || start.elapsed() > START {
                self.stop();
                return Err(format!(
                    "the private dockerd did not come up ({exited:?}): {}\n{}",
                    text(&out),
                    self.log_tail(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM, and waits for dockerd to exit (SIGKILL past a minute).
    fn stop(&mut self) {
        let Some(mut p) = self.process.take() else {
            return;
        };
        unsafe { libc::kill(p.id() as libc::pid_t, libc::SIGTERM) };
        let start = Instant::now();
        while matches!(p.try_wait(), Ok(None)) {
            if start.elapsed() > Duration::from_secs(60) {
                eprintln!("private dockerd ignored SIGTERM for a minute: SIGKILL");
                let _ = p.kill();
                let _ = p.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.path("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "==== private dockerd log (tail {n}) ====\n{}",
            lines[lines.len().saturating_sub(n)..].join("\n")
        )
    }

    /// `docker -H <private> ARGS...`, bounded.
    fn docker(&self, args: &[&str]) -> Output {
        run(
            Command::new("docker").arg("-H").arg(self.host()).args(args),
            CALL,
        )
    }

    /// `docker -H <private> ARGS...` that must succeed: trimmed stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "`docker -H {} {}` failed ({}): {}",
            self.host(),
            args.join(" "),
            out.status,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn inspect(&self, container: &str) -> Value {
        let v: Value = serde_json::from_str(&self.ok(&["inspect", container])).unwrap();
        v[0].clone()
    }

    /// The JSON document at `path` in `container`, or why not.
    fn exec_json(&self, container: &str, path: &str) -> Result<Value, String> {
        let out = self.docker(&["exec", container, "cat", path]);
        if !out.status.success() {
            return Err(format!("cat {path} in {container}: {}", text(&out)));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{path}: {e}: {}", text(&out)))
    }

    /// `docker load` of the machine Docker's `images` into this daemon.
    fn load(&self, images: &[String]) {
        for image in images {
            let out = run(
                Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", image]),
                CALL,
            );
            assert!(
                out.status.success(),
                "image {image} is missing in the machine's Docker: run scripts/build-images \
                 first ({})",
                text(&out).trim()
            );
        }
        let script = format!(
            "docker save {} | docker -H {} load",
            images.join(" "),
            self.host()
        );
        let out = run(
            Command::new("sh").args(["-c", &script]),
            Duration::from_secs(300),
        );
        assert!(out.status.success(), "`{script}` failed: {}", text(&out));
    }

    /// The link dockerd takes as its default bridge: its own name, a 10.x
    /// subnet that is not in Docker's default pools.
    fn make_bridge(&self) {
        let addr = format!("10.234.{}.1/24", std::process::id() % 200 + 20);
        for args in [
            vec!["link", "add", "name", &self.bridge, "type", "bridge"],
            vec!["addr", "add", &addr, "dev", &self.bridge],
            vec!["link", "set", &self.bridge, "up"],
        ] {
            let out = run(Command::new("ip").args(&args), CALL);
            assert!(out.status.success(), "ip {args:?}: {}", text(&out));
        }
    }

    /// Everything: containers, network, the daemon, then whatever of it is
    /// left (processes, mounts, the bridge). Never panics.
    fn cleanup(&mut self) {
        if self.process.is_none() && self.path("d").exists() {
            // Containers kept running by live restore need the daemon to go.
            if let Err(e) = self.try_start() {
                eprintln!("cleanup: the private dockerd did not come back: {e}");
            }
        }
        if self.process.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids.iter().map(String::as_str));
                let out = self.docker(&args);
                if !out.status.success() {
                    eprintln!("cleanup: docker rm: {}", text(&out));
                }
            }
            self.stop();
        }
        let root = self.dir.path().display().to_string();
        // Processes of this daemon (its containerd, shims) and what the
        // shims run: found by the root in their command line.
        for _ in 0..3 {
            let ours = processes_mentioning(&root);
            if ours.is_empty() {
                break;
            }
            eprintln!("cleanup: killing leftover processes {ours:?}");
            for pid in &ours {
                for child in children_of(*pid) {
                    unsafe { libc::kill(child, libc::SIGKILL) };
                }
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        for m in mounts_under(self.dir.path()) {
            let c = std::ffi::CString::new(m.clone()).unwrap();
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                eprintln!(
                    "cleanup: umount -l {m}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            let _ = Command::new("ip")
                .args(["link", "del", &self.bridge])
                .status();
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if self.process.is_some() {
                let ps = self.docker(&["ps", "-a", "--no-trunc"]);
                eprintln!("==== docker ps -a (private daemon) ====\n{}", text(&ps));
                for c in &self.report {
                    let out = self.docker(&["logs", "--timestamps", "--tail", "150", c]);
                    eprintln!("==== docker logs {c} (tail 150) ====\n{}", text(&out));
                }
            }
            eprintln!("{}", self.log_tail(60));
        }
        self.cleanup();
        // The temp dir goes after this, now that nothing is mounted in it.
    }
}

/// Pids whose command line contains `needle` (not this process).
fn processes_mentioning(needle: &str) -> Vec<libc::pid_t> {
    let me = std::process::id() as libc::pid_t;
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<libc::pid_t>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if pid != me && String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

fn children_of(parent: libc::pid_t) -> Vec<libc::pid_t> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<libc::pid_t>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...: comm may hold spaces, so after the ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<libc::pid_t>().ok());
        if ppid == Some(parent) {
            pids.push(pid);
        }
    }
    pids
}

/// Mount points under `dir` in this mount namespace, deepest first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(String::from)
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.len()));
    found.dedup();
    found
}

/// The reader child: reads both files in a loop. A failed `cat`, or a
/// document without this node once one had it (the mount is fed by the
/// parent after the child starts), is a failure line in /out/failures; the
/// count of reads (carried over restarts) goes to /out/reads every 20
/// rounds; /out/stop ends it.
fn reader_script(node: &str) -> String {
    format!(
        r#"echo "$(date +%s.%N) start" >> /out/reader-starts; n=$(cat /out/reads 2>/dev/null || echo 0); seen=
while [ ! -e /out/stop ]; do
  for f in serfnodes_by_id children_by_name; do
    if ! doc=$(cat /serfnode/$f.json 2>&1); then
      echo "$(date +%s.%N) $f: cat failed: $doc" >> /out/failures
    else
      case "$f:$doc" in
        serfnodes_by_id:*'"{node}"'*|children_by_name:*'"reader"'*) seen="$seen $f" ;;
        *) case "$seen" in *" $f"*) echo "$(date +%s.%N) $f: $doc" >> /out/failures ;; esac ;;
      esac
    fi
  done
  n=$((n+1))
  if [ $((n % 20)) = 0 ]; then echo $n > /out/reads.tmp; mv /out/reads.tmp /out/reads; fi
done"#
    )
}

/// The crash child: exits 7 when /out/exit-now appears (and removes it).
const CRASH: &str = r#"echo "$(date +%s.%N) start" >> /out/crash-starts
while [ ! -e /out/exit-now ]; do sleep 0.1; done
rm -f /out/exit-now; echo "$(date +%s.%N) exit" >> /out/crash-exits; exit 7"#;

fn lines_of(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn reads(out: &Path) -> u64 {
    std::fs::read_to_string(out.join("reads"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn failures(out: &Path) -> String {
    std::fs::read_to_string(out.join("failures")).unwrap_or_default()
}

/// What the test knows of the parent and its children.
struct Setup {
    parent: String,
    parent_id: String,
    reader: String,
    crash: String,
}

impl Setup {
    /// Names of the containers labelled as children of the parent, with
    /// their child label, ids and states: `name child id state`.
    fn children(&self, d: &Dockerd) -> Vec<(String, String, String, String)> {
        let label = format!("label={LABEL_PARENT}={}", self.parent_id);
        let format =
            format!("{{{{.Names}}}} {{{{.Label \"{LABEL_CHILD}\"}}}} {{{{.ID}}}} {{{{.State}}}}");
        d.ok(&[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &label,
            "--format",
            &format,
        ])
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let get = |i: usize| f.get(i).copied().unwrap_or_default().to_owned();
            (get(0), get(1), get(2), get(3))
        })
        .collect()
    }

    /// Exactly one container per child, both running, and nothing else in
    /// the daemon but the parent: child → container id.
    fn one_running_each(&self, d: &Dockerd) -> Result<(String, String), String> {
        let kids = self.children(d);
        let all = d.ok(&["ps", "-aq", "--no-trunc"]);
        let all: Vec<&str> = all.lines().collect();
        let id_of = |child: &str| -> Result<String, String> {
            let of: Vec<_> = kids.iter().filter(|k| k.1 == child).collect();
            match of[..] {
                [(_, _, id, state)] if state == "running" => Ok(id.clone()),
                _ => Err(format!("want one running {child} container: {kids:?}")),
            }
        };
        let (r, c) = (id_of("reader")?, id_of("crash")?);
        if all.len() != 3 || kids.len() != 2 {
            return Err(format!(
                "want the parent and two children, the daemon has {all:?}: {kids:?}"
            ));
        }
        Ok((r, c))
    }

    /// children_by_name.json in the parent, `child` → its Container info.
    fn listed(&self, d: &Dockerd, child: &str) -> Result<Value, String> {
        let doc = d.exec_json(&self.parent, "/serfnode/children_by_name.json")?;
        doc.get(child)
            .or_else(|| doc.get(format!("{}-{child}", self.parent)))
            .cloned()
            .ok_or(format!("{child} not in children_by_name.json: {doc}"))
    }

    /// children_by_name.json says what `docker inspect` says of each child:
    /// same container, running, same start time.
    fn listed_current(&self, d: &Dockerd) -> Result<(), String> {
        for (child, name) in [("reader", &self.reader), ("crash", &self.crash)] {
            let info = self.listed(d, child)?;
            let now = d.inspect(name);
            for (what, got, want) in [
                ("Id", &info["inspect"]["Id"], &now["Id"]),
                (
                    "State.Running",
                    &info["inspect"]["State"]["Running"],
                    &now["State"]["Running"],
                ),
                (
                    "State.StartedAt",
                    &info["inspect"]["State"]["StartedAt"],
                    &now["State"]["StartedAt"],
                ),
            ] {
                if got != want {
                    return Err(format!(
                        "children_by_name.json: {child}.inspect.{what} is {got}, docker says {want}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The `container` events of `child` in the parent's journal:
    /// (state, exit_code).
    fn container_events(&self, d: &Dockerd, child: &str) -> Vec<(String, Value)> {
        let out = d.ok(&["exec", &self.parent, "cat", "/serfnode/events"]);
        out.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["type"] == "user" && e["name"] == "container")
            .filter(|e| e["payload"]["child"] == child)
            .map(|e| {
                (
                    e["payload"]["state"].as_str().unwrap_or("?").to_owned(),
                    e["payload"]["exit_code"].clone(),
                )
            })
            .collect()
    }
}

/// Waits until the reader's count of reads grew past `from`.
fn reads_go_on(out: &Path, from: u64, what: &str) -> u64 {
    wait_for_every(DOCKER_POLL, START, what, || match reads(out) {
        n if n > from => Ok(n),
        n => Err(format!("{n} reads")),
    })
}

/// Runs parent `name` as the README says (with `--restart
/// unless-stopped`) with the children `reader` and `crash`, whose /out is
/// [`Dockerd::out`].
fn start_parent(d: &mut Dockerd, name: &str) -> Setup {
    let out = d.out();
    let yml_path = d.path("serfnode.yml");
    let child = |child: &str, script: &str| {
        format!(
            "  - {child}:\n      image: {}\n      command: [\"sh\", \"-c\", {}]\n      \
             volumes: [\"{}:/out\"]\n",
            debian_image(),
            serde_json::to_string(script).unwrap(),
            out.display()
        )
    };
    let yml = format!(
        "serfnode:\n  role: web\nchildren:\n{}{}",
        child("reader", &reader_script(name)),
        child("crash", CRASH)
    );
    std::fs::write(&yml_path, yml).unwrap();
    let sock = format!("{}:/var/run/docker.sock", d.path("sock").display());
    let yml_mount = format!("{}:/serfnode.yml:ro", yml_path.display());
    let node = format!("NODE_NAME={name}");
    let s = Setup {
        parent: name.to_owned(),
        parent_id: String::new(),
        reader: format!("{name}-reader"),
        crash: format!("{name}-crash"),
    };
    d.report = vec![s.parent.clone(), s.reader.clone(), s.crash.clone()];
    let parent_id = d.ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--hostname",
        name,
        "--restart",
        "unless-stopped",
        "--device",
        "/dev/fuse",
        "--cap-add",
        "SYS_ADMIN",
        "-v",
        &sock,
        "-v",
        &yml_mount,
        "-e",
        &node,
        "-e",
        "ROLE=web",
        "-e",
        "SERF_PROFILE=local",
        "-e",
        "SERFNODE_LOG=info,serfnode=debug",
        &parent_image(),
        "parent",
    ]);
    Setup { parent_id, ..s }
}

#[test]
fn a_parent_rides_out_docker_daemon_restarts_with_and_without_live_restore() {
    let clock = Clock::new("docker restart test");
    let mut d = Dockerd::new();
    d.make_bridge();
    d.start();
    clock.phase(&format!("private dockerd up on {}", d.host()));
    d.load(&[parent_image(), debian_image()]);
    clock.phase("images loaded into it");
    let parent = format!("snrd-{}-p", std::process::id());
    let out = d.out();
    let s = start_parent(&mut d, &parent);
    let (reader_id, crash_id) = wait_for_every(DOCKER_POLL, START, "both children running", || {
        s.one_running_each(&d)
    });
    let first = reads_go_on(&out, 0, "the reader to read the files");
    wait_for_every(
        DOCKER_POLL,
        START,
        "children_by_name.json to list both children",
        || s.listed_current(&d),
    );
    assert_eq!(failures(&out), "", "reads failed before any restart");
    clock.phase(&format!("parent and children up; {first} reads"));

    // 1. live restore: dockerd down for a few seconds, `crash` exits
    // meanwhile.
    let reader_started = d.inspect(&s.reader)["State"]["StartedAt"].clone();
    let parent_started = d.inspect(&s.parent)["State"]["StartedAt"].clone();
    d.stop();
    clock.phase("private dockerd stopped (live restore)");
    let before = reads(&out);
    std::fs::write(out.join("exit-now"), "").unwrap();
    wait_for_every(
        DOCKER_POLL,
        START,
        "crash to exit while dockerd is down",
        || match lines_of(&out.join("crash-exits")) {
            1 => Ok(()),
            n => Err(format!("{n} exits")),
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    let during = reads_go_on(&out, before, "reads to go on while dockerd is down");
    clock.phase(&format!(
        "dockerd down: reads {before} → {during}, crash exited"
    ));
    d.start();
    clock.phase("private dockerd started again (live restore)");
    let after = reads_go_on(&out, during, "reads to go on after dockerd is back");
    assert_eq!(
        failures(&out),
        "",
        "reads failed in the reader across the dockerd restart"
    );
    let (r, c) = wait_for_every(
        DOCKER_POLL,
        START,
        "crash restarted by serfnode once dockerd is back",
        || {
            let ids = s.one_running_each(&d)?;
            match lines_of(&out.join("crash-starts")) {
                2 => Ok(ids),
                n => Err(format!("crash started {n} times")),
            }
        },
    );
    assert_eq!(
        (&r, &c),
        (&reader_id, &crash_id),
        "children replaced, not kept"
    );
    let p = d.inspect(&s.parent);
    assert_eq!(p["Id"], s.parent_id.as_str(), "parent replaced");
    assert_eq!(
        p["State"]["StartedAt"], parent_started,
        "the parent restarted under live restore"
    );
    assert_eq!(
        d.inspect(&s.reader)["State"]["StartedAt"],
        reader_started,
        "the reader child was restarted, though it never exited"
    );
    clock.phase(&format!(
        "crash restarted after the outage; {after} reads, none failed"
    ));
    // The daemon says what failed, and that it resumed.
    let logs = text(&d.docker(&["logs", &s.parent]));
    let said = |what: &str| -> Vec<&str> { logs.lines().filter(|l| l.contains(what)).collect() };
    let (outage, back) = (said("docker unreachable"), said("docker answers again"));
    assert!(
        !outage.is_empty() && !back.is_empty(),
        "the parent's log does not tell of the docker outage and its end:\n{logs}"
    );
    clock.phase(&format!(
        "the parent logged: {} / {}",
        outage[0].trim(),
        back[0].trim()
    ));

    // Supervision goes on: a killed child is restarted, the files follow.
    d.ok(&["kill", &s.crash]);
    wait_for_every(
        DOCKER_POLL,
        START,
        "crash restarted after docker kill",
        || {
            s.one_running_each(&d)?;
            match lines_of(&out.join("crash-starts")) {
                3 => Ok(()),
                n => Err(format!("crash started {n} times")),
            }
        },
    );
    wait_for_every(DOCKER_POLL, START, "children_by_name.json current", || {
        s.listed_current(&d)
    });
    let events = s.container_events(&d, "reader");
    assert_eq!(
        events,
        [("started".to_owned(), Value::Null)],
        "the reader's container events (it started once and never exited)"
    );
    let crash_events = s.container_events(&d, "crash");
    let want = [
        ("started", Value::Null),
        ("exited", Value::from(7)),
        ("started", Value::Null),
        ("exited", Value::from(137)),
        ("started", Value::Null),
    ]
    .map(|(s, c)| (s.to_owned(), c));
    wait_for_every(
        DOCKER_POLL,
        Duration::from_secs(10),
        "crash's container events",
        || {
            let got = s.container_events(&d, "crash");
            (got == want).then_some(()).ok_or(format!("{got:?}"))
        },
    );
    let _ = crash_events;
    clock.phase("after the outage: docker kill of crash restarted it, files current");

    // 2. no live restore: a daemon that stops the containers as it shuts
    // down, and starts those with a restart policy as it comes back. (The
    // parent and children of step 1 go first: a dockerd started without
    // live restore stops the containers a live-restore one left running,
    // and Docker does not start them again, restart policy or not.)
    d.ok(&["rm", "-f", &s.parent]);
    let left: Vec<String> = s.children(&d).into_iter().map(|c| c.2).collect();
    if !left.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(left.iter().map(String::as_str));
        d.ok(&args);
    }
    d.stop();
    d.live_restore = false;
    d.start();
    let s = start_parent(&mut d, &format!("snrd-{}-q", std::process::id()));
    let (reader_id, crash_id) = wait_for_every(
        DOCKER_POLL,
        START,
        "both children of the new parent running",
        || s.one_running_each(&d),
    );
    wait_for_every(
        DOCKER_POLL,
        START,
        "children_by_name.json to list both children",
        || s.listed_current(&d),
    );
    let starts = lines_of(&out.join("reader-starts"));
    reads_go_on(&out, reads(&out), "the new reader to read the files");
    clock.phase("without live restore: a new parent and children up");
    let parent_started = d.inspect(&s.parent)["State"]["StartedAt"].clone();
    d.stop();
    d.start();
    clock.phase("dockerd restarted, without live restore");
    wait_for_every(
        DOCKER_POLL,
        START,
        "the reader started again",
        || match lines_of(&out.join("reader-starts")) {
            n if n > starts => Ok(()),
            n => Err(format!("{n} starts")),
        },
    );
    let (r, c) = wait_for_every(
        DOCKER_POLL,
        START,
        "both children running after the restart",
        || s.one_running_each(&d),
    );
    assert_eq!(
        (&r, &c),
        (&reader_id, &crash_id),
        "children replaced, not adopted"
    );
    let p = d.inspect(&s.parent);
    assert_eq!(p["Id"], s.parent_id.as_str(), "parent replaced");
    assert_ne!(
        p["State"]["StartedAt"], parent_started,
        "the parent did not restart"
    );
    let n = reads(&out);
    reads_go_on(&out, n, "reads to go on after the restart");
    wait_for_every(DOCKER_POLL, START, "children_by_name.json current", || {
        s.listed_current(&d)
    });
    assert_eq!(
        failures(&out),
        "",
        "reads failed in the reader after the restart"
    );
    clock.phase("restart without live restore: parent back, children adopted, files served");
    std::fs::write(out.join("stop"), "").unwrap();
}
