//! The daemon (`serfnode agent`): a parent's configuration of the
//! [`Surface`], whose upstream is the local agent. It wires the agent, the
//! membership sync, the follower of the agent's stream, the hosts hook, the
//! replica link and the children to it, and owns the shutdown order: stop
//! accepting writes → stop the children (all at once, bounded by the
//! parent's `docker stop` grace) → leave the cluster (bounded: 3 s) → stop
//! the tasks → kill running handlers → clear the hosts block → unmount (a
//! file still open does not fail the stop) → return.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::{sleep_or_shutdown, Backoff};
use crate::cluster::agent::{self, AgentConfig};
use crate::cluster::keys;
use crate::cluster::membership::{self, SyncConfig, View};
use crate::cluster::rpc::Client;
use crate::config::Config;
use crate::containers::docker;
use crate::containers::grants::Grants;
use crate::containers::replica;
use crate::surface::follower;
use crate::surface::hosts::Hosts;
use crate::surface::journal::Journal;
use crate::surface::restrict::Restrictions;
use crate::surface::upstream::AgentUpstream;
use crate::surface::{Surface, SurfaceConfig};

/// Runs until `shutdown` is cancelled, then stops in order.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let view = View::new();
    let journal = Journal::new(cfg.events.journal_size);
    let (clients_tx, clients_rx) = watch::channel::<Option<Client>>(None);
    // The connection whose event stream is followed: writes wait for it.
    let (followed_tx, followed_rx) = watch::channel::<Option<Client>>(None);
    let upstream = Arc::new(AgentUpstream::new(
        followed_rx,
        view.clone(),
        cfg.event_rate,
    ));
    let tasks = CancellationToken::new();
    // Known before the first status.json is served.
    announce_encryption(&cfg, &view);
    let surface = Surface::start(
        view.clone(),
        journal.clone(),
        upstream.clone(),
        &SurfaceConfig {
            mount: cfg.mount.clone(),
            allow_other: cfg.allow_other,
            events: cfg.events.clone(),
            restrict: Restrictions::none(),
            templates: cfg.templates.clone(),
        },
    )
    .await?;
    let handlers = surface.handlers.clone();
    // Children's mounts follow this view over the share's socket; a
    // parent's children prove who they are with the token it gave them.
    let grants = cfg.docker.is_some().then(Grants::default);
    let replica = match &cfg.share {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("create share directory {}", dir.display()))?;
            let listener = replica::bind(&dir.join(replica::SOCKET))?;
            Some(tokio::spawn(replica::serve(
                listener,
                view.clone(),
                journal.clone(),
                upstream.clone(),
                grants.clone(),
                cfg.child_query_rate,
                tasks.clone(),
            )))
        }
        None => None,
    };
    let auth = cfg
        .rpc_auth_file
        .as_deref()
        .map(agent::rpc_auth)
        .transpose()?;
    // A parent's children, launched once the agent is followed.
    let children_stop = CancellationToken::new();
    let children = match (&cfg.docker, &cfg.share) {
        (Some(specs), Some(share)) => {
            share_binary(share)?;
            let parent = docker::ParentContainer::connect(share)
                .await?
                .with_redactor(redactor(&cfg, auth.as_deref()));
            docker::announce(&parent, &view);
            Some(tokio::spawn(docker::run_children(
                parent,
                specs.clone(),
                cfg.node.clone(),
                view.clone(),
                upstream.clone(),
                grants.clone().unwrap_or_default(),
                children_stop.clone(),
            )))
        }
        _ => None,
    };
    let hosts = cfg
        .hosts_file
        .clone()
        .map(|path| tokio::spawn(hosts_hook(view.clone(), Hosts::new(path), tasks.clone())));

    // Kept open until the daemon returns: a restarted agent reads it again.
    let agent_file = agent_config_file(&cfg, auth.as_deref())?;
    if cfg.attach {
        tokio::spawn(probe_encryption(
            clients_rx.clone(),
            view.clone(),
            tasks.clone(),
        ));
    }
    // The agent outlives every other task: it is stopped last but one, so
    // the leave is gossiped while the files still say what happens.
    let agent_stop = CancellationToken::new();
    // The agent's reports of records it dropped for us (its log is ours
    // only when we run it).
    let (drops_tx, drops_rx) = tokio::sync::mpsc::channel(64);
    let drops_rx = (!cfg.attach).then_some(drops_rx);
    let agent_pid = (!cfg.attach).then(crate::cluster::rpc::peer::AgentPid::default);
    let agent = agent_pid.clone().map(|pid| {
        let acfg = AgentConfig {
            serf: cfg.serf.clone(),
            node: cfg.node.clone(),
            bind: cfg.bind,
            advertise: cfg.advertise,
            rpc: cfg.rpc,
            tags: cfg.tags.to_map(),
            profile: cfg.profile.clone(),
            snapshot: cfg.snapshot.clone(),
            config_file: agent_file.as_ref().map(|f| f.path().to_owned()),
            inherit_fd: agent_file.as_ref().and_then(|f| f.inherit_fd()),
            leave_timeout: Duration::from_secs(3),
            drops: Some(drops_tx),
            pid,
        };
        tokio::spawn(agent::supervise(acfg, agent_stop.clone()))
    });

    let sync = tokio::spawn(membership::sync(
        view.clone(),
        SyncConfig {
            rpc: cfg.rpc,
            auth_key: auth,
            agent: agent_pid,
            reconcile: cfg.reconcile,
        },
        clients_tx,
        tasks.clone(),
    ));
    let events = tokio::spawn(follower::follow(
        clients_rx.clone(),
        followed_tx,
        view.clone(),
        journal,
        handlers.clone(),
        drops_rx,
        tasks.clone(),
    ));
    let joiner = (!cfg.join.is_empty())
        .then(|| tokio::spawn(join(cfg.join.clone(), clients_rx.clone(), tasks.clone())));

    tracing::info!(mount = %cfg.mount.display(), node = %cfg.node, "serving the cluster as files");

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    surface.close();
    if let Some(children) = children {
        children_stop.cancel();
        let _ = children.await;
    }
    if let Some(agent) = agent {
        agent_stop.cancel();
        let _ = agent.await;
    }
    tasks.cancel();
    for t in [Some(sync), Some(events), joiner, replica]
        .into_iter()
        .flatten()
    {
        let _ = t.await;
    }
    surface
        .finish(async {
            if let Some(h) = hosts {
                if let Ok(mut hosts) = h.await {
                    if let Err(e) = tokio::task::spawn_blocking(move || hosts.clear()).await? {
                        tracing::warn!("{e}");
                    }
                }
            }
            Ok(())
        })
        .await?;
    tracing::info!("stopped");
    Ok(())
}

/// What no inspect the files show may contain: the gossip key, the
/// keyring's keys (as they are at start), the RPC key.
fn redactor(cfg: &Config, auth: Option<&str>) -> crate::containers::secrets::Redactor {
    let mut known: Vec<String> = auth.into_iter().map(String::from).collect();
    known.extend(cfg.encryption.key.iter().map(|k| k.0.clone()));
    if let Some(path) = &cfg.encryption.keyring_file {
        if let Ok(Some(keys)) = keys::read_keyring(path) {
            known.extend(keys);
        }
    }
    crate::containers::secrets::Redactor::new(known)
}

/// Gossip encryption as configured: shown in status.json, and a warning
/// when there is none. With `--attach` the agent is asked once followed.
fn announce_encryption(cfg: &Config, view: &View) {
    if cfg.attach {
        if cfg.encryption.enabled() {
            tracing::warn!("--attach: the encryption settings are ignored; the agent has its own");
        }
        return;
    }
    view.set_encrypted(Some(cfg.encryption.enabled()));
    if !cfg.encryption.enabled() {
        keys::warn_unencrypted(false);
    }
}

/// The agent's config file: its RPC key and gossip encryption (key, or a
/// keyring file made from it when missing). `None` when there is nothing
/// to give.
fn agent_config_file(
    cfg: &Config,
    auth: Option<&str>,
) -> anyhow::Result<Option<agent::ConfigFile>> {
    let mut entries = serde_json::Map::new();
    if let Some(key) = auth {
        entries.insert("rpc_auth".into(), key.into());
    }
    if !cfg.attach {
        entries.extend(cfg.encryption.agent_entries()?);
    }
    if entries.is_empty() {
        return Ok(None);
    }
    Ok(Some(agent::ConfigFile::write(
        cfg.rpc_auth_file.as_deref(),
        &entries,
    )?))
}

/// With `--attach`: whether the agent encrypts its gossip, from its stats,
/// once it is followed.
async fn probe_encryption(
    mut clients: watch::Receiver<Option<Client>>,
    view: View,
    stop: CancellationToken,
) {
    while let Some(client) = membership::next_client(&mut clients, &stop).await {
        match keys::agent_encrypted(&client).await {
            Some(encrypted) => {
                view.set_encrypted(Some(encrypted));
                if !encrypted {
                    keys::warn_unencrypted(true);
                }
                return;
            }
            // The connection failed under us: wait for the next one.
            None => tokio::select! {
                _ = client.closed() => {}
                _ = stop.cancelled() => return,
            },
        }
    }
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

/// Rewrites the hosts block whenever the view changes what it says; returns
/// the hook for the final clear. File writes run on a blocking thread, which
/// owns the hook meanwhile.
async fn hosts_hook(view: View, mut hosts: Hosts, stop: CancellationToken) -> Hosts {
    let mut rx = view.subscribe();
    let mut last_error = None;
    loop {
        let snap = rx.borrow_and_update().clone();
        // Most changes leave every role's oldest member where it was: those
        // cost the index update here and no file work.
        let res = match hosts.due(&snap) {
            None => Ok(()),
            Some(roles) => {
                let res;
                (hosts, res) = tokio::task::spawn_blocking(move || {
                    let res = hosts.write(roles);
                    (hosts, res)
                })
                .await
                .expect("the hosts hook does not panic");
                res
            }
        };
        match res {
            Err(e) => {
                let msg = e.to_string();
                if last_error.as_ref() != Some(&msg) {
                    tracing::error!("{msg}");
                }
                last_error = Some(msg);
            }
            Ok(()) => {
                if last_error.take().is_some() {
                    tracing::info!("hosts file written again after the error");
                }
            }
        }
        // A failed write (disk full, file replaced) is retried on the next
        // change, and meanwhile every second: nothing waits for a change
        // that may not come.
        tokio::select! {
            r = rx.changed() => if r.is_err() { break },
            _ = tokio::time::sleep(HOSTS_RETRY), if last_error.is_some() => {}
            _ = stop.cancelled() => break,
        }
    }
    hosts
}

const HOSTS_RETRY: Duration = Duration::from_secs(1);

/// Joins the given peers over each new agent connection until one join
/// succeeds (a restarted agent has forgotten the cluster).
async fn join(
    peers: Vec<String>,
    mut clients: watch::Receiver<Option<Client>>,
    stop: CancellationToken,
) {
    loop {
        let Some(client) = membership::next_client(&mut clients, &stop).await else {
            return;
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
