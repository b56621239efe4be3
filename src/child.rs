//! The in-container side: `serfnode child -- CMD...` wraps a child
//! container's own entrypoint. It mounts the cluster files at `/serfnode`
//! (fed by the parent over the replica link), points `/me.json` at them, and
//! runs the application unchanged as its child with the capability the mount
//! needed dropped, doing PID 1's duties meanwhile: signals forwarded, zombies
//! reaped, the application's exit status returned.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::Context;
use serfnode_fs::MountOptions;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::control::WriteNode;
use crate::files::{Nodes, Tree};
use crate::grants::TOKEN_ENV;
use crate::handlers::Handlers;
use crate::journal::Journal;
use crate::membership::View;
use crate::query::Querier;
use crate::replica::{self, ChildSide, ParentRaise};

/// CAP_SYS_ADMIN, from linux/capability.h.
const CAP_SYS_ADMIN: u32 = 21;

#[derive(Debug, Clone)]
pub struct ChildConfig {
    pub name: String,
    pub socket: PathBuf,
    pub mount: PathBuf,
    /// Where to link `me.json` from (`/me.json`), if anywhere.
    pub me_link: Option<PathBuf>,
    /// Keep CAP_SYS_ADMIN for the application (a privileged child).
    pub keep_caps: bool,
    /// Run the application as this user (`name`, `uid` or `uid:gid`); the
    /// wrapper itself stays root to serve the mount.
    pub user: Option<String>,
    /// The child's own handlers (run in the child for the parent's events).
    pub events: crate::config::EventsConfig,
    /// Proves to the parent which child this is (never given to the
    /// application).
    pub token: Option<String>,
    pub command: Vec<OsString>,
}

impl ChildConfig {
    pub fn resolve(args: crate::cli::ChildArgs) -> anyhow::Result<ChildConfig> {
        let name = match args.name {
            Some(n) => n,
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .context("read the hostname for the child's name")?
                .trim()
                .to_owned(),
        };
        Ok(ChildConfig {
            name,
            socket: args.socket,
            mount: args.mount,
            me_link: (args.me_link != "none").then(|| PathBuf::from(args.me_link)),
            keep_caps: args.keep_caps,
            user: args.user,
            events: crate::config::EventsConfig::resolve(&args.events, None)?,
            token: std::env::var(TOKEN_ENV).ok(),
            command: args.command,
        })
    }
}

/// Runs the application under the mount; returns its exit code (128 + the
/// signal number if a signal ended it).
pub async fn run(cfg: ChildConfig) -> anyhow::Result<i32> {
    let (program, args) = cfg
        .command
        .split_first()
        .context("no command to run: serfnode child -- CMD [ARGS...]")?;
    let view = View::new();
    let stop = CancellationToken::new();
    let (requests_tx, requests_rx) = mpsc::channel(64);
    let parent = Arc::new(ParentRaise::new(requests_tx));
    let runtime = tokio::runtime::Handle::current();
    let node = WriteNode::new(parent.clone(), runtime.clone());
    let nodes = Nodes {
        sink: Arc::new(node.clone()),
        queries: Arc::new(Querier::new(parent, runtime)),
    };
    let side = ChildSide {
        journal: Journal::new(cfg.events.journal_size),
        start: Default::default(),
        token: cfg.token.clone(),
    };
    let handlers_stop = CancellationToken::new();
    let handlers = Handlers::start(
        crate::daemon::handler_config(&cfg.events),
        handlers_stop.clone(),
    );

    let path = cfg.mount.clone();
    let root = Tree::new(view.snapshot(), side.journal.snapshot(), nodes.clone());
    let mount = tokio::task::spawn_blocking(move || {
        serfnode_fs::detach_stale(&path)?;
        std::fs::create_dir_all(&path)
            .with_context(|| format!("create mount point {}", path.display()))?;
        serfnode_fs::mount(
            &path,
            root,
            &MountOptions {
                allow_other: true,
                ..MountOptions::default()
            },
        )
        .map_err(anyhow::Error::from)
    })
    .await??;
    let publisher = tokio::spawn(crate::daemon::publish(
        view.clone(),
        side.journal.clone(),
        mount.publisher(),
        nodes,
    ));
    let link = tokio::spawn(replica::follow(
        cfg.socket.clone(),
        cfg.name.clone(),
        view.clone(),
        side.clone(),
        requests_rx,
        stop.clone(),
    ));
    let dispatch = tokio::spawn(crate::events::dispatch_journal(
        side.journal.clone(),
        view.clone(),
        handlers.clone(),
        side.start.clone(),
        stop.clone(),
    ));
    if let Some(link) = &cfg.me_link {
        link_me(link, &cfg.mount.join(crate::files::ME));
    }

    let user = cfg.user.as_deref().map(resolve_user).transpose()?;
    let keep_caps = cfg.keep_caps;
    let mut cmd = Command::new(program);
    cmd.args(args).env_remove(TOKEN_ENV);
    // SAFETY: only async-signal-safe syscalls run between fork and exec.
    // Capabilities go first: after setuid the process could not drop them.
    unsafe {
        cmd.pre_exec(move || {
            if !keep_caps {
                drop_sys_admin()?;
            }
            if let Some((uid, gid)) = user {
                become_user(uid, gid)?;
            }
            Ok(())
        })
    };
    let app = cmd
        .spawn()
        .with_context(|| format!("start {}", program.to_string_lossy()))?;
    let pid = app.id() as libc::pid_t;
    tracing::info!(pid, command = ?cfg.command, "application started");
    let status = crate::init::wait_forwarding(pid).await?.code;
    tracing::info!(status, "application exited");

    node.close();
    stop.cancel();
    let _ = link.await;
    let _ = dispatch.await;
    handlers_stop.cancel();
    handlers.stopped().await;
    publisher.abort();
    let path = cfg.mount.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || mount.unmount()).await? {
        tracing::warn!("unmount {}: {e}", path.display());
    }
    Ok(status)
}

/// `/me.json` → the mount's `me.json`, unless the image has its own file.
fn link_me(link: &Path, target: &Path) {
    match std::fs::symlink_metadata(link) {
        Ok(m) if !m.file_type().is_symlink() => {
            tracing::warn!("{} exists in the image; not replaced", link.display());
            return;
        }
        Ok(_) => {
            let _ = std::fs::remove_file(link);
        }
        Err(_) => {}
    }
    if let Err(e) = std::os::unix::fs::symlink(target, link) {
        tracing::warn!("link {} to {}: {e}", link.display(), target.display());
    }
}

/// `name`, `uid` or `uid:gid` (or `name:group`) → ids, from the image's
/// /etc/passwd and /etc/group; resolved before fork (no lookups after).
fn resolve_user(spec: &str) -> anyhow::Result<(u32, u32)> {
    let (user, group) = spec
        .split_once(':')
        .map_or((spec, None), |(u, g)| (u, Some(g)));
    let lookup = |file: &str, name: &str| -> Option<(u32, u32)> {
        let text = std::fs::read_to_string(file).ok()?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (uid, lookup_gid_of_uid(uid).unwrap_or(uid)),
        Err(_) => lookup("/etc/passwd", user)
            .with_context(|| format!("user {user} not in /etc/passwd"))?,
    };
    let gid = match group {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                lookup("/etc/group", g)
                    .with_context(|| format!("group {g} not in /etc/group"))?
                    .0
            }
        },
    };
    Ok((uid, gid))
}

fn lookup_gid_of_uid(uid: u32) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[2].parse() == Ok(uid)).then(|| f[3].parse().ok())?
    })
}

fn become_user(uid: u32, gid: u32) -> std::io::Result<()> {
    let err = std::io::Error::last_os_error;
    // SAFETY: plain credential syscalls with valid arguments.
    unsafe {
        if libc::setgroups(1, &gid) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
            return Err(err());
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Removes CAP_SYS_ADMIN from the bounding set and from the effective,
/// permitted, inheritable and ambient sets, so the application can never
/// mount or regain it. Runs between fork and exec: raw syscalls only.
fn drop_sys_admin() -> std::io::Result<()> {
    let err = std::io::Error::last_os_error;
    // SAFETY: prctl/capget/capset with valid arguments and live buffers.
    unsafe {
        if libc::prctl(
            libc::PR_CAPBSET_DROP,
            CAP_SYS_ADMIN as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(err());
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_LOWER as libc::c_ulong,
            CAP_SYS_ADMIN as libc::c_ulong,
            0,
            0,
        );
        let mut header = CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut data = [CapData::default(); 2];
        if libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) != 0 {
            return Err(err());
        }
        let bit = !(1u32 << CAP_SYS_ADMIN);
        data[0].effective &= bit;
        data[0].permitted &= bit;
        data[0].inheritable &= bit;
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0 {
            return Err(err());
        }
    }
    Ok(())
}
