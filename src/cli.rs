//! The command line: subcommands and flags, each flag also settable by the
//! original serfnode's environment variable where it had one.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::operator::keys::KeysArgs;

#[derive(Debug, Parser)]
#[command(
    name = "serfnode",
    version,
    about = "Live knowledge of a Serf cluster, served as files"
)]
pub struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. `info`, `serfnode=debug,serf=info`.
    #[arg(
        long,
        global = true,
        env = "SERFNODE_LOG",
        default_value = "info,fuser=error"
    )]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run (or attach to) a Serf agent and serve the cluster as files.
    Agent(Box<AgentArgs>),
    /// PID 1 of a parent container: runs `agent --docker` with the same
    /// arguments and restarts it if it dies.
    Parent(Box<AgentArgs>),
    /// Inside a child container: mount the files the parent serves, then run
    /// the application (`serfnode child -- CMD ARGS...`).
    Child(ChildArgs),
    /// List the cluster's members (from the local daemon's files).
    Members {
        /// Print the members as a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: MountArg,
    },
    /// Raise a user event through the local daemon's write node.
    Event {
        name: String,
        /// JSON, or else taken as a string [default: null].
        payload: Option<String>,
        #[command(flatten)]
        at: MountArg,
    },
    /// Ask the cluster a query and print every response as JSON.
    Query {
        name: String,
        /// JSON, or else taken as a string; for `where` and `ports`, the role
        /// asked about, as --role [default: null; for where and ports, every role].
        payload: Option<String>,
        /// Only members with this role answer (for `where` and `ports`, the
        /// same as the role argument).
        #[arg(long)]
        role: Option<String>,
        /// Only this member answers (repeatable).
        #[arg(long = "node", value_name = "NAME")]
        nodes: Vec<String>,
        /// Seconds to wait for answers (at most 5).
        #[arg(long, default_value_t = 2.0)]
        timeout: f64,
        #[command(flatten)]
        at: MountArg,
    },
    /// The local daemon's state: view generation, agent, members, children.
    Status {
        /// Print status.json as it is.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: MountArg,
    },
    /// Follow the event journal: print each event as a JSON line as it
    /// happens (from sequence FROM, else only new ones).
    Watch {
        #[arg(long, value_name = "SEQ")]
        from: Option<u64>,
        #[command(flatten)]
        at: MountArg,
    },
    /// Render a template against the local daemon's live view (read from
    /// its files) and print it: for writing and debugging templates.
    Render {
        /// The template file, or `-` to read it from stdin.
        #[arg(value_name = "SOURCE")]
        source: PathBuf,
        #[command(flatten)]
        at: MountArg,
    },
    /// The cluster's gossip encryption keys, through the local agent: list
    /// them, or rotate them on every member (install NEW, use NEW, remove OLD).
    Keys(KeysArgs),
}

/// Where the operator commands find the local daemon's files.
#[derive(Debug, Clone, Args)]
pub struct MountArg {
    /// The cluster files' mount point.
    #[arg(long, env = "SERFNODE_MOUNT", default_value = "/serfnode")]
    pub mount: PathBuf,
}

/// How handlers run (in a parent and in a child).
#[derive(Debug, Clone, Args)]
pub struct HandlerArgs {
    /// Directory of executables named after events, member events and
    /// queries [default: the manifest's `handlers:`, else /etc/serfnode/handlers].
    #[arg(long, env = "SERFNODE_HANDLERS", value_name = "DIR")]
    pub handlers: Option<PathBuf>,
    /// Handlers running at once.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub handler_concurrency: usize,
    /// A handler still running after this many seconds is killed.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub handler_timeout: f64,
    /// Events kept in the journal (`events`, `events_since/SEQ`).
    #[arg(long, default_value_t = crate::surface::journal::DEFAULT_CAPACITY, value_name = "N")]
    pub journal_size: usize,
}

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// This node's role, gossiped as the `role` tag [default: the manifest's, else no_role].
    #[arg(long, env = "ROLE")]
    pub role: Option<String>,
    /// Address of a member to join (repeatable; PEER may list several,
    /// separated by commas or spaces). Retried until one join works.
    #[arg(long = "join", env = "PEER", value_name = "ADDR")]
    pub join: Vec<String>,
    /// Gossip bind address [default: 0.0.0.0:7946, port from SERF_PORT].
    #[arg(long, value_name = "IP:PORT")]
    pub bind: Option<SocketAddr>,
    /// Address other members reach this one at [default: SERF_IP or the bind
    /// address, else this host's first non-loopback IPv4].
    #[arg(long, value_name = "IP:PORT")]
    pub advertise: Option<SocketAddr>,
    /// Advertised IP (the original's SERF_IP).
    #[arg(long, env = "SERF_IP", hide = true)]
    pub serf_ip: Option<IpAddr>,
    /// Gossip port (the original's SERF_PORT).
    #[arg(long, env = "SERF_PORT", hide = true)]
    pub serf_port: Option<u16>,
    /// The agent's RPC address; loopback only [default: 127.0.0.1:7373, port from RPC_PORT].
    #[arg(long, value_name = "IP:PORT")]
    pub rpc_addr: Option<SocketAddr>,
    /// RPC port (the original's RPC_PORT).
    #[arg(long, env = "RPC_PORT", hide = true)]
    pub rpc_port: Option<u16>,
    /// Node name [default: this host's (or container's) hostname, stable across restarts].
    #[arg(long, env = "NODE_NAME")]
    pub node: Option<String>,
    /// Address of this node's service, as written to other members' hosts files [default: the advertised IP].
    #[arg(long, env = "SERVICE_IP")]
    pub service_ip: Option<IpAddr>,
    /// Port of this node's service.
    #[arg(long, env = "SERVICE_PORT", default_value_t = 0)]
    pub service_port: u16,
    /// Where the cluster files are mounted.
    #[arg(long, env = "SERFNODE_MOUNT", default_value = "/serfnode")]
    pub mount: PathBuf,
    /// Hosts file to keep role names in, or `none`.
    #[arg(long, env = "SERFNODE_HOSTS_FILE", default_value = "/etc/hosts")]
    pub hosts_file: String,
    /// The `serf` executable to run.
    #[arg(long, env = "SERF", default_value = "serf")]
    pub serf: PathBuf,
    /// Serf timing profile: `lan`, `wan`, or `local` (loopback; detects
    /// failures in about two seconds).
    #[arg(long, env = "SERF_PROFILE", default_value = "lan", value_parser = ["lan", "wan", "local"])]
    pub profile: String,
    /// Serf snapshot file: a restarted agent rejoins the members it knew
    /// (after a crash; a graceful leave is final) [default with --docker:
    /// /var/lib/serfnode/serf.snapshot].
    #[arg(long, env = "SERF_SNAPSHOT", value_name = "PATH")]
    pub snapshot: Option<PathBuf>,
    /// File holding the agent's RPC auth key; created with a random key if
    /// missing. The agent gets it through its config file, never the command
    /// line [default with --docker: /var/lib/serfnode/rpc-auth, since the
    /// children share the parent's loopback].
    #[arg(long, env = "SERFNODE_RPC_AUTH_FILE", value_name = "PATH")]
    pub rpc_auth_file: Option<PathBuf>,
    /// File holding the gossip encryption key: base64 of 16, 24 or 32 bytes
    /// (`head -c32 /dev/urandom | base64`). SERF_ENCRYPT_KEY may hold the
    /// key itself instead. The agent gets it through its config file, never
    /// the command line. Without a key, gossip is not encrypted.
    #[arg(long, env = "SERF_ENCRYPT_KEY_FILE", value_name = "PATH")]
    pub encrypt_key_file: Option<PathBuf>,
    /// Serf's keyring file: a JSON list of base64 keys, the first one
    /// primary. The agent saves key rotations (`serfnode keys`) into it and
    /// reloads them when it restarts. Created from the key if missing; used
    /// as it is (the key ignored) if present.
    #[arg(long, env = "SERF_KEYRING_FILE", value_name = "PATH")]
    pub keyring_file: Option<PathBuf>,
    /// The value of SERF_ENCRYPT_KEY, taken out of the environment at start
    /// (never a flag: a flag's value shows in process listings).
    #[arg(skip)]
    pub encrypt_key: Option<crate::cluster::keys::Secret>,
    /// Use the agent already running at --rpc-addr instead of starting one.
    #[arg(long)]
    pub attach: bool,
    /// Seconds between full `members` reads, the safety net under the
    /// per-member re-reads the agent's log lines trigger (longer in a large
    /// cluster: at least 400 times what one full read takes).
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub reconcile_period: f64,
    /// User events this node may raise per second, in bursts of as many
    /// (0: no limit). Serf drops an event that arrives more than 512 events
    /// behind the newest it has seen, so an unpaced burst loses events on
    /// other members; past the limit writes get EAGAIN instead.
    #[arg(long, default_value_t = crate::surface::upstream::DEFAULT_EVENT_RATE, value_name = "N")]
    pub event_rate: u32,
    /// Queries each child container may ask per second, in bursts of as
    /// many (0: no limit); past it its query files answer EAGAIN. Every
    /// query runs a handler on each member it reaches.
    #[arg(long, default_value_t = crate::containers::replica::DEFAULT_CHILD_QUERY_RATE, value_name = "N")]
    pub child_query_rate: u32,
    /// Let users other than root read the files (FUSE allow_other).
    #[arg(long)]
    pub allow_other: bool,
    /// Run as a parent container's daemon: launch the children of
    /// --manifest (and DOCKER_RUN) with Docker and share the view with them.
    #[arg(long)]
    pub docker: bool,
    /// The manifest: `serfnode:` settings, `handlers:`, `templates:` (read
    /// on a host too when given) and, with --docker, `children:`
    /// [default with --docker: /serfnode.yml].
    #[arg(long, env = "SERFNODE_MANIFEST", value_name = "PATH")]
    pub manifest: Option<PathBuf>,
    /// One more child, as `docker run` arguments (with --docker).
    #[arg(long, env = "DOCKER_RUN", hide = true)]
    pub docker_run: Option<String>,
    /// The DOCKER_RUN child's name.
    #[arg(long, env = "DOCKER_NAME", hide = true)]
    pub docker_name: Option<String>,
    /// Directory shared with child containers: serve the view to their
    /// mounts over a unix socket there (`replica.sock`).
    #[arg(long, env = "SERFNODE_SHARE", value_name = "DIR")]
    pub share: Option<PathBuf>,
    #[command(flatten)]
    pub events: HandlerArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ChildArgs {
    /// This child's name, as the parent knows it [default: the hostname].
    #[arg(long, env = "SERFNODE_CHILD")]
    pub name: Option<String>,
    /// The parent's replica socket.
    #[arg(
        long,
        env = "SERFNODE_SOCKET",
        default_value = "/serfnode-share/replica.sock"
    )]
    pub socket: PathBuf,
    /// Where the cluster files are mounted.
    #[arg(long, env = "SERFNODE_MOUNT", default_value = "/serfnode")]
    pub mount: PathBuf,
    /// Symlink pointing at the mount's me.json, or `none`.
    #[arg(long, default_value = "/me.json")]
    pub me_link: String,
    /// Keep CAP_SYS_ADMIN for the application (privileged children).
    #[arg(long)]
    pub keep_caps: bool,
    /// Run the application (and the handlers) as this user (`name`, `uid`,
    /// `name:group`, `uid:gid`), with its groups as `docker run --user` gives them.
    #[arg(long)]
    pub user: Option<String>,
    /// The child's templates, as JSON (the parent passes its manifest's).
    #[arg(long, env = "SERFNODE_TEMPLATES", value_name = "JSON", hide = true)]
    pub templates: Option<String>,
    /// The token proving to the parent which child this is: taken out of
    /// SERFNODE_CHILD_TOKEN at start (see `child::prepare`).
    #[arg(skip)]
    pub token: Option<String>,
    #[command(flatten)]
    pub events: HandlerArgs,
    /// The application's own entrypoint and arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}
