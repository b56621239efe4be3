//! The daemon: wires the agent, the membership sync, the file system, the
//! hosts hook and the write node together, and owns the shutdown order:
//! stop accepting writes → leave the cluster (bounded) → clear the hosts
//! block → unmount → return.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serfnode_fs::{ControlSink, Mount, MountOptions, Publisher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, AgentConfig};
use crate::backoff::{sleep_or_shutdown, Backoff};
use crate::config::Config;
use crate::control::{AgentRaise, WriteNode};
use crate::docker;
use crate::files::Tree;
use crate::hosts::Hosts;
use crate::membership::{self, SyncConfig, View};
use crate::replica;
use crate::rpc::Client;

/// Runs until `shutdown` is cancelled, then stops in order.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let view = View::new();
    let (clients_tx, clients_rx) = watch::channel::<Option<Client>>(None);
    let raise = Arc::new(AgentRaise::new(clients_rx.clone()));
    let sink = WriteNode::new(raise.clone(), tokio::runtime::Handle::current());
    let control: Arc<dyn ControlSink> = Arc::new(sink.clone());
    let tasks = CancellationToken::new();

    // Mount first: a mount point we cannot serve fails the start before the
    // node joins anything.
    let mount = mount(&cfg, Tree::new(view.snapshot(), control.clone())).await?;
    let publisher = tokio::spawn(publish(view.clone(), mount.publisher(), control));
    // Children's mounts follow this view over the share's socket.
    let replica = match &cfg.share {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("create share directory {}", dir.display()))?;
            let listener = replica::bind(&dir.join(replica::SOCKET))?;
            Some(tokio::spawn(replica::serve(
                listener,
                view.clone(),
                raise.clone(),
                tasks.clone(),
            )))
        }
        None => None,
    };
    // A parent's children, launched once the agent is followed.
    let children_stop = CancellationToken::new();
    let children = match (&cfg.docker, &cfg.share) {
        (Some(specs), Some(share)) => {
            share_binary(share)?;
            let parent = docker::Parent::connect(share).await?;
            docker::announce(&parent, &view);
            Some(tokio::spawn(docker::run_children(
                parent,
                specs.clone(),
                cfg.node.clone(),
                view.clone(),
                raise.clone(),
                children_stop.clone(),
            )))
        }
        _ => None,
    };
    let hosts = cfg
        .hosts_file
        .clone()
        .map(|path| tokio::spawn(hosts_hook(view.clone(), Hosts::new(path), tasks.clone())));

    let auth = cfg
        .rpc_auth_file
        .as_deref()
        .map(agent::rpc_auth)
        .transpose()?;
    // The agent outlives every other task: it is stopped last but one, so
    // the leave is gossiped while the files still say what happens.
    let agent_stop = CancellationToken::new();
    let agent = (!cfg.attach).then(|| {
        let acfg = AgentConfig {
            serf: cfg.serf.clone(),
            node: cfg.node.clone(),
            bind: cfg.bind,
            advertise: cfg.advertise,
            rpc: cfg.rpc,
            tags: cfg.tags.to_map(),
            profile: cfg.profile.clone(),
            snapshot: cfg.snapshot.clone(),
            config_file: auth.as_ref().map(|(_, file)| file.clone()),
            leave_timeout: Duration::from_secs(3),
        };
        tokio::spawn(agent::supervise(acfg, agent_stop.clone()))
    });

    let sync = tokio::spawn(membership::sync(
        view.clone(),
        SyncConfig {
            rpc: cfg.rpc,
            auth_key: auth.map(|(key, _)| key),
            poll: cfg.poll,
        },
        clients_tx,
        tasks.clone(),
    ));
    let joiner = (!cfg.join.is_empty())
        .then(|| tokio::spawn(join(cfg.join.clone(), clients_rx.clone(), tasks.clone())));

    tracing::info!(mount = %cfg.mount.display(), node = %cfg.node, "serving the cluster as files");

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    sink.close();
    if let Some(children) = children {
        children_stop.cancel();
        let _ = children.await;
    }
    if let Some(agent) = agent {
        agent_stop.cancel();
        let _ = agent.await;
    }
    tasks.cancel();
    for t in [Some(sync), joiner, replica].into_iter().flatten() {
        let _ = t.await;
    }
    if let Some(h) = hosts {
        if let Ok(mut hosts) = h.await {
            if let Err(e) = tokio::task::spawn_blocking(move || hosts.clear()).await? {
                tracing::warn!("{e}");
            }
        }
    }
    publisher.abort();
    let path = cfg.mount.clone();
    tokio::task::spawn_blocking(move || mount.unmount())
        .await?
        .with_context(|| format!("unmount {}", path.display()))?;
    tracing::info!("stopped");
    Ok(())
}

/// Puts this (static) binary in the share, where children run it from.
fn share_binary(share: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe().context("find the serfnode executable")?;
    let tmp = share.join(".serfnode.tmp");
    let dest = share.join("serfnode");
    std::fs::copy(&exe, &tmp)
        .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)))
        .and_then(|()| std::fs::rename(&tmp, &dest))
        .with_context(|| format!("copy {} to {}", exe.display(), dest.display()))
}

async fn mount(cfg: &Config, root: Arc<Tree>) -> anyhow::Result<Mount> {
    let path = cfg.mount.clone();
    let opts = MountOptions {
        allow_other: cfg.allow_other,
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

/// Publishes each new snapshot to the mount. Publishing invalidates kernel
/// caches (blocking writes to /dev/fuse), so it runs on a blocking thread;
/// the watch channel hands over only the latest snapshot, so a burst of
/// changes costs one publish.
pub(crate) async fn publish(view: View, publisher: Publisher, control: Arc<dyn ControlSink>) {
    let mut rx = view.subscribe();
    // Whatever changed between the mount and this subscription is published.
    rx.mark_changed();
    while rx.changed().await.is_ok() {
        let tree = Tree::new(rx.borrow_and_update().clone(), control.clone());
        let p = publisher.clone();
        if tokio::task::spawn_blocking(move || p.publish(tree))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Rewrites the hosts block whenever the view changes; returns the hook for
/// the final clear. File writes run on a blocking thread, which owns the
/// hook meanwhile.
async fn hosts_hook(view: View, mut hosts: Hosts, stop: CancellationToken) -> Hosts {
    let mut rx = view.subscribe();
    let mut last_error = None;
    loop {
        let snap = rx.borrow_and_update().clone();
        let res;
        (hosts, res) = tokio::task::spawn_blocking(move || {
            let res = hosts.apply(&snap);
            (hosts, res)
        })
        .await
        .expect("the hosts hook does not panic");
        match res {
            Err(e) => {
                let msg = e.to_string();
                if last_error.as_ref() != Some(&msg) {
                    tracing::error!("{msg}");
                }
                last_error = Some(msg);
            }
            Ok(()) => last_error = None,
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { break },
            _ = stop.cancelled() => break,
        }
    }
    hosts
}

/// Joins the given peers over each new agent connection until one join
/// succeeds (a restarted agent has forgotten the cluster).
async fn join(
    peers: Vec<String>,
    mut clients: watch::Receiver<Option<Client>>,
    stop: CancellationToken,
) {
    loop {
        let client = tokio::select! {
            c = clients.wait_for(|c| c.as_ref().is_some_and(|c| !c.is_closed())) => match c {
                Ok(c) => c.clone().expect("waited for some"),
                Err(_) => return,
            },
            _ = stop.cancelled() => return,
        };
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        while !client.is_closed() {
            match client.join(&peers, false).await {
                Ok(n) if n > 0 => {
                    tracing::info!(peers = ?peers, joined = n, "joined the cluster");
                    break;
                }
                Ok(_) => tracing::warn!(peers = ?peers, "join reached no peer; retrying"),
                Err(e) => tracing::warn!(peers = ?peers, "join: {e}; retrying"),
            }
            if sleep_or_shutdown(backoff.next_delay(), &stop).await {
                return;
            }
        }
        // Wait for this connection to end before joining over the next one.
        tokio::select! {
            _ = client.closed() => {}
            _ = stop.cancelled() => return,
        }
    }
}
