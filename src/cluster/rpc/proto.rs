//! Wire types of the agent's RPC (IPC version 1): request bodies, response
//! bodies and stream records, plus the public values decoded from them.
//!
//! Keys are the agent's PascalCase field names, verbatim (`LTime`, `ID`).
//! Decoding is lenient on purpose: unknown keys are ignored, missing ones take
//! their default, and `nil` (which the agent sends for empty payloads, maps
//! and key lists) reads as empty.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_bytes::ByteBuf;

/// Reads `nil` (or a missing key, with `#[serde(default)]`) as `T::default()`.
fn nil_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Reads msgpack `bin` (or `nil`) as bytes; a plain `Vec<u8>` would expect an array.
fn nil_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    Ok(Option::<ByteBuf>::deserialize(d)?
        .map(ByteBuf::into_vec)
        .unwrap_or_default())
}

/// Text that may not be UTF-8 (a member's name or tags come from whoever
/// started that agent): invalid bytes become U+FFFD instead of failing the
/// whole reply, which would blind us to every member.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Lossy(String);

impl<'de> Deserialize<'de> for Lossy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Lossy, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Lossy;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Lossy, E> {
                Ok(Lossy(v.to_owned()))
            }
            // rmp-serde hands over a str whose bytes are not UTF-8 as bytes.
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Lossy, E> {
                Ok(Lossy(String::from_utf8_lossy(v).into_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

fn lossy_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Lossy::deserialize(d)?.0)
}

fn lossy_tags<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(Option::<BTreeMap<Lossy, Lossy>>::deserialize(d)?
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.0, v.0))
        .collect())
}

// ---- requests -------------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RequestHeader<'a> {
    pub command: &'a str,
    pub seq: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Handshake {
    pub version: i32,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Auth<'a> {
    pub auth_key: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Event<'a> {
    pub name: &'a str,
    #[serde(with = "serde_bytes")]
    pub payload: &'a [u8],
    pub coalesce: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ForceLeave<'a> {
    pub node: &'a str,
    pub prune: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Join<'a> {
    pub existing: &'a [String],
    pub replay: bool,
}

/// Every pattern is a Go regular expression, anchored by the agent; empty
/// `status`/`name` match everything.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct MembersFiltered<'a> {
    pub tags: &'a BTreeMap<String, String>,
    pub status: &'a str,
    pub name: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Tags<'a> {
    pub tags: &'a BTreeMap<String, String>,
    pub delete_tags: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Stream<'a> {
    #[serde(rename = "Type")]
    pub filter: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Monitor<'a> {
    pub log_level: &'a str,
}

/// One record of a `monitor` subscription: one call of the agent's logger,
/// its final newline stripped (it may hold more lines: a member name can).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct LogRecord {
    #[serde(default, deserialize_with = "lossy_string")]
    pub log: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Stop {
    pub stop: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Query<'a> {
    pub filter_nodes: &'a [String],
    pub filter_tags: &'a BTreeMap<String, String>,
    pub request_ack: bool,
    pub relay_factor: u8,
    /// Go `time.Duration`: nanoseconds; 0 lets the agent pick its default.
    pub timeout: i64,
    pub name: &'a str,
    #[serde(with = "serde_bytes")]
    pub payload: &'a [u8],
}

impl<'a> From<&'a QueryParams> for Query<'a> {
    fn from(p: &'a QueryParams) -> Self {
        Query {
            filter_nodes: &p.filter_nodes,
            filter_tags: &p.filter_tags,
            request_ack: p.request_ack,
            relay_factor: p.relay_factor,
            timeout: p
                .timeout
                .map_or(0, |t| i64::try_from(t.as_nanos()).unwrap_or(i64::MAX)),
            name: &p.name,
            payload: &p.payload,
        }
    }
}

#[derive(Serialize)]
pub(crate) struct Respond<'a> {
    #[serde(rename = "ID")]
    pub id: u64,
    #[serde(rename = "Payload", with = "serde_bytes")]
    pub payload: &'a [u8],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Key<'a> {
    pub key: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CoordinateRequest<'a> {
    pub node: &'a str,
}

/// A user query to send with [`Client::query`](super::Client::query).
#[derive(Debug, Clone, Default)]
pub struct QueryParams {
    pub name: String,
    pub payload: Vec<u8>,
    /// Only these nodes answer (empty: all).
    pub filter_nodes: Vec<String>,
    /// Only nodes whose tags match these anchored Go regular expressions answer.
    pub filter_tags: BTreeMap<String, String>,
    /// Ask every node for an ack on receipt, before its response.
    pub request_ack: bool,
    /// Extra nodes relaying each response, for lossy networks.
    pub relay_factor: u8,
    /// `None`: the agent's default, which grows with the cluster (~3.2 s below 10 nodes).
    pub timeout: Option<Duration>,
}

// ---- responses ------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct MembersResponse {
    #[serde(default, deserialize_with = "nil_default")]
    pub members: Vec<Member>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct JoinResponse {
    #[serde(default)]
    pub num: u32,
}

/// Outcome of a keyring command, as gathered by the agent from every member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyResponse {
    /// Node name → error message, for the nodes that failed.
    #[serde(default, deserialize_with = "nil_default")]
    pub messages: BTreeMap<String, String>,
    /// `list_keys` only: base64 key → number of nodes that have it.
    #[serde(default, deserialize_with = "nil_default")]
    pub keys: BTreeMap<String, u32>,
    #[serde(default)]
    pub num_nodes: u32,
    #[serde(default)]
    pub num_err: u32,
    #[serde(default)]
    pub num_resp: u32,
}

/// A node's network coordinate (Vivaldi), as cached by the agent.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Coordinate {
    #[serde(default, deserialize_with = "nil_default")]
    pub vec: Vec<f64>,
    #[serde(default)]
    pub error: f64,
    #[serde(default)]
    pub adjustment: f64,
    #[serde(default)]
    pub height: f64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CoordinateResponse {
    /// A zero coordinate with a `nil` vector when `ok` is false.
    #[serde(default)]
    pub coord: Coordinate,
    #[serde(default)]
    pub ok: bool,
}

/// `stats`: section (`agent`, `runtime`, `serf`, `tags`, …) → key → value.
pub(crate) type StatsResponse = BTreeMap<String, Option<BTreeMap<String, String>>>;

// ---- members --------------------------------------------------------------

/// A member's state in the agent's view.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemberStatus {
    Alive,
    Leaving,
    Left,
    Failed,
    /// The agent's `"none"`: seen in a message but not yet known alive.
    None,
    /// A status this client does not know, kept verbatim.
    Other(String),
}

impl MemberStatus {
    pub fn as_str(&self) -> &str {
        match self {
            MemberStatus::Alive => "alive",
            MemberStatus::Leaving => "leaving",
            MemberStatus::Left => "left",
            MemberStatus::Failed => "failed",
            MemberStatus::None => "none",
            MemberStatus::Other(s) => s,
        }
    }
}

impl From<String> for MemberStatus {
    fn from(s: String) -> Self {
        match s.as_str() {
            "alive" => MemberStatus::Alive,
            "leaving" => MemberStatus::Leaving,
            "left" => MemberStatus::Left,
            "failed" => MemberStatus::Failed,
            "none" => MemberStatus::None,
            _ => MemberStatus::Other(s),
        }
    }
}

/// One cluster member as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "WireMember")]
pub struct Member {
    pub name: String,
    /// IPv4-mapped IPv6 addresses are unmapped to IPv4.
    pub addr: IpAddr,
    pub port: u16,
    pub tags: BTreeMap<String, String>,
    pub status: MemberStatus,
    /// Memberlist protocol versions: min, max, current.
    pub protocol: [u8; 3],
    /// Serf protocol versions: min, max, current.
    pub delegate: [u8; 3],
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireMember {
    #[serde(deserialize_with = "lossy_string")]
    name: String,
    #[serde(default, deserialize_with = "nil_bytes")]
    addr: Vec<u8>,
    #[serde(default)]
    port: u16,
    #[serde(default, deserialize_with = "lossy_tags")]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    status: String,
    #[serde(default)]
    protocol_min: u8,
    #[serde(default)]
    protocol_max: u8,
    #[serde(default)]
    protocol_cur: u8,
    #[serde(default)]
    delegate_min: u8,
    #[serde(default)]
    delegate_max: u8,
    #[serde(default)]
    delegate_cur: u8,
}

impl TryFrom<WireMember> for Member {
    type Error = String;

    fn try_from(w: WireMember) -> Result<Self, String> {
        let addr = ip_from_bytes(&w.addr)
            .ok_or_else(|| format!("member {}: address of {} bytes", w.name, w.addr.len()))?;
        Ok(Member {
            name: w.name,
            addr,
            port: w.port,
            tags: w.tags,
            status: w.status.into(),
            protocol: [w.protocol_min, w.protocol_max, w.protocol_cur],
            delegate: [w.delegate_min, w.delegate_max, w.delegate_cur],
        })
    }
}

/// Go's `net.IP` on the wire: 4 bytes, or 16 (IPv6, or IPv4-mapped when the
/// agent binds 0.0.0.0 without an advertise address).
fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(b) {
        return Some(IpAddr::V4(Ipv4Addr::from(v4)));
    }
    let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?);
    Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
}

// ---- stream records -------------------------------------------------------

/// The kind of a member event record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberEvent {
    Join,
    Leave,
    Failed,
    Update,
    Reap,
}

impl MemberEvent {
    /// The agent's name for it, as used in stream filters.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberEvent::Join => "member-join",
            MemberEvent::Leave => "member-leave",
            MemberEvent::Failed => "member-failed",
            MemberEvent::Update => "member-update",
            MemberEvent::Reap => "member-reap",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "member-join" => MemberEvent::Join,
            "member-leave" => MemberEvent::Leave,
            "member-failed" => MemberEvent::Failed,
            "member-update" => MemberEvent::Update,
            "member-reap" => MemberEvent::Reap,
            _ => return None,
        })
    }
}

impl Member {
    /// An alive member at 127.0.0.9:7946 with these tags (unit tests).
    #[cfg(test)]
    pub(crate) fn fixture(name: &str, tags: &[(&str, &str)]) -> Member {
        Member {
            name: name.into(),
            addr: "127.0.0.9".parse().expect("an address"),
            port: 7946,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            status: MemberStatus::Alive,
            protocol: [1, 5, 5],
            delegate: [2, 5, 4],
        }
    }
}

/// One record of a `stream` subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRecord {
    /// Several members when the agent coalesced their events (~1 s window).
    Member {
        event: MemberEvent,
        members: Vec<Member>,
    },
    User {
        ltime: u64,
        name: String,
        payload: Vec<u8>,
        coalesce: bool,
    },
    /// A query to answer with [`Client::respond`](super::Client::respond)
    /// and this `id`, before the query's timeout.
    Query {
        id: u64,
        ltime: u64,
        name: String,
        payload: Vec<u8>,
    },
}

/// The union of the agent's three record shapes, told apart by `Event`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct WireRecord {
    event: String,
    #[serde(default, deserialize_with = "nil_default")]
    members: Vec<Member>,
    #[serde(default, rename = "LTime")]
    ltime: u64,
    #[serde(default)]
    name: String,
    #[serde(default, deserialize_with = "nil_bytes")]
    payload: Vec<u8>,
    #[serde(default)]
    coalesce: bool,
    #[serde(default, rename = "ID")]
    id: u64,
}

impl WireRecord {
    /// `Err` carries the unknown event name.
    pub(crate) fn into_record(self) -> Result<StreamRecord, String> {
        Ok(match self.event.as_str() {
            "user" => StreamRecord::User {
                ltime: self.ltime,
                name: self.name,
                payload: self.payload,
                coalesce: self.coalesce,
            },
            "query" => StreamRecord::Query {
                id: self.id,
                ltime: self.ltime,
                name: self.name,
                payload: self.payload,
            },
            other => StreamRecord::Member {
                event: MemberEvent::parse(other).ok_or(self.event)?,
                members: self.members,
            },
        })
    }
}

/// One record of a query's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryRecord {
    Ack {
        from: String,
    },
    Response {
        from: String,
        payload: Vec<u8>,
    },
    /// The query timed out; nothing follows.
    Done,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct WireQueryRecord {
    #[serde(default)]
    r#type: String,
    #[serde(default)]
    from: String,
    #[serde(default, deserialize_with = "nil_bytes")]
    payload: Vec<u8>,
}

/// The `Type` of a query's last record.
pub(crate) const QUERY_DONE: &str = "done";

impl WireQueryRecord {
    /// `Err` carries the unknown record type.
    pub(crate) fn into_record(self) -> Result<QueryRecord, String> {
        Ok(match self.r#type.as_str() {
            "ack" => QueryRecord::Ack { from: self.from },
            "response" => QueryRecord::Response {
                from: self.from,
                payload: self.payload,
            },
            QUERY_DONE => QueryRecord::Done,
            _ => return Err(self.r#type),
        })
    }
}

#[cfg(test)]
mod tests {
    //! Decoding of reply bodies and records recorded from a live agent
    //! (see testdata/README.md).

    use super::*;

    fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
        rmp_serde::from_slice(bytes).unwrap()
    }

    fn record(bytes: &[u8]) -> StreamRecord {
        decode::<WireRecord>(bytes).into_record().unwrap()
    }

    #[test]
    fn members_with_a_left_one() {
        let members = decode::<MembersResponse>(include_bytes!("testdata/members.bin")).members;
        let names: Vec<_> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["alpha", "bravo", "charlie", "delta"]);
        let bravo = &members[1];
        assert_eq!(bravo.addr, IpAddr::from([127, 0, 9, 2]));
        assert_eq!(bravo.port, 7946);
        assert_eq!(bravo.status, MemberStatus::Alive);
        assert_eq!(bravo.tags["role"], "web");
        assert_eq!(bravo.tags["ports"], "8000t8000");
        assert_eq!(bravo.protocol, [1, 5, 2]);
        assert_eq!(bravo.delegate, [2, 5, 5]);
        assert!(members[2].tags.is_empty());
        assert_eq!(members[3].status, MemberStatus::Left);
        assert_eq!(members[3].status.as_str(), "left");
    }

    #[test]
    fn ipv6_addresses_and_v4_mapped_ones() {
        let v6 = decode::<MembersResponse>(include_bytes!("testdata/members_v6.bin")).members;
        assert_eq!(v6[0].addr, IpAddr::V6(Ipv6Addr::LOCALHOST));
        let mapped =
            decode::<MembersResponse>(include_bytes!("testdata/members_v4mapped.bin")).members;
        assert_eq!(mapped[0].addr, IpAddr::from([10, 1, 2, 3]));
    }

    #[test]
    fn an_address_of_odd_length_is_a_decode_error() {
        let mut bytes = include_bytes!("testdata/record_member_join.bin").to_vec();
        let at = bytes.windows(2).position(|w| w == [0xc4, 4]).unwrap();
        bytes[at + 1] = 3;
        bytes.remove(at + 2);
        let err = rmp_serde::from_slice::<WireRecord>(&bytes).err().unwrap();
        assert!(err.to_string().contains("address of 3 bytes"), "{err}");
    }

    #[test]
    fn member_event_records() {
        let StreamRecord::Member { event, members } =
            record(include_bytes!("testdata/record_member_join.bin"))
        else {
            panic!("a member record")
        };
        assert_eq!(event, MemberEvent::Join);
        assert_eq!(members[0].name, "delta");
        assert_eq!(members[0].tags["role"], "db");
        let StreamRecord::Member { event, members } =
            record(include_bytes!("testdata/record_member_update.bin"))
        else {
            panic!("a member record")
        };
        assert_eq!(event, MemberEvent::Update);
        assert_eq!(members[0].tags["role"], "cache");
    }

    #[test]
    fn user_event_records_with_and_without_payload() {
        assert_eq!(
            record(include_bytes!("testdata/record_user.bin")),
            StreamRecord::User {
                ltime: 1,
                name: "deploy".into(),
                payload: b"v1.2".to_vec(),
                coalesce: false,
            }
        );
        // An empty payload arrives as nil.
        assert_eq!(
            record(include_bytes!("testdata/record_user_nil.bin")),
            StreamRecord::User {
                ltime: 2,
                name: "ping".into(),
                payload: Vec::new(),
                coalesce: false,
            }
        );
    }

    #[test]
    fn query_record_on_a_stream() {
        assert_eq!(
            record(include_bytes!("testdata/record_query.bin")),
            StreamRecord::Query {
                id: 1,
                ltime: 1,
                name: "uptime".into(),
                payload: b"how long?".to_vec(),
            }
        );
    }

    #[test]
    fn unknown_kinds_are_reported_not_guessed() {
        let mut bytes = include_bytes!("testdata/record_member_join.bin").to_vec();
        let at = bytes.windows(11).position(|w| w == b"member-join").unwrap();
        bytes[at..at + 11].copy_from_slice(b"member-jump");
        assert_eq!(
            decode::<WireRecord>(&bytes).into_record(),
            Err("member-jump".to_owned())
        );
        assert_eq!(
            MemberStatus::from("rebooting".to_owned()),
            MemberStatus::Other("rebooting".into())
        );
    }

    #[test]
    fn query_progress_records() {
        let rec = |b: &[u8]| decode::<WireQueryRecord>(b).into_record().unwrap();
        assert_eq!(
            rec(include_bytes!("testdata/query_ack.bin")),
            QueryRecord::Ack {
                from: "charlie".into()
            }
        );
        assert_eq!(
            rec(include_bytes!("testdata/query_response.bin")),
            QueryRecord::Response {
                from: "alpha".into(),
                payload: b"up 3 days".to_vec(),
            }
        );
        assert_eq!(
            rec(include_bytes!("testdata/query_done.bin")),
            QueryRecord::Done
        );
    }

    #[test]
    fn keyring_replies() {
        // install-key: Keys is nil.
        let resp: KeyResponse = decode(include_bytes!("testdata/keys_nil.bin"));
        assert_eq!(
            (resp.keys.len(), resp.num_nodes, resp.num_resp, resp.num_err),
            (0, 1, 1, 0)
        );
        let resp: KeyResponse = decode(include_bytes!("testdata/keys_list.bin"));
        assert_eq!(resp.keys["T9jncgl9mbLus+baTTa7q7nPSUrXwbDi2dhbtqir37s="], 1);
        assert_eq!(resp.keys.len(), 2);
        // Without encryption: an error header, and still this body.
        let resp: KeyResponse = decode(include_bytes!("testdata/keys_unencrypted.bin"));
        assert_eq!(resp.num_err, 4);
        assert_eq!(
            resp.messages["alpha"],
            "Keyring is empty (encryption not enabled)"
        );
    }

    #[test]
    fn stats_sections() {
        let stats: StatsResponse = decode(include_bytes!("testdata/stats.bin"));
        let section = |name: &str| stats[name].clone().unwrap_or_default();
        assert_eq!(section("agent")["name"], "alpha");
        assert_eq!(section("serf")["members"], "4");
        assert_eq!(section("tags")["role"], "lb");
        assert!(section("event_handlers").is_empty());
    }

    #[test]
    fn coordinates_known_and_unknown() {
        let resp: CoordinateResponse = decode(include_bytes!("testdata/coordinate.bin"));
        assert!(resp.ok);
        assert_eq!(resp.coord.vec.len(), 8);
        assert_eq!(resp.coord.height, 0.00001);
        // Unknown node: a zero coordinate with a nil vector.
        let resp: CoordinateResponse = decode(include_bytes!("testdata/coordinate_none.bin"));
        assert!(!resp.ok);
        assert_eq!(resp.coord, Coordinate::default());
    }

    #[test]
    fn join_count() {
        assert_eq!(
            decode::<JoinResponse>(include_bytes!("testdata/join.bin")).num,
            1
        );
    }
}
