//! A real nginx (Debian's `nginx-light`, which `scripts/setup` installs)
//! routing to three small HTTP backends on loopback that are cluster
//! members of role `web` (raw `serf agent`s, their service ports in their
//! tags), its upstream list rendered by a real daemon from the manifest's
//! template, with `command:` reloading nginx. Requests through nginx reach
//! every web member; a member that joins is reached within `wait` max +
//! 1 s; a member whose agent is killed gets no more requests once Serf
//! declares it failed (its HTTP server still answers: only the template
//! keeps nginx away); and a view change the template does not show never
//! reloads nginx.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::node::{Daemon, DaemonOpts};
use support::serf::{Agent, AgentOpts};
use support::{poll_for, wait_for};

const T: Duration = Duration::from_secs(30);
const NGINX: &str = "/usr/sbin/nginx";
const BACKEND_PORT: u16 = 18080;
/// The template's `wait: 200ms:1s`.
const WAIT_MAX: Duration = Duration::from_secs(1);

const UPSTREAMS: &str = r#"upstream web {
{% for m in alive | role("web") | sort_by("name") %}
  server {{ m | service_addr }} max_fails=0;
{% endfor %}
}
"#;

/// An HTTP server on `ip:port` answering every request with `name`.
fn backend(ip: IpAddr, port: u16, name: &str) {
    let listener = TcpListener::bind(SocketAddr::new(ip, port)).unwrap();
    let name = name.to_owned();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                name.len()
            );
        }
    });
}

/// A web member: its HTTP backend on its own address, and its agent.
fn web(node: &Daemon, name: &str) -> Agent {
    let ip = serfnode_testkit::unique_ip();
    backend(ip, BACKEND_PORT, name);
    Agent::start(AgentOpts {
        ip: Some(ip),
        join: Some(node.bind_addr()),
        ..AgentOpts::named(name)
            .tag("role", "web")
            .tag("service_port", &BACKEND_PORT.to_string())
    })
}

/// nginx with its configuration, pid file, logs and temp files in `dir`,
/// listening on `listen`; stopped on drop.
struct Nginx {
    conf: PathBuf,
    listen: SocketAddr,
}

impl Nginx {
    fn start(dir: &Path, listen: SocketAddr, upstreams: &Path) -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} missing: scripts/setup installs Debian's nginx-light"
        );
        let d = dir.display();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nworker_processes 1;\nevents {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/client;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  include {};\n  server {{\n    listen {listen};\n    location / {{\n      proxy_pass http://web;\n      proxy_next_upstream off;\n      proxy_connect_timeout 2s;\n    }}\n  }}\n}}\n",
                upstreams.display()
            ),
        )
        .unwrap();
        let out = Command::new(NGINX)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nginx: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Nginx { conf, listen }
    }

    /// The backend that answered one request, or why none did.
    fn get(&self) -> Result<String, String> {
        let mut conn = TcpStream::connect_timeout(&self.listen, Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            conn,
            "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut resp = String::new();
        conn.read_to_string(&mut resp).map_err(|e| e.to_string())?;
        match resp.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
            _ => Err(resp),
        }
    }

    /// The backends `n` requests reached (errors as `!why`).
    fn reached(&self, n: usize) -> BTreeSet<String> {
        (0..n)
            .map(|_| self.get().unwrap_or_else(|e| format!("!{e}")))
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new(NGINX)
            .arg("-c")
            .arg(&self.conf)
            .args(["-s", "stop"])
            .output();
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn nginx_routes_to_every_web_member_and_follows_joins_and_failures() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let upstreams = d.join("upstreams.conf");
    let source = d.join("upstreams.conf.j2");
    std::fs::write(&source, UPSTREAMS).unwrap();
    // nginx needs a server in its upstream to start: a placeholder the
    // template's first output replaces.
    std::fs::write(&upstreams, "upstream web { server 127.0.0.1:1; }\n").unwrap();
    let listen = SocketAddr::new(serfnode_testkit::unique_ip(), 8080);
    let nginx = Nginx::start(d, listen, &upstreams);
    // The command: count the reload, then reload.
    let reloads = d.join("reloads");
    let reload = d.join("reload.sh");
    std::fs::write(
        &reload,
        format!(
            "#!/bin/sh\necho reload >> {}\nexec {NGINX} -c {} -s reload\n",
            reloads.display(),
            nginx.conf.display()
        ),
    )
    .unwrap();
    let manifest = d.join("serfnode.yml");
    std::fs::write(
        &manifest,
        format!(
            "templates:\n  - name: upstreams\n    source: {}\n    destination: {}\n    command: sh {}\n    wait: 200ms:1s\n",
            source.display(),
            upstreams.display(),
            reload.display()
        ),
    )
    .unwrap();
    let node = Daemon::start(DaemonOpts {
        role: "lb".into(),
        args: vec!["--manifest".into(), manifest.display().to_string()],
        ..DaemonOpts::default()
    });
    let count = || {
        std::fs::read_to_string(&reloads)
            .unwrap_or_default()
            .lines()
            .count()
    };

    // Three web members: requests reach each.
    let _a = web(&node, "web-a");
    let _b = web(&node, "web-b");
    let mut c = web(&node, "web-c");
    wait_for(T, "nginx reaching the three web members", || {
        let got = nginx.reached(12);
        (got == set(&["web-a", "web-b", "web-c"]))
            .then_some(())
            .ok_or(format!("{got:?}"))
    });

    // A fourth joins: reached within wait max + 1 s of its join.
    let joined = Instant::now();
    let _d = web(&node, "web-d");
    let deadline = WAIT_MAX + Duration::from_secs(1);
    let reached = poll_for(deadline.saturating_sub(joined.elapsed()), || {
        let got = nginx.reached(8);
        got.contains("web-d")
            .then_some(())
            .ok_or(format!("{got:?}"))
    });
    assert!(
        reached.is_ok(),
        "web-d not reached within {deadline:?} of its join: {reached:?}\n{}",
        node.log()
    );
    wait_for(T, "all four reached", || {
        nginx.reached(16) == set(&["web-a", "web-b", "web-c", "web-d"])
    });

    // web-c's agent killed (its HTTP server runs on): once Serf declares
    // it failed, the list drops it, and after wait max nginx stops sending
    // to it.
    c.kill();
    node.wait_json("members/web-c.json", Duration::from_secs(60), |m| {
        m["status"] == "failed"
    });
    let failed = Instant::now();
    wait_for(T, "the upstream list without web-c", || {
        !std::fs::read_to_string(&upstreams)
            .unwrap()
            .contains(&c.ip().to_string())
    });
    wait_for(T, "nginx no longer sending to web-c", || {
        !nginx.reached(12).contains("web-c")
    });
    // A reload starts new workers and lets the old ones finish: for an
    // instant both accept. Give the old one that instant.
    std::thread::sleep(Duration::from_secs(1));
    let after = nginx.reached(40);
    assert_eq!(
        after,
        set(&["web-a", "web-b", "web-d"]),
        "{:?} after the failure",
        failed.elapsed()
    );

    // Changes the template does not show: no reload.
    let before = count();
    let generation = node.json("status.json")["generation"].as_u64().unwrap();
    let db = Agent::start(AgentOpts {
        join: Some(node.bind_addr()),
        ..AgentOpts::named("db-1").tag("role", "db")
    });
    db.set_tags(&[("role", "db"), ("zone", "eu")]);
    node.wait_json("members/db-1.json", T, |m| m["tags"]["zone"] == "eu");
    assert!(node.json("status.json")["generation"].as_u64().unwrap() > generation);
    // Past wait max, with room: anything that would run has run.
    std::thread::sleep(WAIT_MAX + Duration::from_secs(1));
    assert_eq!(count(), before, "an unchanged upstream list reloaded nginx");
    let status = node.json("status.json");
    let t = &status["templates"]["upstreams"];
    assert_eq!(t["ok"], true, "{status}");
    assert_eq!(t["command"]["last_exit"], 0, "{status}");
    assert_eq!(
        t["command"]["runs"].as_u64(),
        Some(before as u64),
        "{status}"
    );
}
