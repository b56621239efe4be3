//! The replica link's wire format: one JSON object per line, `{"type": ...}`,
//! each way ([`ToParent`], [`ToChild`]), the view as it travels
//! ([`WireView`]), and the bounded reading and writing of frames.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::cluster::membership::{Containers, Mirror, Snapshot};
use crate::cluster::rpc::Member;
use crate::surface::journal::Entry;
use crate::surface::query::{Answers, Ask};

pub(crate) const SOCKET: &str = "replica.sock";

/// Bound on one line from the parent: a view of tens of thousands of
/// members fits.
pub(super) const MAX_FRAME: u64 = 256 << 20;

/// Until a connection has proved which child it is, it gets this little:
/// its hello must fit in [`MAX_HELLO`] bytes and arrive within
/// [`HELLO_DEADLINE`], and at most [`MAX_PENDING`] connections wait for
/// theirs (a newer one pushes out the oldest, so a real child, which sends
/// its hello at once, gets through a flood of silent ones).
pub const MAX_HELLO: usize = 4096;
pub(crate) const HELLO_DEADLINE: Duration = Duration::from_secs(2);
pub(crate) const MAX_PENDING: usize = 64;

/// Bound on a frame from a child after its hello. One write(2) reaches the
/// write node in WRITEs of at most 1 MiB (the kernel's largest), plus a
/// 64 KiB partial line; each event becomes at most about 3.5 times its line
/// on the wire (escaping, field names).
pub const MAX_CHILD_FRAME: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("replica socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("replica link: {0}")]
    Link(#[from] std::io::Error),
    #[error("replica link: bad frame: {0}")]
    Frame(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToParent {
    Hello {
        child: String,
        /// The token the parent gave this child's container.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    Events {
        id: u64,
        pid: u32,
        events: Vec<WireEvent>,
    },
    Query {
        id: u64,
        pid: u32,
        ask: Ask,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ToChild {
    View(Box<WireView>),
    Outcome {
        id: u64,
        raised: usize,
        errno: Option<i32>,
    },
    Journal {
        entries: Vec<Entry>,
        /// The entries the parent held when the child connected: history,
        /// which the child's handlers do not run for.
        backlog: bool,
    },
    Answers {
        id: u64,
        result: Result<Answers, i32>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEvent {
    pub name: String,
    /// Compact JSON, as the write node parsed it.
    pub payload: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct WireView {
    pub local: Option<String>,
    pub agent_error: Option<String>,
    pub members: Vec<WireMember>,
    pub parent: Option<Value>,
    pub me: Option<Value>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireMember {
    pub name: String,
    pub addr: IpAddr,
    pub port: u16,
    pub tags: std::collections::BTreeMap<String, String>,
    pub status: String,
    pub protocol: [u8; 3],
    pub delegate: [u8; 3],
}

impl WireView {
    /// What child `child` is told of `snap`: the parent's container info and
    /// the child's own (which the parent's Docker side records per child).
    /// A child with `show_secrets` gets the versions made for it.
    pub fn of(snap: &Snapshot, child: &str) -> WireView {
        let shown = snap.containers.shown.get(child);
        WireView {
            local: snap.local.clone(),
            agent_error: (!snap.agent.connected).then(|| {
                snap.agent
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "parent not following its agent yet".into())
            }),
            members: snap
                .members
                .values()
                .map(|e| WireMember::from(&*e.member))
                .collect(),
            parent: shown.map_or_else(|| snap.containers.me.clone(), |s| s.parent.clone()),
            me: shown.map_or_else(
                || snap.containers.children.get(child).cloned(),
                |s| s.me.clone(),
            ),
        }
    }

    pub(super) fn into_mirror(self) -> Mirror {
        Mirror {
            members: self.members.into_iter().map(Member::from).collect(),
            local: self.local,
            agent_error: self.agent_error,
            containers: Containers {
                me: self.me,
                parent: self.parent,
                ..Containers::default()
            },
        }
    }
}

impl From<&Member> for WireMember {
    fn from(m: &Member) -> WireMember {
        WireMember {
            name: m.name.clone(),
            addr: m.addr,
            port: m.port,
            tags: m.tags.clone(),
            status: m.status.as_str().to_owned(),
            protocol: m.protocol,
            delegate: m.delegate,
        }
    }
}

impl From<WireMember> for Member {
    fn from(w: WireMember) -> Member {
        Member {
            name: w.name,
            addr: w.addr,
            port: w.port,
            tags: w.tags,
            status: w.status.into(),
            protocol: w.protocol,
            delegate: w.delegate,
        }
    }
}

pub(super) async fn read_frame<T: DeserializeOwned>(
    r: &mut BufReader<OwnedReadHalf>,
    buf: &mut Vec<u8>,
) -> Result<Option<T>, ReplicaError> {
    read_frame_within(r, buf, MAX_FRAME as usize).await
}

/// The next line, at most `limit` bytes with its newline, as a `T`; `None`
/// at a clean end. Never holds more than `limit` bytes of it.
pub(super) async fn read_frame_within<T: DeserializeOwned, R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> Result<Option<T>, ReplicaError> {
    buf.clear();
    let n = (&mut *r).take(limit as u64).read_until(b'\n', buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(ReplicaError::Frame(if n >= limit {
            format!("line over {limit} bytes")
        } else {
            "line cut short".to_owned()
        }));
    }
    serde_json::from_slice(buf)
        .map(Some)
        .map_err(|e| ReplicaError::Frame(e.to_string()))
}

/// A connection's hello, as the parent reads it: the first line, within
/// [`MAX_HELLO`].
pub(super) async fn read_hello<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<(String, Option<String>), ReplicaError> {
    match read_frame_within::<ToParent, _>(r, buf, MAX_HELLO).await? {
        Some(ToParent::Hello { child, token }) => Ok((child, token)),
        Some(_) => Err(ReplicaError::Frame("expected hello".into())),
        None => Err(ReplicaError::Frame("closed before its hello".into())),
    }
}

/// A child's next request after its hello, within [`MAX_CHILD_FRAME`];
/// `None` at a clean end. A second hello is an error.
pub(super) async fn read_request<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<ToParent>, ReplicaError> {
    let msg = read_frame_within::<ToParent, _>(r, buf, MAX_CHILD_FRAME).await;
    // A big frame's buffer is not kept for the connection's lifetime.
    if buf.capacity() > 64 << 10 {
        *buf = Vec::new();
    }
    match msg? {
        Some(ToParent::Hello { .. }) => Err(ReplicaError::Frame("second hello".into())),
        other => Ok(other),
    }
}

pub(super) async fn write_frame(
    w: &mut OwnedWriteHalf,
    msg: &impl Serialize,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).expect("wire types serialize");
    line.push(b'\n');
    w.write_all(&line).await
}
