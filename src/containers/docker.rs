//! The parent's Docker side, and the only module that sees bollard: finds
//! the parent's own container, launches the children of the manifest in
//! order (each sharing the parent's network namespace, wrapped by
//! `serfnode child`), restarts them when they exit, raises a `container`
//! event for every start and exit, keeps the view's container info current,
//! and stops and removes the children at shutdown (all at once, within the
//! parent's own `docker stop` grace).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, ContainerSummaryStateEnum, DeviceMapping, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::backoff::{sleep_or_shutdown, Backoff};
use crate::cluster::membership::{Containers, Shown, View};
use crate::containers::grants::{self, Allow, Grant, Grants};
use crate::containers::manifest::ChildSpec;
use crate::containers::secrets::Redactor;
use crate::event::Event;
use crate::event::Origin;
use crate::surface::restrict::TOKEN_ENV;
use crate::surface::upstream::Upstream;

/// Where children find the parent's share (the static binary and the
/// replica socket), read-only.
pub(crate) const SHARE_IN_CHILD: &str = "/serfnode-share";
pub const LABEL_PARENT: &str = "serfnode.parent";
pub const LABEL_CHILD: &str = "serfnode.child";

#[derive(Debug, thiserror::Error)]
pub(crate) enum DockerError {
    #[error("docker: {0}")]
    Api(#[from] bollard::errors::Error),
    #[error(
        "docker: cannot tell which container this is (no container id in /proc/self/mountinfo)"
    )]
    NoSelf,
    #[error("docker: container {0} has no volume at {1}: start the parent from the serfnode image (it declares VOLUME {1})")]
    NoShare(String, String),
    #[error("child {child}: {why}")]
    Child { child: String, why: String },
    #[error("child {child}: container {container} is gone (removed outside serfnode)")]
    Gone { child: String, container: String },
}

/// The parent container as Docker sees it.
pub(crate) struct ParentContainer {
    docker: Docker,
    id: String,
    name: String,
    /// As Docker gives it; the files show it through `redactor`.
    inspect: Value,
    share_volume: String,
    redactor: Redactor,
}

impl ParentContainer {
    /// Redacts every inspect the files show with `redactor` (the parent's
    /// environment holds SERF_ENCRYPT_KEY, and maybe other secrets).
    pub fn with_redactor(self, redactor: Redactor) -> ParentContainer {
        ParentContainer { redactor, ..self }
    }

    /// Connects to the Docker socket and inspects the container we run in.
    pub async fn connect(share: &Path) -> Result<ParentContainer, DockerError> {
        let docker = Docker::connect_with_unix_defaults()?;
        let id = own_container_id().ok_or(DockerError::NoSelf)?;
        let inspect = docker
            .inspect_container(
                &id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await?;
        let share_volume = inspect
            .mounts
            .iter()
            .flatten()
            .find(|m| m.destination.as_deref() == share.to_str())
            .and_then(|m| m.name.clone())
            .ok_or_else(|| DockerError::NoShare(id.clone(), share.display().to_string()))?;
        let name = inspect
            .name
            .clone()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned();
        let inspect = serde_json::to_value(&inspect).expect("inspect serializes");
        Ok(ParentContainer {
            docker,
            id,
            name,
            inspect,
            share_volume,
            redactor: Redactor::default(),
        })
    }
}

/// This container's id: Docker bind-mounts /etc/hostname (and hosts,
/// resolv.conf) from `.../containers/<id>/`, which mountinfo shows.
fn own_container_id() -> Option<String> {
    container_id_in(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)
}

fn container_id_in(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let root = line.split(' ').nth(3)?;
        let rest = root.split("/containers/").nth(1)?;
        let id = rest.split('/').next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
    })
}

/// The container of child `child` of parent container `parent`.
pub(crate) fn container_name(parent: &str, child: &str) -> String {
    format!("{parent}-{child}")
}

struct Shared {
    parent: ParentContainer,
    node: String,
    view: View,
    /// child name → its inspect (token removed; redacted when published).
    children: parking_lot::Mutex<BTreeMap<String, Value>>,
    /// Children whose files show secret-looking values (`show_secrets`).
    shows: Vec<String>,
    /// Each child's token (from its container) and `allow:`, for the
    /// replica socket.
    grants: Grants,
    allows: HashMap<String, Allow>,
}

impl Shared {
    fn publish(&self) {
        let r = &self.parent.redactor;
        let children = self.children.lock().clone();
        let shown = self
            .shows
            .iter()
            .map(|child| {
                let shown = Shown {
                    parent: Some(r.redact(&self.parent.inspect, true)),
                    me: children.get(child).map(|v| r.redact(v, true)),
                };
                (child.clone(), shown)
            })
            .collect();
        let parent = r.redact(&self.parent.inspect, false);
        self.view.set_containers(Containers {
            me: Some(parent.clone()),
            parent: Some(parent),
            children: children
                .iter()
                .map(|(name, v)| (name.clone(), r.redact(v, false)))
                .collect(),
            shown,
        });
    }

    /// Records the child's current inspect, with the parent's network
    /// settings (it shares them), or drops it when the container is gone.
    async fn refresh(&self, child: &str) {
        let name = container_name(&self.parent.name, child);
        let inspect = self
            .parent
            .docker
            .inspect_container(
                &name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await;
        {
            let mut children = self.children.lock();
            match inspect {
                Ok(i) => {
                    let mut v = serde_json::to_value(&i).expect("inspect serializes");
                    v["NetworkSettings"] = self.parent.inspect["NetworkSettings"].clone();
                    match grants::token_of(&v) {
                        Some(token) => {
                            let allow = self.allows.get(child).cloned().unwrap_or_default();
                            self.grants.set(child, Grant { token, allow });
                        }
                        None => tracing::warn!(
                            "child container {name} has no {} and cannot reach the parent",
                            TOKEN_ENV
                        ),
                    }
                    grants::scrub(&mut v);
                    children.insert(child.to_owned(), v);
                }
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {
                    children.remove(child);
                    self.grants.remove(child);
                }
                // Docker is down or failing, the container is not gone:
                // dropping it here took the child out of
                // children_by_name.json and revoked its token (its replica
                // connection refused) until its next exit.
                Err(e) => tracing::warn!(
                    "docker: inspect of child container {name} failed, keeping what is known of it: {e}"
                ),
            }
        }
        self.publish();
    }

    async fn event<U: Upstream>(
        &self,
        upstream: &U,
        child: &str,
        state: &str,
        exit_code: Option<i64>,
    ) {
        let payload = json!({
            "node": self.node,
            "child": child,
            "container": container_name(&self.parent.name, child),
            "state": state,
            "exit_code": exit_code,
        });
        let event = Event {
            name: "container".into(),
            payload: serde_json::to_vec(&payload).expect("json"),
        };
        let origin = Origin {
            pid: std::process::id(),
            child: Some(child.to_owned()),
        };
        tracing::info!(child, state, ?exit_code, "child container");
        if let Err((_, errno)) = upstream.raise(&origin, vec![event]).await {
            tracing::warn!(child, "container event not raised (errno {errno})");
        }
    }
}

/// Publishes the parent's container info into the view at once.
pub(crate) fn announce(parent: &ParentContainer, view: &View) {
    let inspect = parent.redactor.redact(&parent.inspect, false);
    view.set_containers(Containers {
        me: Some(inspect.clone()),
        parent: Some(inspect),
        ..Containers::default()
    });
}

/// Runs the children until `stop`, then stops and removes them (bounded).
pub(crate) async fn run_children<U: Upstream>(
    parent: ParentContainer,
    specs: Vec<ChildSpec>,
    node: String,
    view: View,
    upstream: Arc<U>,
    grants: Grants,
    stop: CancellationToken,
) {
    let shared = Arc::new(Shared {
        parent,
        node,
        view,
        children: Default::default(),
        shows: specs
            .iter()
            .filter(|s| s.show_secrets)
            .map(|s| s.name.clone())
            .collect(),
        grants,
        allows: specs
            .iter()
            .map(|s| (s.name.clone(), s.allow.clone()))
            .collect(),
    });
    // A restarted daemon keeps the children it finds: their applications
    // (and their readers) carry on.
    let Some(adopted) = adopt(&shared.parent, &specs, &stop).await else {
        return;
    };
    // Children start once the files say who is in the cluster.
    let mut snaps = shared.view.subscribe();
    tokio::select! {
        _ = snaps.wait_for(|s| s.agent.connected) => {}
        _ = stop.cancelled() => return,
    }
    drop(snaps);
    let mut tasks = Vec::new();
    for spec in &specs {
        if stop.is_cancelled() {
            break;
        }
        let name = spec.name.clone();
        let running = match adopted.get(&name) {
            Some(&running) => running,
            None => match create(&shared.parent, spec, &specs).await {
                Ok(()) => false,
                Err(e) => {
                    tracing::error!("{e}");
                    continue;
                }
            },
        };
        // Its token is known before it can connect.
        shared.refresh(&name).await;
        // Started in list order: the next child waits until this one runs.
        if !running {
            match start(&shared.parent, &name).await {
                Ok(()) => shared.event(&*upstream, &name, "started", None).await,
                Err(e) => tracing::error!("{e}"),
            }
        }
        shared.refresh(&name).await;
        let (shared, upstream, stop) = (shared.clone(), upstream.clone(), stop.clone());
        let (spec, all) = (spec.clone(), specs.clone());
        tasks.push(tokio::spawn(async move {
            keep_running(&shared, &*upstream, &spec, &all, &stop).await
        }));
    }
    stop.cancelled().await;
    for t in tasks {
        let _ = t.await;
    }
    // All at once, under one deadline: one after another, children that
    // ignore SIGTERM used up Docker's grace for the parent, which was
    // killed before it left the cluster, with children left behind.
    let grace = children_grace(&shared.parent.inspect);
    tracing::info!(
        "stopping {} child containers (SIGKILL after {grace:?})",
        specs.len()
    );
    let stops = futures_util::future::join_all(
        specs
            .iter()
            .map(|spec| stop_and_remove(&shared, &spec.name, grace)),
    );
    // Bounded even if Docker does not answer: the leave must come.
    if tokio::time::timeout(grace + Duration::from_secs(2), stops)
        .await
        .is_err()
    {
        tracing::warn!("docker: the children did not stop within {grace:?}; leaving anyway");
    }
    shared.publish();
}

/// Docker's grace for the parent when nothing else is set (`docker stop`
/// without `-t`, `--stop-timeout`).
const DOCKER_STOP_TIMEOUT: i64 = 10;
/// What the rest of the shutdown takes at most once the children are gone:
/// the leave (3 s), the unmount's wait for open files (2 s), a margin.
const AFTER_CHILDREN: i64 = 6;

/// How long the children get to stop before Docker kills them: the
/// parent's own grace (its `--stop-timeout`, else Docker's 10 s) minus
/// what the leave and the unmount need after them, at least 1 s.
fn children_grace(parent_inspect: &Value) -> Duration {
    let timeout = parent_inspect["Config"]["StopTimeout"]
        .as_i64()
        .filter(|t| *t >= 0)
        .unwrap_or(DOCKER_STOP_TIMEOUT);
    Duration::from_secs((timeout - AFTER_CHILDREN).max(1) as u64)
}

async fn stop_and_remove(shared: &Shared, child: &str, grace: Duration) {
    let name = container_name(&shared.parent.name, child);
    let docker = &shared.parent.docker;
    let opts = StopContainerOptionsBuilder::default()
        .t(grace.as_secs() as i32)
        .build();
    if let Err(e) = docker.stop_container(&name, Some(opts)).await {
        tracing::debug!("stop {name}: {e}");
    }
    let removed = docker
        .remove_container(
            &name,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await;
    match removed {
        Ok(()) => tracing::info!("child container {name} stopped and removed"),
        Err(e) => tracing::warn!("remove {name}: {e}"),
    }
    shared.children.lock().remove(child);
}

/// Waits for the child to exit, reports it, and starts it again with
/// backoff, until `stop`.
async fn keep_running<U: Upstream>(
    shared: &Shared,
    upstream: &U,
    spec: &ChildSpec,
    all: &[ChildSpec],
    stop: &CancellationToken,
) {
    let child = spec.name.as_str();
    let name = container_name(&shared.parent.name, child);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let opts = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut wait = shared.parent.docker.wait_container(&name, Some(opts));
        let code = tokio::select! {
            r = wait.next() => match r {
                Some(Ok(w)) => Some(w.status_code),
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Some(code),
                // Docker answered (no such container, or another refusal).
                Some(Err(e @ bollard::errors::Error::DockerResponseServerError { .. })) => {
                    tracing::warn!("wait for {name}: {e}");
                    None
                }
                // The wait broke, not the child: dockerd went away (a
                // restart, with live restore the child runs on). Reporting
                // an exit here raised a false `container` exited event and
                // a `docker start` of the running child (a false started
                // one); a child that did stop meanwhile is seen by the
                // next wait, with its real exit code.
                broken => {
                    let why = match broken {
                        Some(Err(e)) => e.to_string(),
                        _ => "the wait ended without a status".to_owned(),
                    };
                    tracing::warn!(
                        "docker unreachable while waiting for child container {name} ({why}); \
                         retrying until the docker daemon answers"
                    );
                    if !docker_answers(&shared.parent.docker, stop).await {
                        return;
                    }
                    tracing::info!("docker answers again; waiting for child container {name}");
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        shared.event(upstream, child, "exited", code).await;
        shared.refresh(child).await;
        let started = std::time::Instant::now();
        if sleep_or_shutdown(backoff.next_delay(), stop).await {
            return;
        }
        match start_or_recreate(&shared.parent, spec, all).await {
            Ok(()) => {
                shared.event(upstream, child, "started", None).await;
                shared.refresh(child).await;
            }
            Err(e) => tracing::warn!("{e}"),
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff.reset();
        }
    }
}

/// Pings the docker daemon with backoff until it answers (true) or `stop`
/// (false).
async fn docker_answers(docker: &Docker, stop: &CancellationToken) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        tokio::select! {
            pinged = docker.ping() => match pinged {
                Ok(_) => return true,
                Err(e) => tracing::debug!("docker ping: {e}"),
            },
            _ = stop.cancelled() => return false,
        }
        if sleep_or_shutdown(backoff.next_delay(), stop).await {
            return false;
        }
    }
}

/// The children an earlier daemon of this same parent container left: child
/// name → whether it is running. Those not in `specs` any more are removed.
/// `None` at `stop`.
async fn adopt(
    parent: &ParentContainer,
    specs: &[ChildSpec],
    stop: &CancellationToken,
) -> Option<HashMap<String, bool>> {
    let filters: HashMap<&str, Vec<String>> =
        [("label", vec![format!("{LABEL_PARENT}={}", parent.id)])].into();
    // Until Docker answers: starting without knowing the children would
    // create containers whose names are taken and leave those unsupervised.
    let found = loop {
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        match parent.docker.list_containers(Some(opts)).await {
            Ok(found) => break found,
            Err(e) => {
                tracing::warn!("docker: list children of an earlier run: {e}; retrying");
                if !docker_answers(&parent.docker, stop).await {
                    return None;
                }
                if sleep_or_shutdown(Duration::from_millis(500), stop).await {
                    return None;
                }
            }
        }
    };
    let mut kept = HashMap::new();
    for c in found {
        let child = c.labels.as_ref().and_then(|l| l.get(LABEL_CHILD)).cloned();
        let running = c.state == Some(ContainerSummaryStateEnum::RUNNING);
        match child {
            Some(child) if specs.iter().any(|s| s.name == child) => {
                tracing::info!(child = %child, running, "adopting the child container of an earlier run");
                kept.insert(child, running);
            }
            _ => {
                let Some(id) = c.id else { continue };
                tracing::info!("removing child container {id} left by an earlier run");
                let opts = RemoveContainerOptionsBuilder::default().force(true).build();
                let _ = parent.docker.remove_container(&id, Some(opts)).await;
            }
        }
    }
    Some(kept)
}

fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
}

async fn create(
    parent: &ParentContainer,
    spec: &ChildSpec,
    all: &[ChildSpec],
) -> Result<(), DockerError> {
    let fail = |why: String| DockerError::Child {
        child: spec.name.clone(),
        why,
    };
    let image = parent
        .docker
        .inspect_image(&spec.image)
        .await
        .map_err(|e| fail(format!("image {}: {e}", spec.image)))?;
    let config = image.config.unwrap_or_default();
    // Docker's rule: overriding the entrypoint drops the image's command.
    let (entrypoint, command) = match &spec.entrypoint {
        Some(e) => (e.clone(), spec.command.clone().unwrap_or_default()),
        None => (
            config.entrypoint.unwrap_or_default(),
            spec.command.clone().or(config.cmd).unwrap_or_default(),
        ),
    };
    let app: Vec<String> = entrypoint.into_iter().chain(command).collect();
    if app.is_empty() {
        return Err(fail(format!(
            "image {} has no entrypoint or command and none is given",
            spec.image
        )));
    }
    let mut wrapper = vec![
        format!("{SHARE_IN_CHILD}/serfnode"),
        "child".to_owned(),
        "--name".to_owned(),
        spec.name.clone(),
        format!(
            "--socket={SHARE_IN_CHILD}/{}",
            crate::containers::replica::SOCKET
        ),
    ];
    if spec.privileged {
        wrapper.push("--keep-caps".into());
    }
    if let Some(user) = &spec.user {
        wrapper.push(format!("--user={user}"));
    }
    if let Some(dir) = &spec.handlers {
        wrapper.push(format!("--handlers={dir}"));
    }
    if !spec.templates.is_empty() {
        let json = serde_json::to_string(&spec.templates).expect("specs serialize");
        wrapper.push(format!("--templates={json}"));
    }
    wrapper.push("--".into());
    for ignored in [
        ("links", &spec.links),
        ("expose", &spec.expose),
        ("ports", &spec.ports),
    ] {
        if !ignored.1.is_empty() {
            tracing::warn!(child = %spec.name, "{} ignored: children share the parent's network namespace", ignored.0);
        }
    }
    let siblings: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
    let volumes_from = spec
        .volumes_from
        .iter()
        .map(|v| {
            let (name, mode) = v
                .split_once(':')
                .map_or((v.as_str(), None), |(n, m)| (n, Some(m)));
            let name = if siblings.contains(&name) {
                container_name(&parent.name, name)
            } else {
                name.to_owned()
            };
            mode.map_or(name.clone(), |m| format!("{name}:{m}"))
        })
        .collect();
    let token = grants::new_token().map_err(|e| fail(format!("make its token: {e}")))?;
    let mut binds = spec.volumes.clone();
    binds.push(format!("{}:{SHARE_IN_CHILD}:ro", parent.share_volume));
    let name = container_name(&parent.name, &spec.name);
    let body = ContainerCreateBody {
        image: Some(spec.image.clone()),
        entrypoint: Some(wrapper),
        cmd: Some(app),
        env: Some(
            spec.environment
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .chain([format!("{}={token}", TOKEN_ENV)])
                .collect(),
        ),
        working_dir: spec.working_dir.clone(),
        labels: Some(
            [
                (LABEL_PARENT.to_owned(), parent.id.clone()),
                (LABEL_CHILD.to_owned(), spec.name.clone()),
            ]
            .into(),
        ),
        host_config: Some(HostConfig {
            network_mode: Some(format!("container:{}", parent.id)),
            binds: Some(binds),
            volumes_from: Some(volumes_from),
            devices: Some(vec![DeviceMapping {
                path_on_host: Some("/dev/fuse".into()),
                path_in_container: Some("/dev/fuse".into()),
                cgroup_permissions: Some("rwm".into()),
            }]),
            cap_add: Some(vec!["SYS_ADMIN".into()]),
            security_opt: apparmor_enabled().then(|| vec!["apparmor=unconfined".into()]),
            privileged: Some(spec.privileged),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    };
    let opts = CreateContainerOptionsBuilder::default().name(&name).build();
    parent
        .docker
        .create_container(Some(opts), body)
        .await
        .map_err(|e| fail(format!("create {name}: {e}")))?;
    Ok(())
}

async fn start(parent: &ParentContainer, child: &str) -> Result<(), DockerError> {
    let name = container_name(&parent.name, child);
    parent
        .docker
        .start_container(
            &name,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .map_err(|e| match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            } => DockerError::Gone {
                child: child.to_owned(),
                container: name.clone(),
            },
            e => DockerError::Child {
                child: child.to_owned(),
                why: format!("start {name}: {e}"),
            },
        })
}

/// Starts the child's container, creating it again first if it was
/// removed behind serfnode's back (`docker rm -f`): the manifest says the
/// child exists, so it is brought back rather than retried forever.
async fn start_or_recreate(
    parent: &ParentContainer,
    spec: &ChildSpec,
    all: &[ChildSpec],
) -> Result<(), DockerError> {
    match start(parent, &spec.name).await {
        Err(gone @ DockerError::Gone { .. }) => {
            tracing::warn!("{gone}; creating it again");
            create(parent, spec, all).await?;
            start(parent, &spec.name).await
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_children_get_the_parents_grace_minus_the_leave_and_unmount() {
        assert_eq!(children_grace(&json!({})), Duration::from_secs(4));
        let with = |t: i64| children_grace(&json!({"Config": {"StopTimeout": t}}));
        assert_eq!(with(30), Duration::from_secs(24));
        assert_eq!(with(2), Duration::from_secs(1));
        assert_eq!(with(-1), Duration::from_secs(4));
    }

    #[test]
    fn own_id_comes_from_the_hostname_bind_mount() {
        let id = "4f9a".repeat(16);
        let info = format!(
            "612 590 0:52 / / rw,relatime - overlay overlay rw\n\
             630 612 254:1 /var/lib/docker/containers/{id}/hostname /etc/hostname rw - ext4 /dev/vda rw\n"
        );
        assert_eq!(container_id_in(&info), Some(id));
        let host =
            "22 1 254:1 / / rw - ext4 /dev/vda rw\n30 22 0:5 /containers/abc /x rw - tmpfs t rw\n";
        assert_eq!(container_id_in(host), None, "not in a container");
    }
}
