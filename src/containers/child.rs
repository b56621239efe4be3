//! The in-container side: `serfnode child -- CMD...` wraps a child
//! container's own entrypoint. It mounts the cluster files at `/serfnode`
//! (fed by the parent over the replica link), points `/me.json` at them, and
//! runs the application unchanged as its child with the application's
//! restrictions ([`crate::surface::restrict`]: CAP_SYS_ADMIN, which only the mount
//! needs, dropped; its `user:`), doing PID 1's duties meanwhile: signals
//! forwarded, zombies reaped, the application's exit status returned. Every
//! handler it runs gets the same restrictions.
//!
//! Its files are a child's configuration of the [`Surface`]: the upstream is
//! the parent, over the replica link ([`ParentLink`]), the view and the
//! journal mirror the parent's, and its handlers run for the journal's new
//! entries ([`crate::surface::router::dispatch_journal`]).
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
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cluster::membership::View;
use crate::containers::replica::{self, ChildSide, ParentLink};
use crate::surface::journal::Journal;
use crate::surface::restrict::Restrictions;
use crate::surface::restrict::TOKEN_ENV;
use crate::surface::templates::TemplateSpec;
use crate::surface::{EventsConfig, Surface, SurfaceConfig};

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
    pub events: EventsConfig,
    /// The child's templates, rendered here.
    pub templates: Vec<TemplateSpec>,
    /// Proves to the parent which child this is (never given to the
    /// application).
    pub token: Option<String>,
    pub command: Vec<OsString>,
}

/// Readies the wrapper before any thread exists: not dumpable (see the
/// module doc), and the token taken out of the environment; returns it.
pub fn prepare() -> std::io::Result<Option<String>> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(crate::containers::secrets::take_env(TOKEN_ENV))
}

/// How long a child's application waits for its templates' first writes.
const FIRST_TEMPLATES_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

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
    let side = ChildSide {
        journal: Journal::new(cfg.events.journal_size),
        start: Default::default(),
        token: cfg.token.clone(),
    };
    let surface = Surface::start(
        view.clone(),
        side.journal.clone(),
        Arc::new(ParentLink::new(requests_tx)),
        &SurfaceConfig {
            mount: cfg.mount.clone(),
            allow_other: true,
            events: cfg.events.clone(),
            restrict: cfg.restrict.clone(),
            templates: cfg.templates.clone(),
        },
    )
    .await?;
    let handlers = surface.handlers.clone();
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

    // The application starts once its templates are written from the
    // cluster (it reads them as it starts, and is signalled only for the
    // changes after that, each held until it handles the signal), or after
    // FIRST_TEMPLATES_WAIT without its parent's view.
    if !surface.templates.first_acted(FIRST_TEMPLATES_WAIT).await {
        tracing::warn!(
            "starting the application before every template was written: no view from the parent within {FIRST_TEMPLATES_WAIT:?}"
        );
    }
    let caught = crate::containers::init::catch()?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_remove(TOKEN_ENV)
        .env_remove("SERFNODE_TEMPLATES");
    cfg.restrict.on_std(&mut cmd);
    let app = cmd
        .spawn()
        .with_context(|| format!("start {}", program.to_string_lossy()))?;
    let pid = app.id() as libc::pid_t;
    tracing::info!(pid, command = ?cfg.command, "application started");
    surface.templates.set_application(pid);
    let status = crate::containers::init::wait_forwarding(pid, caught).await;
    surface.templates.set_application(0);
    let status = status?.code;
    tracing::info!(status, "application exited");

    surface.close();
    stop.cancel();
    let _ = link.await;
    let _ = dispatch.await;
    let path = cfg.mount.clone();
    if let Err(e) = surface.finish(async { Ok(()) }).await {
        tracing::warn!("unmount {}: {e:#}", path.display());
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
