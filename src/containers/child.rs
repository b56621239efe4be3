//! The in-container side: `serfnode child -- CMD...` wraps a child
//! container's own entrypoint. It mounts the cluster files at `/serfnode`
//! (fed by the parent over the replica link), points `/me.json` at them, and
//! runs the application unchanged as its child with the application's
//! restrictions ([`crate::surface::restrict`]: CAP_SYS_ADMIN, which only the mount
//! needs, dropped; its `user:`), doing PID 1's duties meanwhile: signals
//! forwarded, zombies reaped, the application's exit status returned. Every
//! handler it runs gets the same restrictions.
//!
//! The wrapper is the one process of the child that keeps CAP_SYS_ADMIN, so
//! the application must not reach into it: it is not dumpable (no
//! `/proc/1/environ`, `/proc/1/mem` or ptrace for a process without
//! CAP_SYS_PTRACE, root or not), and its token is taken out of its
//! environment, bytes and all, before anything else runs ([`prepare`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::Context;
use serfnode_fs::MountOptions;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cluster::membership::View;
use crate::containers::grants::TOKEN_ENV;
use crate::containers::replica::{self, ChildSide, ParentLink};
use crate::surface::files::Querier;
use crate::surface::files::{Nodes, Tree};
use crate::surface::handlers::Handlers;
use crate::surface::journal::Journal;
use crate::surface::restrict::Restrictions;
use crate::surface::write_node::WriteNode;

#[derive(Debug, Clone)]
pub struct ChildConfig {
    pub name: String,
    pub socket: PathBuf,
    pub mount: PathBuf,
    /// Where to link `me.json` from (`/me.json`), if anywhere.
    pub me_link: Option<PathBuf>,
    /// What the application and the handlers may not do; the wrapper itself
    /// stays root with CAP_SYS_ADMIN to serve the mount.
    pub restrict: Restrictions,
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
        // Resolved before fork, from the image's own files.
        let restrict =
            Restrictions::for_child(args.user.as_deref(), args.keep_caps, Path::new("/"))?;
        Ok(ChildConfig {
            name,
            socket: args.socket,
            mount: args.mount,
            me_link: (args.me_link != "none").then(|| PathBuf::from(args.me_link)),
            restrict,
            events: crate::config::EventsConfig::resolve(&args.events, None)?,
            token: args.token,
            command: args.command,
        })
    }
}

/// Readies the wrapper before any thread exists: not dumpable (see the
/// module doc), and the token taken out of the environment into `args`.
pub fn prepare(args: &mut crate::cli::ChildArgs) -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    args.token = crate::containers::secrets::take_env(TOKEN_ENV);
    Ok(())
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
    let parent = Arc::new(ParentLink::new(requests_tx));
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
        crate::surface::handlers::HandlerConfig {
            restrict: cfg.restrict.clone(),
            ..crate::daemon::handler_config(&cfg.events)
        },
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
    let dispatch = tokio::spawn(crate::surface::router::dispatch_journal(
        side.journal.clone(),
        view.clone(),
        handlers.clone(),
        side.start.clone(),
        stop.clone(),
    ));
    if let Some(link) = &cfg.me_link {
        link_me(link, &cfg.mount.join(crate::surface::files::ME));
    }

    let mut cmd = Command::new(program);
    cmd.args(args).env_remove(TOKEN_ENV);
    cfg.restrict.on_std(&mut cmd);
    let app = cmd
        .spawn()
        .with_context(|| format!("start {}", program.to_string_lossy()))?;
    let pid = app.id() as libc::pid_t;
    tracing::info!(pid, command = ?cfg.command, "application started");
    let status = crate::containers::init::wait_forwarding(pid).await?.code;
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
