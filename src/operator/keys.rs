//! `serfnode keys`: lists and rotates the gossip keys of the whole cluster
//! through the local agent's RPC, on the one RPC client
//! ([`Client::keyring_report`]). What a valid key is, is
//! [`crate::cluster::keys`]'s.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::cluster::agent;
use crate::cluster::keys::{check_key, Secret};
use crate::cluster::rpc::Client;

/// `serfnode keys`: which agent to ask.
#[derive(Debug, Clone, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub action: KeysAction,
    /// The local agent's RPC address [default: 127.0.0.1:7373, port from RPC_PORT].
    #[arg(long, global = true, value_name = "IP:PORT")]
    pub rpc_addr: Option<SocketAddr>,
    /// RPC port (the original's RPC_PORT).
    #[arg(long, env = "RPC_PORT", global = true, hide = true)]
    pub rpc_port: Option<u16>,
    /// File holding the agent's RPC auth key [default: /var/lib/serfnode/rpc-auth if it exists].
    #[arg(
        long,
        env = "SERFNODE_RPC_AUTH_FILE",
        global = true,
        value_name = "PATH"
    )]
    pub rpc_auth_file: Option<PathBuf>,
}

/// A KEY is base64 (16, 24 or 32 bytes), or `-` to read it from stdin: a
/// KEY given as a value is visible in process listings (`ps`).
#[derive(Debug, Clone, Subcommand)]
pub enum KeysAction {
    /// Every key in the members' keyrings, with how many members have it.
    List,
    /// Add KEY to every member's keyring (rotation step 1).
    Install {
        /// Base64 key, or `-` to read it from stdin (a value shows in `ps`).
        key: String,
    },
    /// Make KEY every member's primary key, the one gossip is encrypted
    /// with (rotation step 2).
    Use {
        /// Base64 key, or `-` to read it from stdin (a value shows in `ps`).
        key: String,
    },
    /// Remove KEY from every member's keyring; not the primary one
    /// (rotation step 3).
    Remove {
        /// Base64 key, or `-` to read it from stdin (a value shows in `ps`).
        key: String,
    },
}

/// Default RPC key file of `serfnode keys`, used when it exists.
const DEFAULT_RPC_AUTH_FILE: &str = agent::DEFAULT_RPC_AUTH_FILE;
/// A keyring command waits for every member's answer (a cluster query).
const KEYRING_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `serfnode keys ...`: the per-node errors go to `err`; any failure is an
/// `Err` (and a non-zero exit).
pub async fn run(
    args: &KeysArgs,
    stdin: impl Read,
    out: &mut impl Write,
    err: &mut impl Write,
) -> anyhow::Result<()> {
    let addr = args.rpc_addr.unwrap_or(SocketAddr::new(
        std::net::Ipv4Addr::LOCALHOST.into(),
        args.rpc_port.unwrap_or(agent::DEFAULT_RPC_PORT),
    ));
    let auth = rpc_auth_key(args.rpc_auth_file.as_deref())?;
    let (command, key) = match &args.action {
        KeysAction::List => ("list-keys", None),
        KeysAction::Install { key } => ("install-key", Some(key_arg(key, stdin)?)),
        KeysAction::Use { key } => ("use-key", Some(key_arg(key, stdin)?)),
        KeysAction::Remove { key } => ("remove-key", Some(key_arg(key, stdin)?)),
    };
    let rpc = Client::connect_within(
        addr,
        auth.as_ref().map(|s| s.0.as_str()),
        None,
        CONNECT_TIMEOUT,
    )
    .await
    .map_err(|e| anyhow::anyhow!("rpc {addr}: {e} (is the agent running?)"))?
    .with_slow_timeout(KEYRING_TIMEOUT);
    let (error, resp) = rpc
        .keyring_report(command, key.as_ref().map(|k| k.0.as_str()))
        .await
        .map_err(|e| anyhow::anyhow!("rpc {addr}: {e}"))?;
    let resp = resp.unwrap_or_default();
    let total = resp.num_nodes;
    match &args.action {
        KeysAction::List => {
            let width = resp.keys.keys().map(String::len).max().unwrap_or(3).max(3);
            if !resp.keys.is_empty() {
                writeln!(out, "{:width$}  NODES", "KEY")?;
            }
            for (key, n) in &resp.keys {
                writeln!(out, "{key:width$}  {n}/{total}")?;
            }
        }
        _ if error.is_empty() => {
            let done = match command {
                "install-key" => "installed on",
                "use-key" => "now the primary key of",
                _ => "removed from",
            };
            writeln!(out, "key {done} {}/{total} nodes", resp.num_resp)?;
        }
        _ => {}
    }
    for (node, message) in &resp.messages {
        writeln!(err, "{node}: {message}")?;
    }
    if error.is_empty() && resp.num_err == 0 {
        Ok(())
    } else if error.is_empty() {
        anyhow::bail!("{command}: {}/{total} nodes reported failure", resp.num_err)
    } else {
        anyhow::bail!("{command}: {error}")
    }
}

/// The key to send: `-` reads it from stdin.
fn key_arg(arg: &str, mut stdin: impl Read) -> anyhow::Result<Secret> {
    if arg == "-" {
        let mut text = String::new();
        stdin.read_to_string(&mut text)?;
        Ok(Secret(check_key(&text, "key read from stdin")?))
    } else {
        Ok(Secret(check_key(arg, "key given on the command line")?))
    }
}

/// The RPC key: from `file`, else from the default file if it exists.
fn rpc_auth_key(file: Option<&Path>) -> anyhow::Result<Option<Secret>> {
    let (path, required) = match file {
        Some(p) => (p, true),
        None => (Path::new(DEFAULT_RPC_AUTH_FILE), false),
    };
    match std::fs::read_to_string(path) {
        Ok(k) if !k.trim().is_empty() => Ok(Some(Secret(k.trim().to_owned()))),
        Ok(_) => anyhow::bail!("rpc auth key file {} is empty", path.display()),
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => anyhow::bail!("rpc auth key file {}: {e}", path.display()),
    }
}
