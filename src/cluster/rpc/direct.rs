//! A blocking connection to the agent, one request at a time, for a thread
//! outside the runtime that waits for the answer itself (a FUSE worker
//! raising a written event): the agent's reply wakes that thread, instead of
//! a runtime thread that would then hand the answer over, which costs a
//! cross-thread wake-up per request (BENCHMARKS.md, session 13c).
//!
//! Waits are short and bounded: a request whose reply is not there within
//! the wait is left [`Pending`], to be finished on the runtime
//! ([`Pending::finish`]), so the waiting thread is never held long.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::codec::{self, Header};
use super::peer::{self, AgentPid};
use super::proto;
use super::{Result, RpcError};

/// One blocking connection; requests go out and come back in order.
pub struct Direct {
    stream: TcpStream,
    addr: SocketAddr,
    buf: Vec<u8>,
    scanner: codec::Scanner,
    next_seq: u64,
}

/// How a request on a [`Direct`] went.
pub enum Outcome {
    /// The agent took it; the connection, for the next one.
    Done(Direct),
    /// Sent; no verdict within the wait yet.
    Pending(Pending),
    /// Not sent whole (the agent drops a request it did not get whole).
    NotSent(RpcError),
    /// Sent, then refused ([`RpcError::Agent`]: the connection comes
    /// back), or no verdict will come: the connection is gone, and the
    /// event may yet be raised.
    Failed(RpcError, Option<Direct>),
}

/// A request sent whose reply did not come within the wait.
pub struct Pending {
    direct: Direct,
    seq: u64,
    command: &'static str,
}

impl Direct {
    /// Connects, shakes hands and, with `auth_key`, authenticates, each
    /// step within `within`; with `agent`, the server end must be a socket
    /// of that process before the key is sent (see [`super::peer`]).
    pub fn connect(
        addr: SocketAddr,
        auth_key: Option<&str>,
        agent: Option<&AgentPid>,
        within: Duration,
    ) -> Result<Direct> {
        let io = |source| RpcError::Io { addr, source };
        let stream = TcpStream::connect_timeout(&addr, within).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        stream.set_write_timeout(Some(within)).map_err(io)?;
        let mut direct = Direct {
            stream,
            addr,
            buf: Vec::with_capacity(256),
            scanner: codec::Scanner::default(),
            next_seq: 0,
        };
        direct.call("handshake", Some(&proto::Handshake { version: 1 }), within)?;
        if let Some(agent) = agent {
            let local = direct.stream.local_addr().map_err(io)?;
            peer::check(agent, local, addr)?;
        }
        if let Some(key) = auth_key {
            direct.call("auth", Some(&proto::Auth { auth_key: key }), within)?;
        }
        Ok(direct)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends a user event and waits up to `within` for the agent's verdict.
    pub fn event(
        mut self,
        name: &str,
        payload: &[u8],
        coalesce: bool,
        within: Duration,
    ) -> Outcome {
        let req = proto::Event {
            name,
            payload,
            coalesce,
        };
        let seq = match self.send("event", Some(&req)) {
            Ok(seq) => seq,
            Err(e) => return Outcome::NotSent(e),
        };
        match self.reply(seq, "event", Instant::now() + within) {
            Ok(Some(())) => Outcome::Done(self),
            Ok(None) => Outcome::Pending(Pending {
                direct: self,
                seq,
                command: "event",
            }),
            Err(e @ RpcError::Agent { .. }) => Outcome::Failed(e, Some(self)),
            Err(e) => Outcome::Failed(e, None),
        }
    }

    fn call<B: Serialize>(
        &mut self,
        command: &'static str,
        body: Option<&B>,
        within: Duration,
    ) -> Result<()> {
        let seq = self.send(command, body)?;
        match self.reply(seq, command, Instant::now() + within)? {
            Some(()) => Ok(()),
            None => Err(RpcError::Timeout { command }),
        }
    }

    fn send<B: Serialize>(&mut self, command: &str, body: Option<&B>) -> Result<u64> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let bytes = codec::encode_request(command, seq, body);
        self.stream
            .write_all(&bytes)
            .map_err(|source| RpcError::Io {
                addr: self.addr,
                source,
            })?;
        Ok(seq)
    }

    /// The verdict on request `seq` (no body follows on this connection's
    /// requests), or `None` at `deadline`.
    fn reply(&mut self, seq: u64, command: &'static str, deadline: Instant) -> Result<Option<()>> {
        loop {
            if let Some(Header { seq: got, error }) = self.next_header(command)? {
                if got != seq {
                    return Err(RpcError::Decode(format!(
                        "{command}: reply for seq {got}, waiting for {seq}"
                    )));
                }
                return match error.is_empty() {
                    true => Ok(Some(())),
                    false => Err(RpcError::Agent {
                        command,
                        message: error,
                    }),
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let io = |source| RpcError::Io {
                addr: self.addr,
                source,
            };
            self.stream.set_read_timeout(Some(left)).map_err(io)?;
            let mut chunk = [0u8; 512];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(RpcError::Closed { addr: self.addr }),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(io(e)),
            }
        }
    }

    /// The next whole frame in the buffer as a header, if there is one.
    fn next_header(&mut self, command: &'static str) -> Result<Option<Header>> {
        let Some(len) = self
            .scanner
            .scan(&self.buf)
            .map_err(|e| RpcError::Decode(format!("{command}: {e}")))?
        else {
            return Ok(None);
        };
        let header = codec::maybe_header(&self.buf[..len])
            .then(|| codec::as_header(&codec::value_of(&self.buf[..len])))
            .flatten();
        self.buf.drain(..len);
        header
            .map(Some)
            .ok_or_else(|| RpcError::Decode(format!("{command}: a reply that is not a header")))
    }
}

impl Pending {
    /// Waits on the runtime, up to `deadline`, for the verdict; the
    /// connection back when it came.
    pub async fn finish(self, deadline: Instant) -> (Option<Direct>, Result<()>) {
        let Pending {
            direct,
            seq,
            command,
        } = self;
        // The blocking waits run on a thread the runtime may block.
        let res = tokio::task::spawn_blocking(move || {
            let mut direct = direct;
            let r = direct.reply(seq, command, deadline);
            (direct, r)
        })
        .await;
        match res {
            Ok((direct, Ok(Some(())))) => (Some(direct), Ok(())),
            Ok((_, Ok(None))) => (None, Err(RpcError::Timeout { command })),
            Ok((_, Err(e))) => (None, Err(e)),
            Err(_) => (None, Err(RpcError::Timeout { command })),
        }
    }
}
