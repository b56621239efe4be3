//! Hooks for the property tests in `tests/fuzz.rs`: the RPC decoding exactly
//! as [`Client`](super::Client) runs it, on bytes instead of a connection.
//! Not an API.

use std::collections::BTreeMap;

use super::client::decode;
use super::{codec, proto, Coordinate, KeyResponse, Member, QueryRecord, StreamRecord};

/// What the connection's read loop makes of the front of its buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Only part of a value: the loop waits for more bytes.
    Incomplete,
    /// Not msgpack (or nested too deep): the loop drops the connection.
    Invalid,
    /// A reply or record header of `len` bytes.
    Header { len: usize, seq: u64, error: String },
    /// Any other value of `len` bytes: a body. `query_done` is what the
    /// loop checks to end a query subscription.
    Body { len: usize, query_done: bool },
}

/// Frames the first value of `buf` as the read loop does.
pub fn frame(buf: &[u8]) -> Frame {
    match codec::next_frame(buf) {
        Ok(None) => Frame::Incomplete,
        Err(_) => Frame::Invalid,
        Ok(Some((len, value))) => match codec::as_header(&value) {
            Some(h) => Frame::Header {
                len,
                seq: h.seq,
                error: h.error,
            },
            None => Frame::Body {
                len,
                query_done: codec::str_field(&value, "Type") == Some(proto::QUERY_DONE),
            },
        },
    }
}

/// A body run through every decoder the client has for one.
#[derive(Debug)]
pub struct Decoded {
    pub members: Result<Vec<Member>, String>,
    /// Outer: undecodable; inner: a record of unknown kind.
    pub record: Result<Result<StreamRecord, String>, String>,
    pub query_record: Result<Result<QueryRecord, String>, String>,
    pub keys: Result<KeyResponse, String>,
    pub join: Result<u32, String>,
    pub stats: Result<BTreeMap<String, Option<BTreeMap<String, String>>>, String>,
    pub coordinate: Result<(Coordinate, bool), String>,
}

/// Decodes `body` as each kind of reply and record.
pub fn decode_body(body: &[u8]) -> Decoded {
    fn d<T: serde::de::DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, String> {
        decode(what, body).map_err(|e| e.to_string())
    }
    Decoded {
        members: d::<proto::MembersResponse>("members", body).map(|r| r.members),
        record: d::<proto::WireRecord>("stream record", body).map(proto::WireRecord::into_record),
        query_record: d::<proto::WireQueryRecord>("query record", body)
            .map(proto::WireQueryRecord::into_record),
        keys: d("keyring", body),
        join: d::<proto::JoinResponse>("join", body).map(|r| r.num),
        stats: d::<proto::StatsResponse>("stats", body),
        coordinate: d::<proto::CoordinateResponse>("get-coordinate", body).map(|r| (r.coord, r.ok)),
    }
}
