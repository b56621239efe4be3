//! A hostile child gets nothing: each containment claim of the README
//! mounted as an attack, for real. The application of a child is root
//! (the default when a child has no `user:`) and runs the attacks itself
//! (through [`APP_SHELL`], so with exactly the privileges the wrapper leaves
//! it); each step fails the test if its attack works.
//!
//! One parent (gossip key, a password and a token in its environment, a
//! low open-file limit) with three children: `app` (Debian, root), `usr`
//! (Debian image with its own users, `user: app`, `show_secrets: true`) and
//! `real` (busybox, well-behaved: it reads and writes while the others
//! attack). Steps, in order:
//!
//! 1. handlers: a handler the application installs and triggers through
//!    `/serfnode/parent` has no CAP_SYS_ADMIN in any set, no_new_privs, the
//!    child's user and groups (as `docker run --user` gives them); its
//!    `mount` fails;
//! 2. wrapper: PID 1 of the child (the wrapper) cannot be read or traced:
//!    `/proc/1/environ`, `/proc/1/mem`, ptrace are denied to the
//!    application, its handlers and even `docker exec`;
//! 3. secrets: the gossip key, the RPC key, every child's token and the
//!    parent's secret-looking variables are in no byte a child can read
//!    (its mount, `/me.json`, the share, the environments of its processes
//!    and handlers), except the variables for a child that asked for them;
//! 4. queries: the reserved names are EACCES and run no handler anywhere;
//!    a query handler sees who asked; a flood gets EAGAIN;
//! 5. socket: connections without a hello sending hundreds of MiB, and
//!    thousands of idle ones: the parent's daemon stays small and idle, and
//!    `real` reads and writes throughout;
//! 6. squatter: while the parent's agent restarts, the application listens
//!    on the RPC port, answering like an agent: it never sees the key; the
//!    daemon follows the real agent again once the squatter leaves.
//!
//! Besides, on the host: the replica socket's accept loop backs off on
//! EMFILE instead of spinning.
//!
//! Needs the images of scripts/build-images; fails (does not skip) without
//! them. Everything is removed on drop (tests/support/docker.rs).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use serfnode_testkit::wait_for_every;
use support::docker::{
    app_sh, busybox_image, debian_image, docker, docker_ok, exec_json, exec_sh, try_exec_json,
    Cluster, Parent, APP_SHELL, DOCKER_POLL,
};
use support::{Checks, Clock};

const START: Duration = Duration::from_secs(90);
const T: Duration = Duration::from_secs(45);

/// CAP_SYS_ADMIN's bit in the capability masks of /proc/PID/status.
const SYS_ADMIN: u64 = 1 << 21;

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// `Key:\tvalue` lines of a /proc status file.
fn status_fields(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Ok when no capability set in `status` holds CAP_SYS_ADMIN and
/// no_new_privs is set.
fn confined(status: &BTreeMap<String, String>) -> Result<(), String> {
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let mask = status
            .get(set)
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .ok_or(format!("no {set} in {status:?}"))?;
        if mask & SYS_ADMIN != 0 {
            return Err(format!("{set} {mask:016x} holds CAP_SYS_ADMIN"));
        }
    }
    match status.get("NoNewPrivs").map(String::as_str) {
        Some("1") => Ok(()),
        other => Err(format!("NoNewPrivs {other:?}")),
    }
}

/// The identity lines of a status, for comparing processes.
fn identity(status: &BTreeMap<String, String>) -> Vec<String> {
    ["Uid", "Gid", "Groups"]
        .iter()
        .map(|k| format!("{k}: {}", status.get(*k).map_or("?", |v| v.as_str())))
        .collect()
}

/// The value of `name` in a container's `Config.Env` (host side).
fn env_of(container: &str, name: &str) -> String {
    let text = docker_ok(&["inspect", container]);
    let v: Value = serde_json::from_str(&text).unwrap();
    let prefix = format!("{name}=");
    v[0]["Config"]["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|e| e.strip_prefix(&prefix).map(String::from))
        .unwrap_or_else(|| panic!("no {name} in the environment of {container}"))
}

/// A handler script `name` in `dir` that reports its privileges, whether it
/// could mount (directly, or in a user namespace of its own) and read PID
/// 1's environment, and its own environment into `/tmp/<name>.out`; then
/// the event that runs it, written to the write node; then the
/// application's own attempt at a user namespace, and its identity.
fn probe_handler_script(dir: &str, name: &str) -> String {
    format!(
        r#"mkdir -p {dir} /tmp/pwn-mnt
cat > {dir}/{name} <<'EOF'
#!/bin/sh
{{
  grep -E '^(Uid|Gid|Groups|Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' /proc/self/status
  if mount -t tmpfs pwn /tmp/pwn-mnt 2>/dev/null; then echo MOUNT=yes; umount /tmp/pwn-mnt; else echo MOUNT=no; fi
  if unshare -Urm sh -c 'mount -t tmpfs pwn /tmp/pwn-mnt' 2>/dev/null; then echo USERNS=yes; else echo USERNS=no; fi
  if ( : < /proc/1/environ ) 2>/dev/null; then echo ENVIRON=read; tr '\0' '\n' < /proc/1/environ | sed 's/^/PID1ENV /'; else echo ENVIRON=denied; fi
  tr '\0' '\n' < /proc/self/environ | sed 's/^/SELFENV /'
}} > /tmp/{name}.tmp 2>&1
mv /tmp/{name}.tmp /tmp/{name}.out
EOF
chmod 755 {dir}/{name}
echo '["{name}",1]' > /serfnode/parent
if unshare -Urm sh -c 'mount -t tmpfs pwn /tmp/pwn-mnt' 2>/dev/null; then echo USERNS=yes; else echo USERNS=no; fi
grep -E '^(Uid|Gid|Groups|Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' /proc/self/status"#
    )
}

/// Tries to open PID 1's environ and mem, and prints what of the environ
/// it could read.
const PROC1_PROBE: &str = r#"for f in environ mem; do if ( : < /proc/1/$f ) 2>/dev/null; then echo "$f=open"; else echo "$f=denied"; fi; done
tr '\0' '\n' < /proc/1/environ 2>/dev/null | sed 's/^/PID1ENV /'"#;
/// Tries to ptrace PID 1 (PTRACE_SEIZE: never stops it; the tracer's exit
/// detaches) and reads its command line.
const PTRACE_PROBE: &str = r#"case $(uname -m) in x86_64) nr=101;; aarch64) nr=117;; *) nr=0;; esac
perl -e '$r = syscall($ARGV[0], 0x4206, 1, 0, 0); print $r == 0 ? "ptrace=attached\n" : "ptrace=denied ($!)\n"' $nr
echo "cmdline=$(tr '\0' ' ' < /proc/1/cmdline)""#;

/// Ok when `out` (of [`PROC1_PROBE`] and [`PTRACE_PROBE`]) shows PID 1's
/// memory and ptrace denied, its command line readable, and its
/// environment denied — or, with `environ_may_open`, at least free of
/// `token`. (Standard kernels refuse a non-dumpable process's environ to
/// anyone without CAP_SYS_PTRACE; some let a process with the same uid and
/// capabilities read it, which is why the wrapper scrubs the token from it
/// too.)
fn proc1_sealed(out: &str, token: &str, environ_may_open: bool) -> Result<(), String> {
    let environ = out.contains("environ=denied")
        || (environ_may_open && out.contains("environ=open") && !out.contains(token));
    let ok = environ
        && out.contains("mem=denied")
        && out.contains("ptrace=denied")
        && out.contains("cmdline=/serfnode-share/serfnode child");
    ok.then_some(()).ok_or_else(|| out.to_owned())
}

/// The application's RPC port squatter: binds 127.0.0.1:7373 as soon as it
/// is free, answers each connection's first request as an agent answers a
/// handshake (so a client that does not check its peer goes on to send its
/// key), and logs in hex everything it receives.
const SQUATTER: &str = r#"use strict; use IO::Socket::INET; use IO::Select;
open(my $log, ">>", "/tmp/squat.log") or die; $log->autoflush(1);
my $l;
until ($l = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 7373, Listen => 16, ReuseAddr => 1)) {
  if (-e "/tmp/squat.stop") { print $log "EXIT unbound\n"; exit 0 }
  select(undef, undef, undef, 0.002);
}
print $log "BOUND\n";
my $sel = IO::Select->new($l);
until (-e "/tmp/squat.stop") {
  next unless $sel->can_read(0.1);
  my $c = $l->accept or next;
  print $log "CONN\n";
  my $cs = IO::Select->new($c); my $replied = 0;
  while ($cs->can_read(1.0)) {
    my $n = sysread($c, my $buf, 65536); last unless $n;
    print $log "RECV ", unpack("H*", $buf), "\n";
    unless ($replied) { syswrite($c, "\x82\xa5Error\xa0\xa3Seq\x00"); $replied = 1; }
  }
  close $c;
}
close $l; print $log "EXIT\n";
"#;

/// Floods the parent's replica socket: four connections at a time sending
/// 200 MiB each without a hello (a new connection whenever one is closed),
/// and 3,000 idle connections, held until /tmp/flood.stop.
const FLOODER: &str = r#"use strict; use IO::Socket::UNIX; use Socket;
$SIG{PIPE} = 'IGNORE';
my $path = "/serfnode-share/replica.sock";
my @kids;
for my $k (1..4) {
  my $pid = fork();
  if ($pid == 0) {
    my $chunk = "x" x (1 << 20); my $sent = 0; my $conns = 0;
    while ($sent < 200 * (1 << 20) && ! -e "/tmp/flood.stop") {
      my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $path) or do { select(undef, undef, undef, 0.01); next };
      $conns++;
      while ($sent < 200 * (1 << 20)) { my $n = syswrite($s, $chunk); last unless defined $n && $n > 0; $sent += $n; }
      close $s;
    }
    open(my $f, ">", "/tmp/flood.$k"); print $f "sent=$sent conns=$conns\n"; close $f;
    exit 0;
  }
  push @kids, $pid;
}
my @idle;
for (1..3000) { my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $path) or last; push @idle, $s; }
open(my $f, ">", "/tmp/flood.idle"); print $f "idle=" . scalar(@idle) . "\n"; close $f;
waitpid($_, 0) for @kids;
sleep 1 until -e "/tmp/flood.stop";
"#;

/// The parent's serfnode daemon: its pid inside the parent.
fn daemon_pid(p: &Parent) -> Result<String, String> {
    let out = exec_sh(&p.name, "pgrep -f 'serfnode agen[t]'")?;
    match out.split_whitespace().collect::<Vec<_>>()[..] {
        [pid] => Ok(pid.to_owned()),
        ref pids => Err(format!("want one daemon, found {pids:?}")),
    }
}

/// (VmRSS KiB, VmHWM KiB, user+system clock ticks) of `pid` in `p`.
fn usage(p: &Parent, pid: &str) -> Result<(u64, u64, u64), String> {
    let out = exec_sh(
        &p.name,
        &format!(
            "grep -E '^(VmRSS|VmHWM):' /proc/{pid}/status; cut -d' ' -f14,15 /proc/{pid}/stat"
        ),
    )?;
    let f = status_fields(&out);
    let kib = |k: &str| -> Result<u64, String> {
        f.get(k)
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or(format!("no {k}: {out}"))
    };
    let ticks: u64 = out
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    Ok((kib("VmRSS")?, kib("VmHWM")?, ticks))
}

fn manifest(users_image: &str) -> String {
    let shell = format!("{APP_SHELL:?}");
    format!(
        r#"serfnode:
  role: web
children:
  - app:
      image: {debian}
      command: ["sh", "-c", {shell}]
  - usr:
      image: {users_image}
      command: ["sh", "-c", {shell}]
      user: app
      handlers: /tmp/handlers
      show_secrets: true
  - real:
      image: {busybox}
      command: ["sleep", "3600"]
      allow: {{events: [tick], queries: []}}
"#,
        debian = debian_image(),
        busybox = busybox_image(),
    )
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/tmp:/bin/sh\n";
const GROUP: &str = "root:x:0:\napp:x:1000:\nextra:x:2000:app\nmore:x:2001:root,app\n";

#[test]
fn a_hostile_child_gets_no_privilege_no_secret_and_no_hold_on_its_parent() {
    let clock = Clock::new("containment test");
    let held = Checks::default();
    let mut cluster = Cluster::new();
    let users = cluster.build_image(
        "users",
        &format!("FROM {}\nCOPY passwd group /etc/\n", debian_image()),
        &[("passwd", PASSWD), ("group", GROUP)],
    );
    let gossip_key = std::process::Command::new("sh")
        .args(["-c", "head -c32 /dev/urandom | base64"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap();
    assert_eq!(
        gossip_key.len(),
        44,
        "a base64 key of 32 bytes: {gossip_key}"
    );
    let password = format!("pw-{}", random_hex(12));
    let api_token = format!("tok-{}", random_hex(12));
    let extra: Vec<String> = [
        format!("SERF_ENCRYPT_KEY={gossip_key}"),
        format!("DB_PASSWORD={password}"),
        format!("API_TOKEN={api_token}"),
        "VISIBLE_SETTING=plain".to_owned(),
    ]
    .into_iter()
    .flat_map(|e| ["-e".to_owned(), e])
    .chain(["--ulimit".to_owned(), "nofile=2048:2048".to_owned()])
    .collect();
    let p = cluster.start_parent_with("p", "web", None, &manifest(&users), &extra);
    let (app, usr, real) = (p.child("app"), p.child("usr"), p.child("real"));
    for child in [&app, &usr, &real] {
        wait_for_every(
            DOCKER_POLL,
            START,
            &format!("{child} to follow its parent"),
            || {
                let s = try_exec_json(child, "/serfnode/status.json")?;
                (s["agent"]["connected"] == true)
                    .then_some(())
                    .ok_or(format!("{s}"))
            },
        );
    }
    clock.phase("parent and its three children up");

    // 1. handlers run with the application's restrictions.
    for (child, dir, name) in [
        (&app, "/etc/serfnode/handlers", "pwn-app"),
        (&usr, "/tmp/handlers", "pwn-usr"),
    ] {
        let own_out = app_sh(child, &probe_handler_script(dir, name), T).unwrap();
        held.check(own_out.contains("USERNS=no"), || {
            format!("the application of {child} made a user namespace and mounted in it")
        });
        let own = status_fields(&own_out);
        held.check(confined(&own).is_ok(), || {
            format!(
                "the application of {child} is not confined: {:?}",
                confined(&own)
            )
        });
        let out = wait_for_every(
            DOCKER_POLL,
            T,
            &format!("handler {name} in {child}"),
            || exec_sh(child, &format!("cat /tmp/{name}.out")),
        );
        let handler = status_fields(&out);
        held.check(confined(&handler).is_ok(), || {
            format!("handler {name} in {child}: {:?}\n{out}", confined(&handler))
        });
        held.check(
            out.contains("MOUNT=no") && out.contains("USERNS=no"),
            || format!("handler {name} in {child} could mount a tmpfs:\n{out}"),
        );
        held.check(identity(&handler) == identity(&own), || {
            format!(
                "handler {name} in {child} runs as {:?}, its application as {:?}",
                identity(&handler),
                identity(&own)
            )
        });
    }
    // The user as `docker run --user` gives it, supplementary groups too.
    let docker_user = docker_ok(&[
        "run",
        "--rm",
        "--user",
        "app",
        &users,
        "grep",
        "-E",
        "^(Uid|Gid|Groups):",
        "/proc/self/status",
    ]);
    let usr_handler = status_fields(&exec_sh(&usr, "cat /tmp/pwn-usr.out").unwrap());
    held.check(
        identity(&usr_handler) == identity(&status_fields(&docker_user)),
        || {
            format!(
                "handler in {usr} runs as {:?}, `docker run --user app` as {:?}",
                identity(&usr_handler),
                identity(&status_fields(&docker_user))
            )
        },
    );
    clock.phase("handlers: confined, as the child's user");

    // 2. the wrapper cannot be read or traced; its token is gone from its
    // environment block.
    let probe = format!("{PROC1_PROBE}\n{PTRACE_PROBE}");
    let token = env_of(&app, "SERFNODE_CHILD_TOKEN");
    let from_app = app_sh(&app, &probe, T).unwrap_or_else(|e| e);
    held.check(proc1_sealed(&from_app, &token, false).is_ok(), || {
        format!("the application of {app} reaches PID 1: {from_app}")
    });
    // With the wrapper's own capabilities (SYS_ADMIN included).
    let from_exec = exec_sh(&app, &probe).unwrap_or_else(|e| e);
    held.check(proc1_sealed(&from_exec, &token, true).is_ok(), || {
        format!("docker exec in {app} reaches PID 1: {from_exec}")
    });
    let share = app_sh(
        &app,
        "for f in serfnode replica.sock new; do if ( : >> /serfnode-share/$f ) 2>/dev/null; then echo \"$f writable\"; fi; done",
        T,
    )
    .unwrap();
    held.check(share.trim().is_empty(), || {
        format!("the share is writable from {app}: {share}")
    });
    let handler_out = exec_sh(&app, "cat /tmp/pwn-app.out").unwrap();
    held.check(handler_out.contains("ENVIRON=denied"), || {
        format!("a handler in {app} read PID 1's environment:\n{handler_out}")
    });
    clock.phase("wrapper: environ, mem and ptrace of PID 1 denied");

    // 3. secrets in no byte a child can read.
    let rpc_key = exec_sh(&p.name, "cat /var/lib/serfnode/rpc-auth")
        .unwrap()
        .trim()
        .to_owned();
    let mut secrets = vec![
        ("the gossip key", gossip_key.clone()),
        ("the rpc key", rpc_key.clone()),
        ("DB_PASSWORD", password.clone()),
        ("API_TOKEN", api_token.clone()),
    ];
    for c in [&app, &usr, &real] {
        secrets.push(("a child token", env_of(c, "SERFNODE_CHILD_TOKEN")));
    }
    let readable = "/serfnode /me.json /serfnode-share /etc/hosts /etc/hostname /etc/resolv.conf /tmp/pwn-*.out /proc/[0-9]*/environ";
    let grep_all = |shown: &[&str]| -> String {
        secrets
            .iter()
            .filter(|(what, _)| !shown.contains(what))
            .map(|(what, s)| {
                format!("grep -rlaF -e '{s}' {readable} 2>/dev/null | sed 's|^|{what}: |'\n")
            })
            .collect::<String>()
            + "true"
    };
    for (child, shown) in [(&app, vec![]), (&usr, vec!["DB_PASSWORD", "API_TOKEN"])] {
        let found = app_sh(child, &grep_all(&shown), T).unwrap();
        held.check(found.trim().is_empty(), || {
            format!("secrets readable in {child}:\n{found}")
        });
    }
    let found = exec_sh(&real, &grep_all(&[])).unwrap();
    held.check(found.trim().is_empty(), || {
        format!("secrets readable in {real}:\n{found}")
    });
    // The parent's own files are redacted too.
    let own: String = secrets
        .iter()
        .filter(|(what, _)| *what != "the rpc key")
        .map(|(what, s)| {
            format!("grep -rlaF -e '{s}' /serfnode 2>/dev/null | sed 's|^|{what}: |'\n")
        })
        .collect::<String>()
        + "true";
    let found = exec_sh(&p.name, &own).unwrap();
    held.check(found.trim().is_empty(), || {
        format!("secrets in the parent's own files:\n{found}")
    });
    // Redacted, not removed; shown to the child that asked.
    let env = |child: &str| -> Vec<String> {
        exec_json(child, "/serfnode/parent.json")["inspect"]["Config"]["Env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str().map(String::from))
            .collect()
    };
    let app_env = env(&app);
    held.check(
        app_env.iter().any(|e| e == "VISIBLE_SETTING=plain")
            && app_env
                .iter()
                .any(|e| e.starts_with("DB_PASSWORD=") && !e.contains(&password)),
        || format!("parent.json in {app}: env {app_env:?}"),
    );
    let usr_env = env(&usr);
    held.check(usr_env.contains(&format!("DB_PASSWORD={password}")), || {
        format!("parent.json in {usr} (show_secrets): env {usr_env:?}")
    });
    clock.phase("secrets: none readable in any child");

    // 4. queries: reserved names refused, origin seen, floods paced.
    exec_sh(
        &p.name,
        r#"mkdir -p /etc/serfnode/handlers && cd /etc/serfnode/handlers
printf '#!/bin/sh\necho "$SERF_EVENT $SERF_QUERY_NAME" >> /tmp/reserved-ran\n' > container
cp container member-join
printf '#!/bin/sh\n{ cat; echo; echo "node=$SERFNODE_FROM_NODE child=$SERFNODE_FROM_CHILD"; } > /tmp/ping.tmp; mv /tmp/ping.tmp /tmp/ping.out\necho pong\n' > ping
chmod 755 container member-join ping"#,
    )
    .unwrap();
    app_sh(
        &app,
        r#"cd /etc/serfnode/handlers && printf '#!/bin/sh\necho "$SERF_EVENT $SERF_QUERY_NAME" >> /tmp/reserved-ran\n' > container && cp container member-join && chmod 755 container member-join"#,
        T,
    )
    .unwrap();
    let asked = app_sh(
        &app,
        r#"for q in 'container/{"node":"x","child":"y","state":"exited","exit_code":0}' 'member-join/x'; do
  if cat "/serfnode/query/$q" > /dev/null 2> /tmp/q.err; then echo "$q: answered"; else echo "$q: $(cat /tmp/q.err)"; fi
done"#,
        T,
    )
    .unwrap();
    held.check(
        asked.lines().count() == 2 && asked.lines().all(|l| l.contains("ermission denied")),
        || format!("{app} asking reserved queries: {asked}"),
    );
    let raised = app_sh(
        &app,
        r#"for e in container member-join member-failed; do
  if /bin/echo "[\"$e\",{\"node\":\"x\"}]" > /serfnode/parent 2> /tmp/e.err; then echo "$e: raised"; else echo "$e: $(cat /tmp/e.err)"; fi
done"#,
        T,
    )
    .unwrap();
    held.check(
        raised.lines().count() == 3 && raised.lines().all(|l| l.contains("ermission denied")),
        || format!("{app} raising reserved events: {raised}"),
    );
    std::thread::sleep(Duration::from_secs(3));
    for c in [&p.name, &app] {
        let ran = exec_sh(c, "cat /tmp/reserved-ran 2>/dev/null; true").unwrap();
        held.check(!ran.lines().any(|l| l.starts_with("query")), || {
            format!("a reserved query ran a handler in {c}: {ran}")
        });
    }
    let answers = app_sh(&app, "cat /serfnode/query/ping/hello", T)
        .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| format!("{e}: {t}")));
    held.check(
        answers
            .as_ref()
            .is_ok_and(|a| a["responses"][&p.name].as_str().map(str::trim) == Some("pong")),
        || format!("query ping from {app}: {answers:?}"),
    );
    let ping = wait_for_every(DOCKER_POLL, T, "the ping handler's report", || {
        exec_sh(&p.name, "cat /tmp/ping.out")
    });
    held.check(
        ping == format!("\"hello\"\nnode={} child=app\n", p.name),
        || format!("the ping handler saw {ping:?}"),
    );
    let where_web = app_sh(&app, "cat /serfnode/query/where/web", T)
        .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| format!("{e}: {t}")));
    held.check(
        where_web
            .as_ref()
            .is_ok_and(|a| a["complete"] == true && a["responses"][&p.name]["role"] == "web"),
        || format!("query where/web from {app}: {where_web:?}"),
    );
    let flood = app_sh(
        &app,
        r#"ok=0; again=0; other=0; i=0
while [ $i -lt 60 ]; do
  if cat /serfnode/query/where/web > /dev/null 2> /tmp/q.err; then ok=$((ok+1))
  elif grep -q 'temporarily unavailable' /tmp/q.err; then again=$((again+1))
  else other=$((other+1)); fi
  i=$((i+1))
done
echo "ok=$ok again=$again other=$other""#,
        T,
    )
    .unwrap();
    let count = |k: &str| -> u32 {
        flood
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    held.check(
        count("ok") > 0 && count("again") > 0 && count("other") == 0,
        || format!("60 queries at once from {app}: {flood}"),
    );
    clock.phase(&format!(
        "queries: reserved names refused, origin seen, flood {flood}"
    ));

    // 5. the replica socket under a flood from a child.
    let pid = wait_for_every(DOCKER_POLL, T, "the daemon's pid", || daemon_pid(&p));
    let (_, _, ticks_before) = usage(&p, &pid).unwrap();
    let began = Instant::now();
    app_sh(
        &app,
        &format!("cat > /tmp/flood.pl <<'PERL'\n{FLOODER}PERL\nperl /tmp/flood.pl > /tmp/flood.log 2>&1 &\necho started"),
        T,
    )
    .unwrap();
    let real_name = real.clone();
    let reader = std::thread::spawn(move || {
        exec_sh(
            &real_name,
            r#"end=$(($(date +%s)+12)); n=0; f=0; w=0; wf=0
while [ $(date +%s) -lt $end ]; do
  if cat /serfnode/serfnodes_by_id.json > /dev/null; then n=$((n+1)); else f=$((f+1)); fi
  if echo "[\"tick\",$n]" > /serfnode/parent; then w=$((w+1)); else wf=$((wf+1)); fi
  sleep 0.2
done
echo "reads=$n read_failures=$f writes=$w write_failures=$wf""#,
        )
    });
    let mut max_rss = 0;
    while !reader.is_finished() {
        if let Ok((rss, _, _)) = usage(&p, &pid) {
            max_rss = max_rss.max(rss);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let real_report = reader.join().unwrap().unwrap_or_else(|e| e);
    let (_, hwm, ticks_after) = usage(&p, &pid).unwrap();
    let cpu = (ticks_after - ticks_before) as f64 / 100.0 / began.elapsed().as_secs_f64();
    let attack = exec_sh(
        &app,
        "cat /tmp/flood.idle /tmp/flood.[1-4] /tmp/flood.log 2>&1; touch /tmp/flood.stop",
    )
    .unwrap_or_else(|e| e);
    let fields: BTreeMap<&str, u64> = real_report
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    held.check(
        fields.get("read_failures") == Some(&0)
            && fields.get("write_failures") == Some(&0)
            && fields.get("reads").is_some_and(|&n| n >= 20),
        || format!("{real} during the flood: {real_report}"),
    );
    held.check(max_rss.max(hwm) < 64 * 1024, || {
        format!(
            "the daemon grew to {} KiB during the flood (attack: {attack})",
            max_rss.max(hwm)
        )
    });
    held.check(cpu < 0.9, || {
        format!("the daemon used {cpu:.2} cores during the flood (attack: {attack})")
    });
    let logs = docker(&["logs", &p.name]);
    let refusals = String::from_utf8_lossy(&logs.stderr)
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("replica: refused"))
        .count();
    held.check(refusals <= 4, || {
        format!("{refusals} log lines on refused connections for one 12 s flood")
    });
    clock.phase(&format!(
        "socket: daemon peak {} KiB, {cpu:.2} cores, {refusals} log lines; {real}: {}; attack: {}",
        max_rss.max(hwm),
        real_report.trim(),
        attack.split_whitespace().collect::<Vec<_>>().join(" ")
    ));

    // 6. the RPC port squatted while the agent restarts.
    app_sh(
        &app,
        &format!("cat > /tmp/squat.pl <<'PERL'\n{SQUATTER}PERL\nperl /tmp/squat.pl > /tmp/squat.err 2>&1 &\necho started"),
        T,
    )
    .unwrap();
    exec_sh(&p.name, "kill -9 $(pgrep -f '^serf agent')").unwrap();
    let handshake = hex(b"handshake");
    wait_for_every(DOCKER_POLL, T, "the daemon to reach the squatter", || {
        let log = exec_sh(&app, "cat /tmp/squat.log")?;
        log.lines()
            .any(|l| l.starts_with("RECV") && l.contains(&handshake))
            .then_some(())
            .ok_or(log)
    });
    // The daemon retries with backoff; give it several tries.
    std::thread::sleep(Duration::from_secs(6));
    exec_sh(&app, "touch /tmp/squat.stop").unwrap();
    let log = wait_for_every(DOCKER_POLL, T, "the squatter to leave", || {
        let log = exec_sh(&app, "cat /tmp/squat.log")?;
        log.contains("EXIT").then_some(log.clone()).ok_or(log)
    });
    let tries = log.lines().filter(|l| l.starts_with("CONN")).count();
    held.check(!log.contains(&hex(rpc_key.as_bytes())), || {
        format!("the squatter received the rpc key ({tries} connections):\n{log}")
    });
    wait_for_every(
        DOCKER_POLL,
        START,
        "the daemon to follow the real agent again",
        || {
            let s = try_exec_json(&app, "/serfnode/status.json")?;
            (s["agent"]["connected"] == true && s["agent"]["stale"] == false)
                .then_some(())
                .ok_or(format!("{s}"))
        },
    );
    let raised = app_sh(&app, r#"echo '["after-squat",1]' > /serfnode/parent"#, T);
    held.check(raised.is_ok(), || {
        format!("a write in {app} after the squatter left: {raised:?}")
    });
    let logs = docker(&["logs", &p.name]);
    let logs = String::from_utf8_lossy(&logs.stderr);
    held.check(
        logs.lines()
            .any(|l| l.contains("127.0.0.1:7373") && l.contains("refused")),
        || "the daemon never logged refusing the squatter".into(),
    );
    clock.phase(&format!(
        "squatter: {tries} connections, no key; the daemon follows the agent again"
    ));

    held.assert_none_failed();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// CPU time (user + system) of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Out of descriptors (EMFILE), the replica socket's accept loop must back
/// off: retrying at once spins a core and floods the log while the pending
/// connections wait in the kernel's backlog.
#[test]
fn the_replica_socket_backs_off_when_out_of_descriptors() {
    use support::node::{Daemon, DaemonOpts};
    let share = tempfile::tempdir().unwrap();
    let node = Daemon::start(DaemonOpts {
        args: vec!["--share".into(), share.path().display().to_string()],
        ..DaemonOpts::default()
    });
    let pid = node.pid();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    // Room for a few more descriptors only.
    let limit = libc::rlimit {
        rlim_cur: open + 6,
        rlim_max: open + 6,
    };
    // SAFETY: prlimit(2) on our own child with a valid limit.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    let socket = share.path().join("replica.sock");
    let conns: Vec<_> = (0..100)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (before, began) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let cpu = (cpu_ticks(pid) - before) as f64 / 100.0 / began.elapsed().as_secs_f64();
    let log = node.full_log();
    let accept_lines = log.lines().filter(|l| l.contains("accept")).count();
    eprintln!("out of descriptors: {cpu:.3} cores, {accept_lines} log lines on accept");
    assert!(
        cpu < 0.3,
        "the daemon used {cpu:.2} cores out of descriptors ({accept_lines} log lines on accept)\n{}",
        node.log()
    );
    assert!(
        accept_lines < 50,
        "{accept_lines} log lines on accept errors\n{}",
        node.log()
    );
    assert!(
        log.contains("Too many open files"),
        "the test never ran the daemon out of descriptors\n{}",
        node.log()
    );
    // Descriptors back: a connection is served again.
    drop(conns);
    let limit = libc::rlimit {
        rlim_cur: 4096,
        rlim_max: 4096,
    };
    // SAFETY: as above.
    unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    let started = Instant::now();
    loop {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        use std::io::{BufRead, Write};
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"{\"type\":\"hello\",\"child\":\"x\"}\n")
            .unwrap();
        let mut line = String::new();
        let _ = std::io::BufReader::new(&s).read_line(&mut line);
        if line.contains("\"type\":\"view\"") {
            break;
        }
        assert!(
            started.elapsed() < T,
            "the socket never served again: {line:?}\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The wrapper's token leaves no byte in its environment block (what
/// `/proc/PID/environ` shows, which unsetting a variable does not change),
/// and the application never gets it. Read as root with CAP_SYS_PTRACE,
/// which the wrapper's undumpability does not stop.
#[test]
fn the_wrapper_keeps_no_copy_of_its_token_in_its_environment() {
    use support::node::{detach, is_mounted, SERFNODE};
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("mnt");
    let token = random_hex(16);
    let mut wrapper = std::process::Command::new(SERFNODE)
        .args(["child", "--name", "t", "--me-link", "none", "--socket"])
        .arg(dir.path().join("no.sock"))
        .arg("--mount")
        .arg(&mount)
        .args(["--", "sleep", "30"])
        .env("SERFNODE_CHILD_TOKEN", &token)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = wrapper.id();
    let app = wait_for_every(DOCKER_POLL, T, "the application to start", || {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .map_err(|e| e.to_string())?;
        children
            .split_whitespace()
            .next()
            .map(String::from)
            .ok_or_else(|| "no child yet".to_string())
    });
    let environ = |p: &str| std::fs::read(format!("/proc/{p}/environ")).unwrap();
    let (own, apps) = (environ(&pid.to_string()), environ(&app));
    let has = |b: &[u8], s: &str| b.windows(s.len()).any(|w| w == s.as_bytes());
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = wrapper.wait();
    if is_mounted(&mount) {
        detach(&mount);
    }
    assert!(
        has(&own, "SERFNODE_CHILD_TOKEN="),
        "the name stays, scrubbed"
    );
    assert!(
        !has(&own, &token),
        "the token in the wrapper's environ block"
    );
    assert!(
        !has(&apps, "SERFNODE_CHILD_TOKEN"),
        "the application got it"
    );
}
