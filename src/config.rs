//! The daemon's settings, resolved once from flags and environment into
//! concrete values (addresses, names, paths), with the original project's
//! defaults.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use crate::cli::AgentArgs;
use crate::cluster::agent::{DEFAULT_RPC_AUTH_FILE, DEFAULT_RPC_PORT};
use crate::cluster::keys::{Encryption, KeyError};
use crate::cluster::tags::OwnTags;
use crate::containers::child::ChildConfig;
use crate::containers::manifest::{parse_docker_run, ChildSpec, Manifest, ManifestError};
use crate::surface::templates::TemplateSpec;
use crate::surface::EventsConfig;

pub(crate) const DEFAULT_SERF_PORT: u16 = 7946;

#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    pub bind: SocketAddr,
    pub advertise: SocketAddr,
    pub rpc: SocketAddr,
    pub join: Vec<String>,
    pub tags: OwnTags,
    pub mount: PathBuf,
    pub hosts_file: Option<PathBuf>,
    pub serf: PathBuf,
    pub profile: String,
    pub snapshot: Option<PathBuf>,
    pub rpc_auth_file: Option<PathBuf>,
    /// Gossip encryption the agent is started with.
    pub encryption: Encryption,
    pub attach: bool,
    /// Period of the full `members` read under the per-member re-reads.
    pub reconcile: Duration,
    /// User events raised per second at most, in bursts of as many (0: no
    /// limit).
    pub event_rate: u32,
    /// Queries per second each child may ask (0: no limit).
    pub child_query_rate: u32,
    pub allow_other: bool,
    /// Directory shared with children: the replica socket lives there.
    pub share: Option<PathBuf>,
    /// Children to launch with Docker (`--docker`), in order.
    pub docker: Option<Vec<ChildSpec>>,
    pub events: EventsConfig,
    /// The manifest's `templates:`: the node's.
    pub templates: Vec<TemplateSpec>,
}

pub(crate) const DEFAULT_HANDLERS: &str = "/etc/serfnode/handlers";

/// A parent's manifest when `--manifest` is not given.
pub(crate) const DEFAULT_MANIFEST: &str = "/serfnode.yml";

/// The handlers and journal settings of `args`. `manifest`: the manifest's
/// `handlers:` (or a child entry's), used when the flag and its variable are
/// unset.
pub(crate) fn events_config(
    args: &crate::cli::HandlerArgs,
    manifest: Option<PathBuf>,
) -> Result<EventsConfig, ConfigError> {
    if args.handler_concurrency == 0 {
        return Err(ConfigError::Events(
            "--handler-concurrency must be at least 1",
        ));
    }
    if !(args.handler_timeout.is_finite() && args.handler_timeout > 0.0) {
        return Err(ConfigError::Events(
            "--handler-timeout must be a positive number of seconds",
        ));
    }
    if args.journal_size == 0 {
        return Err(ConfigError::Events("--journal-size must be at least 1"));
    }
    Ok(EventsConfig {
        handlers: args
            .handlers
            .clone()
            .or(manifest)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_HANDLERS)),
        concurrency: args.handler_concurrency,
        timeout: Duration::from_secs_f64(args.handler_timeout),
        journal_size: args.journal_size,
    })
}

/// A child wrapper's configuration, from `serfnode child`'s arguments.
pub fn child_config(args: crate::cli::ChildArgs) -> anyhow::Result<ChildConfig> {
    let name = match args.name {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("read the hostname for the child's name")?
            .trim()
            .to_owned(),
    };
    // Resolved before fork, from the image's own files.
    let restrict = crate::surface::restrict::Restrictions::for_child(
        args.user.as_deref(),
        args.keep_caps,
        Path::new("/"),
    )?;
    Ok(ChildConfig {
        name,
        socket: args.socket,
        mount: args.mount,
        me_link: (args.me_link != "none").then(|| PathBuf::from(args.me_link)),
        restrict,
        events: events_config(&args.events, None)?,
        templates: match &args.templates {
            Some(json) => serde_json::from_str(json)
                .context("--templates: not the parent's list of templates")?,
            None => Vec::new(),
        },
        token: args.token,
        command: args.command,
    })
}

/// Where a parent's agent keeps its snapshot (inside the parent container,
/// so it survives a daemon restart).
pub(crate) const DEFAULT_SNAPSHOT: &str = "/var/lib/serfnode/serf.snapshot";

/// Where a parent's children and the binary they run are shared.
pub(crate) const DEFAULT_SHARE: &str = "/serfnode-share";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("rpc address {0} is not a loopback address: the rpc port must not be reachable from other hosts")]
    RpcNotLoopback(SocketAddr),
    #[error("--reconcile-period must be a positive number of seconds, at most a day")]
    Reconcile,
    #[error("{0}")]
    Events(&'static str),
    #[error("no node name: --node is unset and the hostname is unreadable")]
    NoName,
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl Config {
    /// Flags and environment win over the manifest's `serfnode:` section
    /// (read only with `--docker`), which wins over the defaults.
    pub fn resolve(args: &AgentArgs) -> Result<Config, ConfigError> {
        let manifest = match (&args.manifest, args.docker) {
            (None, true) => Manifest::load(Path::new(DEFAULT_MANIFEST))?,
            (None, false) => None,
            // Named on a host: it must be there.
            (Some(path), docker) => match Manifest::load(path)? {
                None if !docker => {
                    return Err(ManifestError::Read {
                        path: path.clone(),
                        error: std::io::ErrorKind::NotFound.into(),
                    }
                    .into())
                }
                m => m,
            },
        };
        let section = manifest
            .as_ref()
            .map(|m| m.serfnode.clone())
            .unwrap_or_default();
        let docker = args
            .docker
            .then(|| {
                let mut m = manifest.clone().unwrap_or_default();
                if let Some(run) = &args.docker_run {
                    m.children
                        .push(parse_docker_run(run, args.docker_name.as_deref())?);
                }
                Ok::<_, ManifestError>(m.effective_children())
            })
            .transpose()?;
        let args = &AgentArgs {
            role: args.role.clone().or(section.role),
            join: if args.join.is_empty() {
                section.peer
            } else {
                args.join.clone()
            },
            serf_ip: args.serf_ip.or(section.serf_ip),
            serf_port: args.serf_port.or(section.serf_port),
            service_ip: args.service_ip.or(section.service_ip),
            service_port: if args.service_port == 0 {
                section.service_port.unwrap_or(0)
            } else {
                args.service_port
            },
            share: args
                .share
                .clone()
                .or(args.docker.then(|| PathBuf::from(DEFAULT_SHARE))),
            ..args.clone()
        };
        let serf_port = args.serf_port.unwrap_or(DEFAULT_SERF_PORT);
        let bind = args
            .bind
            .unwrap_or(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), serf_port));
        let advertise = args.advertise.unwrap_or_else(|| {
            let ip = args
                .serf_ip
                .or(Some(bind.ip()).filter(|ip| !ip.is_unspecified()))
                .or_else(first_non_loopback_ipv4)
                .unwrap_or(Ipv4Addr::LOCALHOST.into());
            SocketAddr::new(ip, bind.port())
        });
        let rpc = args.rpc_addr.unwrap_or(SocketAddr::new(
            Ipv4Addr::LOCALHOST.into(),
            args.rpc_port.unwrap_or(DEFAULT_RPC_PORT),
        ));
        if !rpc.ip().is_loopback() {
            return Err(ConfigError::RpcNotLoopback(rpc));
        }
        if !(args.reconcile_period.is_finite()
            && args.reconcile_period > 0.0
            && args.reconcile_period <= 86_400.0)
        {
            return Err(ConfigError::Reconcile);
        }
        let node = match &args.node {
            Some(n) => n.clone(),
            None => hostname().ok_or(ConfigError::NoName)?,
        };
        let tags = OwnTags {
            role: args
                .role
                .clone()
                .unwrap_or_else(|| crate::cluster::tags::NO_ROLE.to_owned()),
            advertise_ip: advertise.ip(),
            serf_port: advertise.port(),
            rpc_port: rpc.port(),
            timestamp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            service_ip: args.service_ip.map(|ip| ip.to_string()),
            service_port: args.service_port,
            ports: Default::default(),
        };
        Ok(Config {
            node,
            bind,
            advertise,
            rpc,
            join: split_peers(&args.join),
            tags,
            mount: args.mount.clone(),
            hosts_file: match args.hosts_file.as_str() {
                "none" | "" => None,
                p => Some(Path::new(p).to_owned()),
            },
            serf: args.serf.clone(),
            profile: args.profile.clone(),
            rpc_auth_file: args
                .rpc_auth_file
                .clone()
                .or(args.docker.then(|| PathBuf::from(DEFAULT_RPC_AUTH_FILE))),
            encryption: Encryption::resolve(
                args.encrypt_key_file.as_deref(),
                args.encrypt_key.as_ref(),
                args.keyring_file.clone(),
            )?,
            snapshot: args
                .snapshot
                .clone()
                .or(args.docker.then(|| PathBuf::from(DEFAULT_SNAPSHOT))),
            attach: args.attach,
            reconcile: Duration::from_secs_f64(args.reconcile_period),
            event_rate: args.event_rate,
            child_query_rate: args.child_query_rate,
            allow_other: args.allow_other,
            share: args.share.clone(),
            docker,
            events: events_config(
                &args.events,
                manifest.as_ref().and_then(|m| m.handlers.clone()),
            )?,
            templates: manifest.map(|m| m.templates).unwrap_or_default(),
        })
    }
}

/// PEER may hold several addresses, separated by commas or white space.
fn split_peers(raw: &[String]) -> Vec<String> {
    raw.iter()
        .flat_map(|s| s.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// The first IPv4 address of an interface that is up and not loopback, as
/// the original found its advertise address.
fn first_non_loopback_ipv4() -> Option<IpAddr> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `addrs` with a list we free below; we only
    // read entries whose address family we checked.
    unsafe {
        if libc::getifaddrs(&mut addrs) != 0 {
            return None;
        }
        let mut found = None;
        let mut cur = addrs;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            let up = ifa.ifa_flags & libc::IFF_UP as u32 != 0;
            let lo = ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0;
            if !up || lo || ifa.ifa_addr.is_null() {
                continue;
            }
            if i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                found = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
                break;
            }
        }
        libc::freeifaddrs(addrs);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn resolve(argv: &[&str]) -> Result<Config, ConfigError> {
        resolve_with_key(argv, None)
    }

    /// `key`: the value of SERF_ENCRYPT_KEY, as main passes it on.
    fn resolve_with_key(argv: &[&str], key: Option<&str>) -> Result<Config, ConfigError> {
        let cli = crate::cli::Cli::try_parse_from(["serfnode", "agent"].iter().chain(argv.iter()))
            .unwrap();
        let crate::cli::Command::Agent(mut args) = cli.command else {
            panic!("parsed as agent")
        };
        args.encrypt_key = key.map(|k| crate::cluster::keys::Secret(k.to_owned()));
        Config::resolve(&args)
    }

    #[test]
    fn the_gossip_key_comes_from_a_file_or_the_environment() {
        use crate::cluster::keys::Secret;
        let dir = tempfile::tempdir().unwrap();
        let key = "AAAAAAAAAAAAAAAAAAAAAA==";
        let file = dir.path().join("key");
        std::fs::write(&file, format!("{key}\n")).unwrap();
        let file = file.to_str().unwrap();

        let c = resolve(&["--node", "n", "--encrypt-key-file", file]).unwrap();
        assert_eq!(c.encryption.key, Some(Secret(key.into())));
        let c = resolve_with_key(&["--node", "n"], Some(key)).unwrap();
        assert_eq!(c.encryption.key, Some(Secret(key.into())));
        assert!(!resolve(&["--node", "n"]).unwrap().encryption.enabled());

        let err = resolve_with_key(&["--node", "n", "--encrypt-key-file", file], Some(key));
        assert!(err.unwrap_err().to_string().contains("give the key once"));
        let err = resolve_with_key(&["--node", "n"], Some("c2hvcnQ=")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("SERF_ENCRYPT_KEY: the key is 5 bytes"),
            "{err}"
        );
        let ring = dir.path().join("missing.keyring");
        let err = resolve(&["--node", "n", "--keyring-file", ring.to_str().unwrap()]);
        assert!(err.unwrap_err().to_string().contains("does not exist"));
    }

    #[test]
    fn explicit_flags_win() {
        let c = resolve(&[
            "--node",
            "n1",
            "--bind",
            "127.0.0.5:8000",
            "--rpc-addr",
            "127.0.0.5:8001",
            "--join",
            "127.0.0.6:8000",
            "--join",
            "127.0.0.7:8000,127.0.0.8:8000",
        ])
        .unwrap();
        assert_eq!(
            c.advertise,
            "127.0.0.5:8000".parse().unwrap(),
            "advertise follows a specific bind"
        );
        assert_eq!(c.tags.rpc_port, 8001);
        assert_eq!(
            c.join,
            ["127.0.0.6:8000", "127.0.0.7:8000", "127.0.0.8:8000"]
        );
        assert_eq!(c.tags.to_map()["serf_port"], "8000");
        assert_eq!(c.hosts_file.as_deref(), Some(Path::new("/etc/hosts")));
    }

    #[test]
    fn rpc_must_stay_on_loopback() {
        let err = resolve(&["--node", "n", "--rpc-addr", "0.0.0.0:7373"]).unwrap_err();
        assert!(err.to_string().contains("not a loopback"), "{err}");
    }

    #[test]
    fn a_manifest_named_on_a_host_gives_its_templates_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lb.yml");
        std::fs::write(
            &path,
            "serfnode:\n  role: lb\ntemplates:\n  - name: up\n    template: x\n",
        )
        .unwrap();
        let c = resolve(&["--node", "n", "--manifest", path.to_str().unwrap()]).unwrap();
        assert_eq!(c.tags.role, "lb");
        assert_eq!(c.templates.len(), 1);
        assert!(c.docker.is_none(), "children only with --docker");
        let missing = dir.path().join("nope.yml");
        let err = resolve(&["--node", "n", "--manifest", missing.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("nope.yml"), "{err}");
        // Without --manifest, a host reads none.
        assert!(resolve(&["--node", "n"]).unwrap().templates.is_empty());
    }

    #[test]
    fn defaults_are_the_originals() {
        let c = resolve(&["--node", "n", "--hosts-file", "none"]).unwrap();
        assert_eq!(c.bind, "0.0.0.0:7946".parse().unwrap());
        assert_eq!(c.rpc, "127.0.0.1:7373".parse().unwrap());
        assert_eq!(c.tags.role, "no_role");
        assert!(!c.advertise.ip().is_unspecified());
        assert!(c.hosts_file.is_none());
        assert_eq!(c.mount, Path::new("/serfnode"));
    }

    #[test]
    fn peers_split_on_commas_and_spaces() {
        assert_eq!(
            split_peers(&["a:1, b:2  c:3".into()]),
            ["a:1", "b:2", "c:3"]
        );
    }

    #[test]
    fn default_name_is_the_hostname_and_stable() {
        let a = resolve(&[]).unwrap();
        let b = resolve(&[]).unwrap();
        assert_eq!(a.node, b.node);
        assert_eq!(a.node, hostname().unwrap());
    }
}
