//! Client for the Serf agent's msgpack RPC (the "IPC" on port 7373).
//!
//! One [`Client`] is one TCP connection: requests are pipelined and matched
//! to replies by Seq, event streams and queries are subscriptions on the same
//! connection. Commands that keep the agent busy for seconds (`join`, `tags`,
//! the keyring) run on their own short-lived connection, because the agent
//! serves one connection's requests strictly in order. Reconnecting is the
//! caller's job: [`Client::closed`] tells when.
//!
//! The wire protocol, as this agent really speaks it, is described in
//! `shared/reference/serf-rpc.md`.

mod client;
mod codec;
mod direct;
#[doc(hidden)]
pub mod fuzz;
pub(crate) mod peer;
mod proto;

use std::net::SocketAddr;

pub use client::{
    Client, LogSubscription, QuerySubscription, Subscription, DEFAULT_SLOW_TIMEOUT, DEFAULT_TIMEOUT,
};
pub use direct::{Direct, Outcome, Pending};
pub use proto::{
    Coordinate, KeyResponse, Member, MemberEvent, MemberStatus, QueryParams, QueryRecord,
    StreamRecord,
};

/// Why an RPC failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("rpc {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The connection is gone: the agent died, restarted or dropped it.
    #[error("rpc connection to {addr} closed")]
    Closed { addr: SocketAddr },
    /// The agent refused the command; `message` is its error, verbatim.
    #[error("{command}: {message}")]
    Agent {
        command: &'static str,
        message: String,
    },
    /// A reply that does not have the expected shape.
    #[error("rpc decode {0}")]
    Decode(String),
    #[error("rpc {command}: no reply in time")]
    Timeout { command: &'static str },
    /// The peer is not the agent this daemon runs: nothing was sent to it
    /// but the handshake.
    #[error("rpc: refused to authenticate or follow: {0}")]
    Untrusted(#[from] peer::PeerError),
}

pub type Result<T, E = RpcError> = std::result::Result<T, E>;
