//! The surface: the cluster served as files. The file tree over the view
//! ([`files`]), the write node that raises events ([`write_node`]), queries
//! asked and answered ([`query`]), where both go ([`upstream`]), the event
//! journal ([`journal`]), the handlers run for events ([`handlers`],
//! contained by [`restrict`]), the follower of the agent's stream
//! ([`follower`]) and the router that hands each event to the journal, the
//! handlers and the query answers ([`router`]), the hosts file ([`hosts`])
//! and templates ([`templates`]).
//!
//! [`Surface`] is the one construction of it, for a parent daemon (whose
//! upstream is its agent) and a child wrapper (whose upstream is the parent)
//! alike: templates compiled (one that does not parse stops the start) →
//! view → journal → file tree → write node and querier → mount → publisher
//! → handlers → templates stage. Its teardown runs in one order, the
//! reverse of what depends on what:
//!
//! 1. [`Surface::close`]: the write node refuses every later write (EAGAIN),
//!    so nothing new is raised while the caller stops what feeds the view
//!    and the journal (a parent's children, agent and follower; a child's
//!    replica link);
//! 2. [`Surface::finish`]: the handlers and the templates' commands are
//!    stopped (running ones killed with their process groups), so none
//!    outlives the daemon; then the
//!    caller's last step before the files go (a parent clears its hosts
//!    block); then the publisher stops and the mount goes last, so the files
//!    say what happens until the end (a file still open does not fail the
//!    stop: the mount is detached).

pub mod files;
pub(crate) mod follower;
pub(crate) mod handlers;
pub mod hosts;
pub(crate) mod journal;
pub mod query;
pub(crate) mod restrict;
pub(crate) mod router;
pub mod templates;
pub mod upstream;
pub mod write_node;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serfnode_fs::{Mount, MountOptions, Publisher};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::membership::View;
use files::{Nodes, Querier, TemplateFiles, Tree};
use handlers::{HandlerConfig, Handlers};
use journal::Journal;
use restrict::Restrictions;
use templates::{StageConfig, TemplateSet, TemplateSpec, Templates};
use upstream::Upstream;
use write_node::WriteNode;

/// Handlers and journal settings, shared by the daemon and the child wrapper.
#[derive(Debug, Clone, PartialEq)]
pub struct EventsConfig {
    pub handlers: PathBuf,
    pub concurrency: usize,
    pub timeout: Duration,
    pub journal_size: usize,
}

/// What differs between a parent's surface and a child's.
pub(crate) struct SurfaceConfig {
    /// Where the files are mounted.
    pub mount: PathBuf,
    /// Whether users other than root may read the files.
    pub allow_other: bool,
    pub events: EventsConfig,
    /// Applied to every handler and template command: in a child, the
    /// application's restrictions.
    pub restrict: Restrictions,
    /// The node's templates (a child's own, in a child).
    pub templates: Vec<TemplateSpec>,
}

/// A running surface: its files mounted and published, its handlers ready.
pub(crate) struct Surface<U> {
    pub handlers: Handlers,
    pub templates: Templates,
    write_node: WriteNode<Arc<U>>,
    mount: Mount,
    publisher: JoinHandle<()>,
    handlers_stop: CancellationToken,
}

impl<U: Upstream> Surface<U> {
    /// Builds the surface over `view` and `journal` (a parent's own, or a
    /// child's mirror of its parent's) and mounts it. The mount comes first
    /// of what can fail: a mount point that cannot be served fails the start
    /// before anything joins or runs.
    pub async fn start(
        view: View,
        journal: Journal,
        upstream: Arc<U>,
        cfg: &SurfaceConfig,
    ) -> anyhow::Result<Surface<U>> {
        // Before anything is served: a template that cannot be read or
        // parsed stops the start, naming its file, line and column.
        let specs = cfg.templates.clone();
        let set = tokio::task::spawn_blocking(move || TemplateSet::load(&specs)).await??;
        let runtime = tokio::runtime::Handle::current();
        let write_node = WriteNode::new(upstream.clone(), runtime.clone());
        let nodes = Nodes {
            sink: Arc::new(write_node.clone()),
            queries: Arc::new(Querier::new(upstream.clone(), runtime)),
        };
        let no_templates = Arc::new(TemplateFiles {
            enabled: !cfg.templates.is_empty(),
            ..TemplateFiles::default()
        });
        let root = Tree::new(
            view.snapshot(),
            journal.snapshot(),
            nodes.clone(),
            no_templates,
        );
        let mount = mount(cfg.mount.clone(), cfg.allow_other, root).await?;
        let templates = Templates::start(
            set,
            view.clone(),
            StageConfig {
                specs: cfg.templates.clone(),
                timeout: cfg.events.timeout,
                restrict: cfg.restrict.clone(),
            },
        );
        let publisher = tokio::spawn(publish(
            view.clone(),
            journal.clone(),
            templates.files(),
            mount.publisher(),
            nodes,
        ));
        let handlers_stop = CancellationToken::new();
        let handlers = Handlers::start(
            HandlerConfig {
                dir: cfg.events.handlers.clone(),
                concurrency: cfg.events.concurrency,
                timeout: cfg.events.timeout,
                restrict: cfg.restrict.clone(),
                ..HandlerConfig::default()
            },
            handlers_stop.clone(),
        );
        Ok(Surface {
            handlers,
            templates,
            write_node,
            mount,
            publisher,
            handlers_stop,
        })
    }

    /// Teardown, step 1 (see the module doc): refuse every later write.
    pub fn close(&self) {
        self.write_node.close();
    }

    /// Teardown, step 2 (see the module doc): stops the handlers, runs
    /// `before_unmount`, stops publishing and unmounts.
    pub async fn finish(
        self,
        before_unmount: impl Future<Output = anyhow::Result<()>>,
    ) -> anyhow::Result<()> {
        self.close();
        self.handlers_stop.cancel();
        self.handlers.stopped().await;
        self.templates.stop().await;
        before_unmount.await?;
        self.publisher.abort();
        let mount = self.mount;
        match tokio::task::spawn_blocking(move || mount.unmount()).await? {
            Ok(()) => Ok(()),
            // Detached already (gone from the file system); a file someone
            // still has open is served until this process exits. No reason
            // to fail the stop.
            Err(serfnode_fs::FsError::Unmount { path, error })
                if error.kind() == std::io::ErrorKind::TimedOut =>
            {
                tracing::warn!(
                    "unmount {}: files still open; detached (their reads fail once serfnode exits)",
                    path.display()
                );
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

async fn mount(path: PathBuf, allow_other: bool, root: Arc<Tree>) -> anyhow::Result<Mount> {
    let opts = MountOptions {
        allow_other,
        ..MountOptions::default()
    };
    tokio::task::spawn_blocking(move || {
        // A crashed run's dead mount answers ENOTCONN, which would make
        // creating the mount point fail with EEXIST: detach it first.
        serfnode_fs::detach_stale(&path)?;
        std::fs::create_dir_all(&path)
            .with_context(|| format!("create mount point {}", path.display()))?;
        serfnode_fs::mount(&path, root, &opts).map_err(anyhow::Error::from)
    })
    .await?
}

/// Publishes each new snapshot of the view, the journal or the templates'
/// outputs to the mount.
/// Invalidating kernel caches (blocking writes to /dev/fuse) runs on a
/// blocking thread, and only when there is something to invalidate; the
/// watch channels hand over only the latest snapshots, so a burst of
/// changes costs one publish.
async fn publish(
    view: View,
    journal: Journal,
    mut templates: tokio::sync::watch::Receiver<Arc<TemplateFiles>>,
    publisher: Publisher,
    nodes: Nodes,
) {
    let mut rx = view.subscribe();
    let mut entries = journal.subscribe();
    // Whatever changed between the mount and this subscription is published.
    rx.mark_changed();
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            r = entries.changed() => if r.is_err() { return },
            // Closed when there are no templates: nothing more to wait for.
            r = templates.changed(), if templates.has_changed().is_ok() => if r.is_err() { continue },
        }
        let tree = Tree::new(
            rx.borrow_and_update().clone(),
            entries.borrow_and_update().clone(),
            nodes.clone(),
            templates.borrow_and_update().clone(),
        );
        // The switch is a lock and a walk of the names the kernel holds;
        // only telling the kernel blocks. Most changes are to files nobody
        // holds open (the kernel holds no name of them), so most publishes
        // cost no thread hand-over.
        let notices = publisher.switch(tree);
        if !notices.is_empty()
            && tokio::task::spawn_blocking(move || notices.send())
                .await
                .is_err()
        {
            return;
        }
    }
}
