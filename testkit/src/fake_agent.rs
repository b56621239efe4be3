//! A stand-in Serf agent speaking Serf's msgpack RPC over TCP on
//! 127.0.0.1, for unit tests and for views larger than this machine can
//! run as real agents. It holds a member list it is told to change and
//! answers `handshake`, `auth`, `stats`, `members`, `members-filtered`
//! (status, name and tag filters as regular expressions the agent anchors,
//! `^…$`, with an RE2-like engine; an invalid one drops the connection
//! without a reply, as Serf does), `join`, `stream` (member events: a
//! record per change; other filters acknowledged and silent), `monitor`
//! (acknowledged; a change logs the line Serf logs, and
//! [`FakeAgent::log_line`] pushes any), and acknowledges `event`, `tags`,
//! `stop`, `respond`, `force-leave` and `leave`.
//!
//! Built on rmpv/rmp-serde and types of its own, not serfnode's, so that
//! serfnode's unit tests can use it (see the kit's Cargo.toml).

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use parking_lot::Mutex;
use serde::Serialize;

use crate::progress;

/// A member as the stand-in reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeMember {
    pub name: String,
    pub addr: IpAddr,
    pub port: u16,
    pub tags: BTreeMap<String, String>,
    /// `alive`, `leaving`, `left`, `failed`.
    pub status: String,
    /// Protocol min, max, current.
    pub protocol: [u8; 3],
    /// Delegate protocol min, max, current.
    pub delegate: [u8; 3],
}

/// A member as the agent's `members` reply and its stream records encode it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct WireMember<'a> {
    name: &'a str,
    #[serde(with = "serde_bytes")]
    addr: Vec<u8>,
    port: u16,
    tags: &'a BTreeMap<String, String>,
    status: &'a str,
    protocol_min: u8,
    protocol_max: u8,
    protocol_cur: u8,
    delegate_min: u8,
    delegate_max: u8,
    delegate_cur: u8,
}

impl<'a> WireMember<'a> {
    pub fn of(m: &'a FakeMember) -> WireMember<'a> {
        let addr = match m.addr {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        WireMember {
            name: &m.name,
            addr,
            port: m.port,
            tags: &m.tags,
            status: &m.status,
            protocol_min: m.protocol[0],
            protocol_max: m.protocol[1],
            protocol_cur: m.protocol[2],
            delegate_min: m.delegate[0],
            delegate_max: m.delegate[1],
            delegate_cur: m.delegate[2],
        }
    }
}

/// The members as a msgpack array, as in the `Members` field of a reply.
pub fn encode_members(members: &[FakeMember]) -> Result<Vec<u8>> {
    let wire: Vec<WireMember> = members.iter().map(WireMember::of).collect();
    rmp_serde::to_vec_named(&wire).context("encode a members reply")
}

pub struct FakeAgent {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

/// A subscription: the connection's writer and the request's seq.
type Subscriber = (Arc<Mutex<TcpStream>>, u64);

struct State {
    members: Vec<FakeMember>,
    /// The `members` reply body, `{Members: [...]}`: encoded by the first
    /// `members` read after a change (`None` until then), so a change
    /// nobody reads in full costs the stand-in nothing (at 10,000 members
    /// an encoding takes milliseconds of the machine the daemon runs on).
    reply: Option<Vec<u8>>,
    conns: Vec<TcpStream>,
    /// Member-event streams.
    streams: Vec<Subscriber>,
    /// `monitor` subscriptions.
    monitors: Vec<Subscriber>,
    /// `members` and `members-filtered` requests answered so far.
    reads: u64,
    /// Commands received, in order (what a unit test asserts on).
    commands: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Header<'a> {
    seq: u64,
    error: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct MembersBody<'a> {
    members: Vec<WireMember<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct MemberRecord<'a> {
    event: &'a str,
    members: Vec<WireMember<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct LogRecord<'a> {
    log: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct JoinBody {
    num: u32,
}

impl State {
    fn change_tag(&mut self, i: usize, key: &str, value: &str) -> Result<String> {
        let m = &mut self.members[i];
        m.tags.insert(key.into(), value.into());
        let name = m.name.clone();
        self.reply = None;
        Ok(name)
    }

    /// The `members` reply body, encoded now if the members changed since.
    fn reply(&mut self) -> Result<&[u8]> {
        if self.reply.is_none() {
            let body = MembersBody {
                members: self.members.iter().map(WireMember::of).collect(),
            };
            self.reply = Some(rmp_serde::to_vec_named(&body).context("encode a members reply")?);
        }
        Ok(self.reply.as_deref().unwrap_or_default())
    }
}

fn msgpack<T: Serialize>(v: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(v).expect("plain structs encode")
}

/// Commands whose request carries a body (Serf's `ipc.go`).
fn has_body(command: &str) -> bool {
    !matches!(command, "members" | "stats" | "leave" | "list-keys")
}

/// Sends one record (header and body) to each subscriber; drops those whose
/// connection is gone.
fn publish(subscribers: &mut Vec<Subscriber>, record: &[u8]) {
    subscribers.retain(|(w, seq)| {
        let mut w = w.lock();
        w.write_all(&msgpack(&Header {
            seq: *seq,
            error: "",
        }))
        .and_then(|()| w.write_all(record))
        .is_ok()
    });
}

impl FakeAgent {
    /// Listens on 127.0.0.1 (a free port) holding `members`.
    pub fn start(members: Vec<FakeMember>) -> Result<FakeAgent> {
        let mut state = State {
            members,
            reply: None,
            conns: Vec::new(),
            streams: Vec::new(),
            monitors: Vec::new(),
            reads: 0,
            commands: Vec::new(),
        };
        state.reply()?;
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the stand-in agent")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(state));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let _ = conn.set_nonblocking(false);
                            // As Go (and so Serf) sets on every TCP connection: a
                            // record written in two parts must not wait out the
                            // peer's delayed ACK (~40 ms) behind Nagle.
                            let _ = conn.set_nodelay(true);
                            if let Ok(c) = conn.try_clone() {
                                state.lock().conns.push(c);
                            }
                            let state = state.clone();
                            std::thread::spawn(move || {
                                if let Err(e) = serve(conn, &state) {
                                    progress!("stand-in agent: a connection ended: {e:#}");
                                }
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Ok(FakeAgent {
            addr,
            state,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// The size of the `members` reply body, in bytes.
    pub fn reply_len(&self) -> usize {
        self.state.lock().reply().map_or(0, <[u8]>::len)
    }

    /// Sets tag `key` on member `i`, logs it as Serf does
    /// (`[INFO] serf: EventMemberUpdate: NAME` to every monitor), then tells
    /// every member stream (`member-update`); the member's name.
    pub fn set_tag(&self, i: usize, key: &str, value: &str) -> Result<String> {
        let mut s = self.state.lock();
        let name = s.change_tag(i, key, value)?;
        let line = format!("{} [INFO] serf: EventMemberUpdate: {name}", log_date());
        publish(&mut s.monitors, &msgpack(&LogRecord { log: &line }));
        let record = msgpack(&MemberRecord {
            event: "member-update",
            members: vec![WireMember::of(&s.members[i])],
        });
        publish(&mut s.streams, &record);
        Ok(name)
    }

    /// Sets tag `key` on member `i` and tells no one: no log line, no
    /// stream record (a lost trigger); only a `members` read shows it.
    pub fn set_tag_quietly(&self, i: usize, key: &str, value: &str) -> Result<String> {
        self.state.lock().change_tag(i, key, value)
    }

    /// `members` requests (full reads) answered so far.
    pub fn full_reads(&self) -> u64 {
        self.state
            .lock()
            .commands
            .iter()
            .filter(|c| *c == "members")
            .count() as u64
    }

    /// Sends `line` to every `monitor` subscriber.
    pub fn log_line(&self, line: &str) {
        let mut s = self.state.lock();
        publish(&mut s.monitors, &msgpack(&LogRecord { log: line }));
    }

    pub fn members(&self) -> usize {
        self.state.lock().members.len()
    }

    /// `members` and `members-filtered` requests answered so far.
    pub fn reads(&self) -> u64 {
        self.state.lock().reads
    }

    /// The commands received so far, in order.
    pub fn commands(&self) -> Vec<String> {
        self.state.lock().commands.clone()
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.state.lock().conns.drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Field `key` of a msgpack map.
fn field<'v>(map: &'v rmpv::Value, key: &str) -> Option<&'v rmpv::Value> {
    map.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// Go's `log.LstdFlags` date of now (UTC), `YYYY/MM/DD HH:MM:SS`.
fn log_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}/{month:02}/{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// A `members-filtered` request's expressions, compiled as the agent
/// compiles them (`^EXPR$`); `None` for a field left empty (no filter).
struct Filter {
    status: Option<regex_automata::meta::Regex>,
    name: Option<regex_automata::meta::Regex>,
    tags: Vec<(String, regex_automata::meta::Regex)>,
}

impl Filter {
    /// `Err`: an expression the agent could not compile.
    fn of(body: Option<&rmpv::Value>) -> Result<Filter> {
        let compile = |expr: &str| {
            regex_automata::meta::Regex::new(&format!("^{expr}$"))
                .with_context(|| format!("members-filtered: bad expression {expr:?}"))
        };
        let text = |key: &str| {
            body.and_then(|b| field(b, key))
                .and_then(rmpv::Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let mut tags = Vec::new();
        if let Some(map) = body
            .and_then(|b| field(b, "Tags"))
            .and_then(rmpv::Value::as_map)
        {
            for (k, v) in map {
                let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else {
                    bail!("members-filtered: a tag filter that is not text");
                };
                tags.push((k.to_owned(), compile(v)?));
            }
        }
        Ok(Filter {
            status: text("Status").map(compile).transpose()?,
            name: text("Name").map(compile).transpose()?,
            tags,
        })
    }

    fn passes(&self, m: &FakeMember) -> bool {
        let ok = |re: &Option<regex_automata::meta::Regex>, have: &str| {
            re.as_ref().is_none_or(|re| re.is_match(have))
        };
        ok(&self.status, &m.status)
            && ok(&self.name, &m.name)
            && self
                .tags
                .iter()
                .all(|(k, re)| re.is_match(m.tags.get(k).map_or("", String::as_str)))
    }
}

/// One connection: requests in order, each answered in full under the
/// writer's lock so stream records never split a reply.
fn serve(conn: TcpStream, state: &Mutex<State>) -> Result<()> {
    let writer = Arc::new(Mutex::new(conn.try_clone()?));
    let mut reader = BufReader::new(conn);
    loop {
        let header = match rmpv::decode::read_value(&mut reader) {
            Ok(v) => v,
            Err(_) => return Ok(()), // closed
        };
        let command = field(&header, "Command")
            .and_then(|v| v.as_str().map(str::to_owned))
            .context("a request without Command")?;
        let seq = field(&header, "Seq")
            .and_then(rmpv::Value::as_u64)
            .context("a request without Seq")?;
        let body = if has_body(&command) {
            Some(rmpv::decode::read_value(&mut reader).context("a request body")?)
        } else {
            None
        };
        state.lock().commands.push(command.clone());
        let ok = msgpack(&Header { seq, error: "" });
        let mut out = ok.clone();
        match command.as_str() {
            "members" => {
                let mut s = state.lock();
                s.reads += 1;
                out.extend_from_slice(s.reply()?);
            }
            "members-filtered" => {
                // Serf drops the connection, without a reply, on a bad one.
                let filter = match Filter::of(body.as_ref()) {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = reader.get_ref().shutdown(Shutdown::Both);
                        return Err(e);
                    }
                };
                let mut s = state.lock();
                s.reads += 1;
                let members = s
                    .members
                    .iter()
                    .filter(|m| filter.passes(m))
                    .map(WireMember::of)
                    .collect();
                out.extend_from_slice(&msgpack(&MembersBody { members }));
            }
            "stats" => {
                let s = state.lock();
                let local = s.members.first().map_or("", |m| m.name.as_str());
                let stats = BTreeMap::from([
                    ("agent", BTreeMap::from([("name", local.to_owned())])),
                    (
                        "serf",
                        BTreeMap::from([
                            ("encrypted", "false".to_owned()),
                            ("members", s.members.len().to_string()),
                        ]),
                    ),
                    ("tags", BTreeMap::new()),
                ]);
                out.extend_from_slice(&msgpack(&stats));
            }
            "join" => out.extend_from_slice(&msgpack(&JoinBody { num: 0 })),
            "stream" | "monitor" => {
                let filter = body
                    .as_ref()
                    .and_then(|b| field(b, "Type"))
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let member_events = filter.contains("member-update") || filter == "*";
                if command == "monitor" || member_events {
                    // Registered under the writer's lock: no record can
                    // come before the acknowledgement.
                    let mut w = writer.lock();
                    w.write_all(&ok)?;
                    let mut s = state.lock();
                    let to = if command == "monitor" {
                        &mut s.monitors
                    } else {
                        &mut s.streams
                    };
                    to.push((writer.clone(), seq));
                    continue;
                }
            }
            "handshake" | "auth" | "event" | "tags" | "stop" | "respond" | "force-leave"
            | "leave" => {}
            _ => {
                writer.lock().write_all(&msgpack(&Header {
                    seq,
                    error: "Unsupported command",
                }))?;
                bail!("unsupported command {command}");
            }
        }
        writer.lock().write_all(&out)?;
    }
}
