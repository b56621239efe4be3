//! Real Docker for the container tests: parent containers of the serfnode
//! image on a network of their own, `docker exec` into them and their
//! children, and a `serf monitor` that records the user events a node sees.
//!
//! A [`Cluster`] owns everything a test creates: the network, the parent
//! containers, every child container (found by the `serfnode.parent` label
//! of its parents and by the run's name prefix), the parents' anonymous
//! volumes and the temp dir with their `serfnode.yml`. Dropping it removes
//! all of them, also when the test panics, after printing the parents'
//! `docker logs`.
//!
//! The images come from `scripts/build-images`; when Docker or an image is
//! missing, [`Cluster::new`] panics saying so (the test fails, never skips).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use serfnode_testkit::wait_for_every;

/// The child label of the parent's container id, and of the child's name.
pub const LABEL_PARENT: &str = "serfnode.parent";
pub const LABEL_CHILD: &str = "serfnode.child";

/// Image names as scripts/lib-images.sh has them (same overrides).
pub fn parent_image() -> String {
    std::env::var("SERFNODE_IMAGE").unwrap_or_else(|_| "serfnode:dev".into())
}
pub fn debian_image() -> String {
    std::env::var("SERFNODE_TEST_DEBIAN_IMAGE")
        .unwrap_or_else(|_| "serfnode-test-debian:dev".into())
}
pub fn busybox_image() -> String {
    std::env::var("SERFNODE_TEST_BUSYBOX_IMAGE")
        .unwrap_or_else(|_| "serfnode-test-busybox:dev".into())
}

/// `docker ARGS...`, output captured; panics only when docker cannot be run.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `docker` ({e}): is Docker installed?"))
}

/// `docker ARGS...` that must succeed: its trimmed stdout, or a panic with
/// the command and its stderr.
fn ps_children(parent: &Parent) -> Output {
    let label = format!("label={LABEL_PARENT}={}", parent.id);
    docker(&["ps", "-a", "--filter", &label, "--format", "{{.Names}}"])
}

fn names(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    if !out.status.success() {
        panic!(
            "`docker {}` failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `docker exec CONTAINER sh -c SCRIPT`: Ok(stdout) on exit 0, else
/// Err(status, stdout and stderr).
pub fn exec_sh(container: &str, script: &str) -> Result<String, String> {
    let out = docker(&["exec", container, "sh", "-c", script]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`docker exec {container} sh -c {script:?}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A child's command that runs, as the application itself (under the
/// wrapper, with the application's privileges, user and environment), each
/// script [`app_sh`] drops into `/tmp/app`: `docker exec` would run it with
/// the container's privileges instead, which the wrapper keeps from the
/// application.
pub const APP_SHELL: &str = r#"mkdir -p /tmp/app; while :; do for f in /tmp/app/*.run; do [ -e "$f" ] || continue; sh "$f" > "${f%.run}.out" 2>&1; echo $? > "${f%.run}.rc.tmp"; mv "${f%.run}.rc.tmp" "${f%.run}.rc"; rm -f "$f"; done; sleep 0.05; done"#;

/// Runs `script` in `container` as its application (whose command must be
/// [`APP_SHELL`]): Ok(output) on exit 0, else Err(status and output).
/// Panics when no answer comes within `timeout`.
pub fn app_sh(container: &str, script: &str, timeout: Duration) -> Result<String, String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = format!("/tmp/app/{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let drop_in = format!(
        "mkdir -p /tmp/app && cat > {n}.tmp <<'SERFNODE_TEST_EOF'\n{script}\nSERFNODE_TEST_EOF\nmv {n}.tmp {n}.run"
    );
    exec_sh(container, &drop_in).unwrap_or_else(|e| panic!("{e}"));
    let rc = wait_for_every(
        DOCKER_POLL,
        timeout,
        &format!("the application of {container} to run {script:?}"),
        || exec_sh(container, &format!("cat {n}.rc")),
    );
    let out = exec_sh(container, &format!("cat {n}.out; rm -f {n}.out {n}.rc")).unwrap_or_default();
    match rc.trim() {
        "0" => Ok(out),
        rc => Err(format!(
            "exit {rc} in the application of {container}: {out}"
        )),
    }
}

/// The JSON document at `path` inside `container` (`docker exec cat`), or
/// why not.
pub fn try_exec_json(container: &str, path: &str) -> Result<Value, String> {
    let out = docker(&["exec", container, "cat", path]);
    if !out.status.success() {
        return Err(format!(
            "`docker exec {container} cat {path}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "{path} in {container} is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The JSON document at `path` inside `container`; panics when unreadable.
pub fn exec_json(container: &str, path: &str) -> Value {
    try_exec_json(container, path).unwrap_or_else(|e| panic!("{e}"))
}

/// `docker inspect CONTAINER`, its one object.
pub fn inspect(container: &str) -> Value {
    let text = docker_ok(&["inspect", container]);
    let v: Value = serde_json::from_str(&text).expect("docker inspect is JSON");
    v[0].clone()
}

/// `status` of member `node` in `members/<node>.json` as `container` (a
/// parent or a child) sees it.
pub fn member_status(container: &str, node: &str) -> Result<String, String> {
    let m = try_exec_json(container, &format!("/serfnode/members/{node}.json"))?;
    m["status"]
        .as_str()
        .map(String::from)
        .ok_or(format!("no status: {m}"))
}

/// Waits until `container` sees member `node` with status `want`.
pub fn wait_status(container: &str, node: &str, want: &str, timeout: Duration) {
    wait_for_every(
        DOCKER_POLL,
        timeout,
        &format!("{node} {want} in {container}"),
        || match member_status(container, node)? {
            s if s == want => Ok(()),
            s => Err(format!("status {s}")),
        },
    );
}

/// How often a condition on a container is re-checked: each look is a
/// `docker` command.
pub const DOCKER_POLL: Duration = Duration::from_millis(200);

/// `<prefix>-<tag>` names that no other run (pid) or cluster (counter)
/// uses: `snct-<pid>-<n>`.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "snct-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Fails the test, saying what to do, unless Docker answers and every image
/// the tests need exists, with a parent image that knows `serfnode parent`.
pub fn require_docker_and_images() {
    let version = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output();
    match version {
        Err(e) => panic!(
            "the container tests need Docker, but `docker` cannot be run ({e}); \
             install Docker and run scripts/build-images"
        ),
        Ok(out) if !out.status.success() => panic!(
            "the container tests need a running Docker Engine, but `docker version` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Ok(_) => {}
    }
    for image in [parent_image(), debian_image(), busybox_image()] {
        let out = docker(&["image", "inspect", "--format", "{{.Id}}", &image]);
        assert!(
            out.status.success(),
            "image {image} is missing: run scripts/build-images first (it builds every \
             image the container tests use, from this repository alone)"
        );
    }
    let help = docker(&["run", "--rm", &parent_image(), "parent", "--help"]);
    assert!(
        help.status.success(),
        "{} has no `serfnode parent` subcommand (built from older sources?): rerun \
         scripts/build-images\n{}",
        parent_image(),
        String::from_utf8_lossy(&help.stderr)
    );
}

/// One parent container of a [`Cluster`].
#[derive(Debug, Clone)]
pub struct Parent {
    /// Container name = hostname = Serf node name.
    pub name: String,
    pub id: String,
    /// Its address on the cluster's network.
    pub ip: String,
}

impl Parent {
    /// The container name of this parent's child `child`.
    pub fn child(&self, child: &str) -> String {
        format!("{}-{child}", self.name)
    }
}

/// A test's network, parents, their children and files; all removed on
/// drop.
pub struct Cluster {
    pub prefix: String,
    pub network: String,
    pub subnet: String,
    pub parents: Vec<Parent>,
    /// Names of containers started (or attempted), found again at drop even
    /// when their id never came back.
    names: Vec<String>,
    volumes: Vec<String>,
    /// Images built for this run ([`Cluster::build_image`]), removed on drop.
    images: Vec<String>,
    dir: tempfile::TempDir,
    network_created: bool,
}

impl Cluster {
    /// Checks Docker and the images, then creates a bridge network of its
    /// own with a user-configured subnet (so a parent can be reconnected at
    /// the same address).
    pub fn new() -> Cluster {
        require_docker_and_images();
        sweep_dead_runs();
        let prefix = unique_prefix();
        let mut cluster = Cluster {
            network: format!("{prefix}-net"),
            prefix,
            subnet: String::new(),
            parents: Vec::new(),
            names: Vec::new(),
            volumes: Vec::new(),
            images: Vec::new(),
            dir: tempfile::Builder::new()
                .prefix("serfnode-ctest-")
                .tempdir()
                .expect("temp dir for the cluster"),
            network_created: false,
        };
        // Let Docker pick a free pool, then recreate the network with that
        // pool as a user-configured subnet (`docker network connect --ip`
        // needs one). Another network may take the pool in between: retry.
        let mut attempts = 0;
        loop {
            attempts += 1;
            docker_ok(&["network", "create", &cluster.network]);
            cluster.network_created = true;
            let subnet = docker_ok(&[
                "network",
                "inspect",
                "--format",
                "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
                &cluster.network,
            ]);
            let subnet = subnet
                .split_whitespace()
                .find(|s| !s.contains(':'))
                .unwrap_or_else(|| panic!("network {} has no IPv4 subnet", cluster.network))
                .to_owned();
            docker_ok(&["network", "rm", &cluster.network]);
            cluster.network_created = false;
            let out = docker(&["network", "create", "--subnet", &subnet, &cluster.network]);
            if out.status.success() {
                cluster.network_created = true;
                cluster.subnet = subnet;
                return cluster;
            }
            assert!(
                attempts < 5,
                "`docker network create --subnet {subnet} {}` failed: {}",
                cluster.network,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// A name under this cluster's prefix.
    pub fn name(&self, tag: &str) -> String {
        format!("{}-{tag}", self.prefix)
    }

    /// Starts parent `<prefix>-<tag>` with `yml` as its /serfnode.yml, as
    /// the README says a parent is run; returns once Docker reports it
    /// running, with its address on the network.
    pub fn start_parent(
        &mut self,
        tag: &str,
        role: &str,
        peer: Option<&Parent>,
        yml: &str,
    ) -> Parent {
        self.start_parent_with(tag, role, peer, yml, &[])
    }

    /// [`Cluster::start_parent`] with more `docker run` arguments (`-e`,
    /// `--ulimit`, ...) before the image.
    pub fn start_parent_with(
        &mut self,
        tag: &str,
        role: &str,
        peer: Option<&Parent>,
        yml: &str,
        extra: &[String],
    ) -> Parent {
        let name = self.name(tag);
        let dir = self.dir.path().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let yml_path: PathBuf = dir.join("serfnode.yml");
        std::fs::write(&yml_path, yml).unwrap();
        self.names.push(name.clone());

        let volume = format!("{}:/serfnode.yml:ro", yml_path.display());
        let node = format!("NODE_NAME={name}");
        let role_env = format!("ROLE={role}");
        let peer_env = peer.map(|p| format!("PEER={}:7946", p.name));
        let image = parent_image();
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            &name,
            "--network",
            &self.network,
            "--device",
            "/dev/fuse",
            "--cap-add",
            "SYS_ADMIN",
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-v",
            &volume,
            "-e",
            &node,
            "-e",
            &role_env,
            "-e",
            "SERF_PROFILE=local",
            "-e",
            "SERFNODE_LOG=info,serfnode=debug",
        ];
        if let Some(peer) = &peer_env {
            args.extend(["-e", peer.as_str()]);
        }
        args.extend(extra.iter().map(String::as_str));
        args.extend([image.as_str(), "parent"]);
        let id = docker_ok(&args);
        let volumes = docker_ok(&[
            "inspect",
            "--format",
            "{{range .Mounts}}{{if eq .Type \"volume\"}}{{.Name}} {{end}}{{end}}",
            &id,
        ]);
        self.volumes
            .extend(volumes.split_whitespace().map(String::from));
        let ip = docker_ok(&[
            "inspect",
            "--format",
            &format!(
                "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
                self.network
            ),
            &id,
        ]);
        assert!(
            !ip.is_empty(),
            "parent {name} has no address on {}",
            self.network
        );
        let parent = Parent { name, id, ip };
        self.parents.push(parent.clone());
        parent
    }

    /// Builds image `<prefix>-<tag>` from `dockerfile` with `files` in its
    /// context (no registry: FROM one of the local images); removed on drop.
    pub fn build_image(&mut self, tag: &str, dockerfile: &str, files: &[(&str, &str)]) -> String {
        let image = self.name(tag);
        let context = self.dir.path().join(format!("image-{tag}"));
        std::fs::create_dir_all(&context).unwrap();
        std::fs::write(context.join("Dockerfile"), dockerfile).unwrap();
        for (name, text) in files {
            std::fs::write(context.join(name), text).unwrap();
        }
        self.images.push(image.clone());
        docker_ok(&["build", "-q", "-t", &image, &context.display().to_string()]);
        image
    }

    /// Ids of every container this cluster created that still exists:
    /// the parents, and any container carrying the `serfnode.parent` label of
    /// one of them or a name under the prefix.
    pub fn leftovers(&self) -> Vec<String> {
        let mut ids = Vec::new();
        let all = docker(&[
            "ps",
            "-a",
            "--no-trunc",
            "--format",
            &format!("{{{{.ID}}}} {{{{.Names}}}} {{{{.Label \"{LABEL_PARENT}\"}}}}"),
        ]);
        for line in String::from_utf8_lossy(&all.stdout).lines() {
            let mut it = line.split_whitespace();
            let (Some(id), Some(name)) = (it.next(), it.next()) else {
                continue;
            };
            let label = it.next().unwrap_or("");
            let ours = name.starts_with(&format!("{}-", self.prefix))
                || self.names.iter().any(|n| n == name)
                || self
                    .parents
                    .iter()
                    .any(|p| p.id == id || (!label.is_empty() && p.id == label));
            if ours {
                ids.push(id.to_owned());
            }
        }
        ids
    }

    /// Children (any state) labelled as children of `parent`; panics if
    /// `docker ps` fails.
    pub fn children_of(&self, parent: &Parent) -> Vec<String> {
        let out = ps_children(parent);
        assert!(
            out.status.success(),
            "`docker ps` for the children of {} failed: {out:?}",
            parent.name
        );
        names(&out)
    }

    /// The `docker logs` of every parent (tail) and of their children
    /// (shorter tail), for a failure report.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for p in &self.parents {
            text += &format!("==== docker logs {} (parent, tail 300) ====\n", p.name);
            text += &container_logs(&p.id, 300);
            for child in self.children_of_quiet(p) {
                text += &format!("==== docker logs {child} (child, tail 40) ====\n");
                text += &container_logs(&child, 40);
            }
        }
        text
    }

    /// Like `children_of`, but a failing `docker ps` gives none (for
    /// failure reports, which must not panic themselves).
    fn children_of_quiet(&self, parent: &Parent) -> Vec<String> {
        names(&ps_children(parent))
    }

    fn remove_all(&mut self) {
        // Parents first, so that none starts a child after the sweep.
        for p in &self.parents {
            let _ = docker(&["rm", "-f", "-v", &p.id]);
        }
        for pass in 0..2 {
            let ids = self.leftovers();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids.iter().map(String::as_str));
                let _ = docker(&args);
            }
            if pass == 0 {
                // A create the parent had in flight when it was killed.
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        for v in &self.volumes {
            let _ = docker(&["volume", "rm", "-f", v]);
        }
        for image in &self.images {
            let _ = docker(&["image", "rm", "-f", image]);
        }
        if self.network_created {
            for _ in 0..10 {
                if docker(&["network", "rm", &self.network]).status.success() {
                    self.network_created = false;
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        let left = self.leftovers();
        if !left.is_empty() || self.network_created {
            eprintln!(
                "container tests: could not remove containers {left:?} / network {} (created: {})",
                self.network, self.network_created
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        self.remove_all();
    }
}

/// Removes what runs of these tests that were killed (no Drop ran) left
/// behind: containers and networks named `snct-<pid>-…` whose pid is gone.
fn sweep_dead_runs() {
    let dead = |name: &str| -> bool {
        let pid = name
            .strip_prefix("snct-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    let listed = |args: &[&str]| -> Vec<String> {
        String::from_utf8_lossy(&docker(args).stdout)
            .lines()
            .filter(|n| dead(n))
            .map(String::from)
            .collect()
    };
    let containers = listed(&["ps", "-a", "--format", "{{.Names}}"]);
    if !containers.is_empty() {
        eprintln!("container tests: removing leftovers of killed runs: {containers:?}");
        let mut args = vec![
            "inspect",
            "--format",
            "{{range .Mounts}}{{if eq .Type \"volume\"}}{{.Name}} {{end}}{{end}}",
        ];
        args.extend(containers.iter().map(String::as_str));
        let volumes = String::from_utf8_lossy(&docker(&args).stdout).into_owned();
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(containers.iter().map(String::as_str));
        let _ = docker(&args);
        for v in volumes.split_whitespace() {
            let _ = docker(&["volume", "rm", v]);
        }
    }
    for net in listed(&["network", "ls", "--format", "{{.Name}}"]) {
        let _ = docker(&["network", "rm", &net]);
    }
}

fn container_logs(container: &str, tail: usize) -> String {
    let out = docker(&[
        "logs",
        "--timestamps",
        "--tail",
        &tail.to_string(),
        container,
    ]);
    // Docker splits the container's stdout and stderr; serfnode logs to
    // stderr, the application may use either.
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One Serf user event as `serf monitor` printed it.
#[derive(Debug, Clone, PartialEq)]
pub struct UserEvent {
    pub name: String,
    /// The payload out of its envelope, parsed as JSON (None when it is not
    /// JSON).
    pub payload: Option<Value>,
    /// Who raised it, from the envelope.
    pub from: Option<serfnode::event::Raiser>,
    pub raw: Vec<u8>,
    /// Its Lamport time: the order its raiser raised it in (gossip brings
    /// events in any order).
    pub ltime: Option<u64>,
}

/// `serf monitor -log-level=debug` on a parent's agent, its output kept in a
/// file. The monitor prints a `user-event: <name>` log line per user event
/// the node receives, and an `Event Info:` block (Name, Payload as a Go byte
/// slice, …) from its event stream.
pub struct Monitor {
    container: String,
    child: Option<Child>,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Monitor {
    /// Starts the monitor in `container` (retrying while its agent's RPC is
    /// not up yet).
    pub fn start(container: &str, timeout: Duration) -> Monitor {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("monitor.log");
        let mut m = Monitor {
            container: container.to_owned(),
            child: None,
            out,
            _dir: dir,
        };
        let start = Instant::now();
        loop {
            m.spawn();
            std::thread::sleep(Duration::from_millis(1500));
            let running = m
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
            if running && !m.text().is_empty() {
                return m;
            }
            if start.elapsed() > timeout {
                panic!(
                    "serf monitor in {container} did not stay up within {timeout:?}: {}",
                    m.text()
                );
            }
            m.kill();
        }
    }

    fn spawn(&mut self) {
        let file = std::fs::File::create(&self.out).unwrap();
        let child = Command::new("docker")
            .args([
                "exec",
                &self.container,
                "sh",
                "-c",
                // The parent's RPC port wants the key only the parent has.
                "exec serf monitor -rpc-addr=127.0.0.1:7373 \\
                 -rpc-auth=\"$(cat /var/lib/serfnode/rpc-auth)\" -log-level=debug",
            ])
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn docker exec serf monitor");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Everything the monitor printed so far.
    pub fn text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.out) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Whether a `user-event: <name>` log line was printed.
    pub fn saw_log_line(&self, name: &str) -> bool {
        let needle = format!("user-event: {name}");
        self.text().lines().any(|l| l.trim_end().ends_with(&needle))
    }

    /// The user events of the monitor's event stream, in arrival order.
    pub fn user_events(&self) -> Vec<UserEvent> {
        parse_event_infos(&self.text())
    }

    /// Waits until an event named `name` whose payload satisfies `pred` was
    /// seen, both as a `user-event:` log line and in the event stream.
    pub fn wait_event(
        &self,
        timeout: Duration,
        name: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> UserEvent {
        wait_for_every(
            DOCKER_POLL,
            timeout,
            &format!("user event {name} on {}", self.container),
            || {
                if !self.saw_log_line(name) {
                    return Err(format!("no `user-event: {name}` line yet"));
                }
                self.user_events()
                    .into_iter()
                    .find(|e| e.name == name && e.payload.as_ref().is_some_and(&pred))
                    .ok_or_else(|| {
                        format!(
                            "events so far: {:?}",
                            self.user_events()
                                .iter()
                                .map(|e| format!("{} {}", e.name, String::from_utf8_lossy(&e.raw)))
                                .collect::<Vec<_>>()
                        )
                    })
            },
        )
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let text = self.text();
            let tail: Vec<&str> = text.lines().rev().take(80).collect();
            eprintln!(
                "==== serf monitor in {} (tail) ====\n{}",
                self.container,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// Parses the `Event Info:` blocks of `serf monitor`'s output: a header
/// line, then tab-indented `Key: value` lines in any order, e.g.
/// `\tName: "hello"` and `\tPayload: []byte{0x7b, 0x7d}`. Only user events
/// (Event: "user") are returned.
pub fn parse_event_infos(text: &str) -> Vec<UserEvent> {
    let mut events = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() != "Event Info:" {
            continue;
        }
        let (mut name, mut kind, mut raw, mut ltime) = (None, None, Vec::new(), None);
        while let Some(field) = lines.peek() {
            if !field.starts_with('\t') {
                break;
            }
            let field = lines.next().unwrap().trim();
            if let Some(v) = field.strip_prefix("Name: ") {
                name = Some(v.trim_matches('"').to_owned());
            } else if let Some(v) = field.strip_prefix("Event: ") {
                kind = Some(v.trim_matches('"').to_owned());
            } else if let Some(v) = field.strip_prefix("Payload: ") {
                raw = parse_go_bytes(v);
            } else if let Some(v) = field.strip_prefix("LTime: ") {
                // `%#v` of a uint64: `0x1a`.
                ltime = match v.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16).ok(),
                    None => v.parse().ok(),
                };
            }
        }
        if let (Some(name), Some("user")) = (name, kind.as_deref()) {
            let (payload, from) = serfnode::event::unwrap(&raw);
            let json = from.is_some() || serde_json::from_slice::<Value>(&raw).is_ok();
            events.push(UserEvent {
                name,
                payload: json.then_some(payload),
                from,
                raw,
                ltime,
            });
        }
    }
    events
}

/// `[]byte{0x7b, 0x22}` → bytes; `[]byte(nil)` → empty.
fn parse_go_bytes(v: &str) -> Vec<u8> {
    let Some(inner) = v.strip_prefix("[]byte{").and_then(|s| s.strip_suffix('}')) else {
        return Vec::new();
    };
    inner
        .split(',')
        .filter_map(|b| u8::from_str_radix(b.trim().trim_start_matches("0x"), 16).ok())
        .collect()
}
