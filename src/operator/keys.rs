//! `serfnode keys`: lists and rotates the gossip keys of the whole cluster
//! through the local agent's RPC. What a valid key is, is
//! [`crate::cluster::keys`]'s.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::cluster::agent;
use crate::cluster::keys::{check_key, Secret};
use crate::cluster::rpc::KeyResponse;

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
pub fn run(
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
    let mut rpc = Rpc::connect(addr, auth.as_ref().map(|s| s.0.as_str()))?;
    let (error, resp) = rpc.keyring(command, key.as_ref().map(|k| k.0.as_str()))?;
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

/// One blocking RPC session for a keyring command. The agent answers a
/// keyring command with an error header *and* the per-node report, which
/// [`Client`] drops with the error; here both are kept.
struct Rpc {
    addr: SocketAddr,
    read: BufReader<TcpStream>,
    write: TcpStream,
    seq: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Header<'a> {
    command: &'a str,
    seq: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Handshake {
    version: i32,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Auth<'a> {
    auth_key: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Key<'a> {
    key: &'a str,
}

impl Rpc {
    fn connect(addr: SocketAddr, auth: Option<&str>) -> anyhow::Result<Rpc> {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| anyhow::anyhow!("rpc {addr}: {e} (is the agent running?)"))?;
        stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        let mut rpc = Rpc {
            addr,
            read: BufReader::new(stream.try_clone()?),
            write: stream,
            seq: 0,
        };
        rpc.send("handshake", Some(&Handshake { version: 1 }))?;
        rpc.expect_ok("handshake")?;
        if let Some(key) = auth {
            rpc.send("auth", Some(&Auth { auth_key: key }))?;
            rpc.expect_ok("auth")?;
        }
        Ok(rpc)
    }

    fn send<B: Serialize>(&mut self, command: &str, body: Option<&B>) -> anyhow::Result<()> {
        let mut bytes = rmp_serde::to_vec_named(&Header {
            command,
            seq: self.seq,
        })?;
        if let Some(body) = body {
            rmp_serde::encode::write_named(&mut bytes, body)?;
        }
        self.seq += 1;
        self.write.write_all(&bytes)?;
        Ok(())
    }

    fn value(&mut self, what: &str) -> anyhow::Result<rmpv::Value> {
        rmpv::decode::read_value(&mut self.read)
            .map_err(|e| anyhow::anyhow!("rpc {}: read the {what}: {e}", self.addr))
    }

    /// The reply header's error ("" on success).
    fn header(&mut self, command: &str) -> anyhow::Result<String> {
        let v = self.value(&format!("{command} reply"))?;
        let error = v
            .as_map()
            .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("Error")))
            .and_then(|(_, v)| v.as_str())
            .ok_or_else(|| anyhow::anyhow!("rpc {}: {command}: not a reply header", self.addr))?;
        Ok(error.to_owned())
    }

    fn expect_ok(&mut self, command: &str) -> anyhow::Result<()> {
        match self.header(command)? {
            e if e.is_empty() => Ok(()),
            e => anyhow::bail!("rpc {}: {command}: {e}", self.addr),
        }
    }

    /// The agent's error ("" on success) and its report, when it sent one.
    fn keyring(
        &mut self,
        command: &str,
        key: Option<&str>,
    ) -> anyhow::Result<(String, Option<KeyResponse>)> {
        self.write.set_read_timeout(Some(KEYRING_TIMEOUT))?;
        match key {
            Some(key) => self.send(command, Some(&Key { key }))?,
            None => self.send::<()>(command, None)?,
        }
        let error = self.header(command)?;
        // Refusals before the command ran come without a report.
        if error == "Authentication required"
            || error.starts_with("Unsupported command")
            || error == "Handshake required"
        {
            return Ok((error, None));
        }
        let body = self.value(&format!("{command} report"))?;
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &body)?;
        let resp: KeyResponse = rmp_serde::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("rpc {}: {command} report: {e}", self.addr))?;
        Ok((error, Some(resp)))
    }
}
