//! Fuzzing by property: the parsers that take bytes from other machines or
//! from any local writer never panic, never allocate beyond a bound linear
//! in their input, and either decode what they were given or say why not.
//!
//! Targets: the msgpack RPC framing and reply/record decoding
//! (`serfnode::cluster::rpc::fuzz`), the write node's event lines
//! (`control::parse_line`), the user-event envelope (`events::unwrap`),
//! query file names (`query::Ask::from_file`), the port-map tag
//! (`tags::decode_ports`) and the frames a child sends its parent over the
//! replica socket (`serfnode::containers::replica::fuzz`).
//!
//! Each test first replays every file of its corpus, `fuzz/corpus/<target>/`,
//! then runs proptest strategies seeded from that corpus (bit flips,
//! truncation, splicing, msgpack/JSON tokens) plus generated well-formed
//! inputs whose decoding is known exactly. Cases per strategy:
//! `SERFNODE_FUZZ_CASES` (default 2000); see fuzz/README.md. Failures are
//! kept in `tests/proptest-regressions/fuzz/<target>.txt` and replayed first.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestError, TestRunner};
use rmpv::Value as Mp;
use serde_json::{json, Value};

use serfnode::cluster::rpc::fuzz::{decode_body, frame, Frame};
use serfnode::cluster::rpc::{KeyResponse, Member, MemberStatus, QueryRecord, StreamRecord};
use serfnode::cluster::tags::{decode_ports, encode_ports, PortMap};
use serfnode::containers::replica::{ToParent, WireEvent, MAX_CHILD_FRAME, MAX_HELLO};
use serfnode::names::is_event_name;
use serfnode::surface::events::{self, From as Origin};
use serfnode::surface::query::{Ask, AskError, DEFAULT_TIMEOUT, MAX_TIMEOUT, PORTS, WHERE};
use serfnode::surface::write_node::{parse_line, LineError, DEFAULT_EVENT_LIMIT};

// ---- allocation accounting ---------------------------------------------------

/// The system allocator, counting each thread's live bytes and their peak.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        note(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns the most bytes it had allocated at once on this
/// thread (its result included).
fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    let peak = PEAK.with(Cell::get) - base;
    (r, peak.max(0) as usize)
}

/// What decoding `n` bytes may allocate at most: a parsed tree costs a few
/// dozen bytes per input byte, and serde preallocates up to 1 MiB for a
/// sequence whose claimed length it cannot trust. A length prefix claiming
/// 4 GB must not get anywhere near it.
fn alloc_bound(n: usize) -> usize {
    256 * n + (4 << 20)
}

#[test]
fn allocation_accounting_sees_what_it_bounds() {
    // Reserved, never touched: costs nothing, and must still be seen.
    let (_, peak) = peak_during(|| Vec::<u8>::with_capacity(1 << 32));
    assert!(peak >= 1 << 32, "{peak}");
    assert!(peak_during(|| ()).1 == 0);
}

macro_rules! bounded {
    ($input:expr, $e:expr) => {{
        let input: &[u8] = $input;
        let (r, peak) = peak_during(|| $e);
        prop_assert!(
            peak <= alloc_bound(input.len()),
            "{} bytes of input allocated {} bytes",
            input.len(),
            peak
        );
        r
    }};
}

// ---- harness -------------------------------------------------------------------

fn cases() -> u32 {
    std::env::var("SERFNODE_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000)
}

macro_rules! regressions {
    ($target:literal) => {
        FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/proptest-regressions/fuzz/",
            $target,
            ".txt"
        ))
    };
}

fn runner(persistence: FileFailurePersistence) -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: Some(Box::new(persistence)),
        source_file: Some(file!()),
        // Shrinking a byte string found by mutation can take long; a
        // failure is reported (and kept) either way.
        max_shrink_iters: 4096,
        ..Config::default()
    })
}

/// Runs one property over one strategy; a failure panics with the
/// (shrunk) input.
fn run<S: Strategy>(
    persistence: FileFailurePersistence,
    what: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let mut runner = runner(persistence);
    match runner.run(&strategy, test) {
        Ok(()) => {}
        Err(TestError::Fail(why, input)) => panic!("{what}: {why}\ninput: {input:?}"),
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Every file of `fuzz/corpus/<target>/`, by name.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "fuzz", "corpus", target]
        .iter()
        .collect();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (name, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
}

/// Replays every corpus file through `check`; returns the files small
/// enough to seed mutations (mutating a 1 MiB line 2000 times buys little).
fn replay(target: &str, check: impl Fn(&[u8]) -> Result<(), TestCaseError>) -> Vec<Vec<u8>> {
    let files = corpus(target);
    for (name, bytes) in &files {
        if let Err(e) = check(bytes) {
            panic!("fuzz/corpus/{target}/{name}: {e}");
        }
    }
    files
        .into_iter()
        .map(|(_, b)| b)
        .filter(|b| b.len() <= 64 * 1024)
        .collect()
}

// ---- mutations -----------------------------------------------------------------

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Truncate(Index),
    Delete(Index, u8),
    Insert(Index, Vec<u8>),
    /// Inserts a piece of another seed.
    Splice(Index, Index, Index, u16),
    /// Repeats a piece in place.
    Repeat(Index, u8, u8),
    /// Inserts (or overwrites with) a token of the target's dictionary.
    Token(Index, Index, bool),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0..8u8).prop_map(|(a, b)| Mutation::FlipBit(a, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(a, b)| Mutation::SetByte(a, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), 1..32u8).prop_map(|(a, n)| Mutation::Delete(a, n)),
        1 => (any::<Index>(), vec(any::<u8>(), 1..8)).prop_map(|(a, b)| Mutation::Insert(a, b)),
        1 => (any::<Index>(), any::<Index>(), any::<Index>(), 1..512u16)
            .prop_map(|(a, s, f, n)| Mutation::Splice(a, s, f, n)),
        1 => (any::<Index>(), 1..16u8, 1..64u8).prop_map(|(a, n, k)| Mutation::Repeat(a, n, k)),
        3 => (any::<Index>(), any::<Index>(), any::<bool>())
            .prop_map(|(a, t, o)| Mutation::Token(a, t, o)),
    ]
}

fn mutate(seed: &[u8], muts: &[Mutation], seeds: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in muts {
        let at = |i: &Index, b: &Vec<u8>| i.index(b.len() + 1);
        match m {
            Mutation::FlipBit(i, bit) if !b.is_empty() => {
                let i = i.index(b.len());
                b[i] ^= 1 << bit;
            }
            Mutation::SetByte(i, v) if !b.is_empty() => {
                let i = i.index(b.len());
                b[i] = *v;
            }
            Mutation::Truncate(i) => b.truncate(at(i, &b)),
            Mutation::Delete(i, n) => {
                let i = at(i, &b);
                let end = (i + *n as usize).min(b.len());
                b.drain(i..end);
            }
            Mutation::Insert(i, bytes) => {
                let i = at(i, &b);
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::Splice(i, s, from, n) => {
                let other = &seeds[s.index(seeds.len())];
                let from = from.index(other.len() + 1);
                let end = (from + *n as usize).min(other.len());
                let i = at(i, &b);
                b.splice(i..i, other[from..end].iter().copied());
            }
            Mutation::Repeat(i, n, k) => {
                let i = at(i, &b);
                let end = (i + *n as usize).min(b.len());
                let piece = b[i..end].repeat(*k as usize);
                b.splice(i..i, piece);
            }
            Mutation::Token(i, t, overwrite) => {
                let token = dict[t.index(dict.len())];
                let i = at(i, &b);
                let end = if *overwrite {
                    (i + token.len()).min(b.len())
                } else {
                    i
                };
                b.splice(i..end, token.iter().copied());
            }
            _ => {}
        }
    }
    b
}

/// A seed of `seeds` with a few mutations.
fn mutated(seeds: Vec<Vec<u8>>, dict: &'static [&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
    (any::<Index>(), vec(mutation(), 0..6))
        .prop_map(move |(s, muts)| mutate(&seeds[s.index(seeds.len())], &muts, &seeds, dict))
}

/// A few prefix lengths of an `n`-byte input, all of them when short.
fn prefixes(n: usize) -> Vec<usize> {
    if n <= 64 {
        (0..n).collect()
    } else {
        let mut v: Vec<usize> = (0..32).map(|i| n * i / 32).collect();
        v.push(n - 1);
        v
    }
}

// ---- msgpack RPC ------------------------------------------------------------

const RPC_DICT: &[&[u8]] = &[
    b"\xdb\xff\xff\xff\xff", // str32 of 4 GB
    b"\xc6\xff\xff\xff\xff", // bin32 of 4 GB
    b"\xc9\xff\xff\xff\xff\x01",
    b"\xdd\xff\xff\xff\xff", // array32 of 4 G items
    b"\xdf\xff\xff\xff\xff", // map32 of 4 G pairs
    b"\xdc\xff\xff",
    b"\xde\xff\xff",
    b"\xc1",
    b"\xc0",
    b"\x80",
    b"\x90",
    b"\x91\x91\x91\x91\x91\x91\x91\x91",
    b"\x81\xa1k\x81\xa1k\x81\xa1k",
    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00",
    b"\xce\x00\x01\x11\x70", // 70000
    b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",
    b"\xc4\x03\x0a\x00\x00",
    b"\xc4\x04\x0a\x00\x00\x01",
    b"\xc4\x10\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\x0a\x01\x02\x03",
    b"\xa3\xff\xfe\xfd",
    b"\xa7Members",
    b"\xa4Name",
    b"\xa4Addr",
    b"\xa4Port",
    b"\xa4Tags",
    b"\xa6Status",
    b"\xa5Event",
    b"\xa4user",
    b"\xa5query",
    b"\xabmember-join",
    b"\xa7Payload",
    b"\xa4Type",
    b"\xa4done",
    b"\xa8response",
    b"\xa3Seq",
    b"\xa5Error",
    b"\xa4Keys",
    b"\xa5Coord",
    b"\xa3Vec",
];

/// The read loop's view of `buf`, front to back, and every decoder on each
/// body it frames.
fn check_rpc(buf: &[u8]) -> Result<(), TestCaseError> {
    let mut rest = buf;
    loop {
        let f = bounded!(rest, frame(rest));
        match f {
            Frame::Incomplete => {
                // Prefix-closed: nothing shorter is complete or invalid.
                for k in prefixes(rest.len()) {
                    prop_assert_eq!(frame(&rest[..k]), Frame::Incomplete, "prefix {}", k);
                }
                break;
            }
            Frame::Invalid => {
                // More bytes never make an invalid value valid.
                let mut more = rest.to_vec();
                more.extend_from_slice(b"\xc0\x00\xa1x");
                prop_assert_eq!(frame(&more), Frame::Invalid);
                break;
            }
            Frame::Header { len, .. } | Frame::Body { len, .. } => {
                prop_assert!(
                    len >= 1 && len <= rest.len(),
                    "frame of {} in {}",
                    len,
                    rest.len()
                );
                prop_assert_eq!(&frame(&rest[..len]), &f);
                for k in prefixes(len) {
                    prop_assert_eq!(frame(&rest[..k]), Frame::Incomplete, "prefix {}", k);
                }
                if let Frame::Body { query_done, .. } = f {
                    check_body(&rest[..len], query_done)?;
                }
                rest = &rest[len..];
                if rest.is_empty() {
                    break;
                }
            }
        }
    }
    // The client decodes only what framed (its nesting is capped there);
    // the decoders also hold up on a truncated value or several at once.
    if frame(buf) != Frame::Invalid {
        bounded!(buf, decode_body(buf));
    }
    Ok(())
}

fn check_body(body: &[u8], query_done: bool) -> Result<(), TestCaseError> {
    let d = bounded!(body, decode_body(body));
    // The read loop ends a query's subscription on `Type: done`; the
    // subscriber must then see `Done` or an undecodable record, never
    // something that makes it wait for more.
    if query_done {
        prop_assert!(
            matches!(d.query_record, Ok(Ok(QueryRecord::Done)) | Err(_)),
            "loop saw done, decoder {:?}",
            d.query_record
        );
    }
    if let Ok(members) = &d.members {
        prop_assert!(members.len() <= body.len());
    }
    if let Ok(Ok(StreamRecord::User { payload, .. } | StreamRecord::Query { payload, .. })) =
        &d.record
    {
        prop_assert!(payload.len() <= body.len());
    }
    Ok(())
}

#[test]
fn rpc_bytes() {
    let seeds = replay("rpc", check_rpc);
    run(
        regressions!("rpc"),
        "mutated frames",
        mutated(seeds, RPC_DICT),
        |b| check_rpc(&b),
    );
    run(
        regressions!("rpc"),
        "arbitrary bytes",
        vec(any::<u8>(), 0..256),
        |b| check_rpc(&b),
    );
}

/// Valid frames fed in arbitrary pieces, as the read loop gets them from
/// the socket, frame exactly as the whole buffer does.
#[test]
fn rpc_stream_in_pieces() {
    let frames: Vec<Vec<u8>> = corpus("rpc")
        .into_iter()
        .map(|(_, b)| b)
        .filter(|b| matches!(frame(b), Frame::Header { len, .. } | Frame::Body { len, .. } if len == b.len()))
        .collect();
    assert!(
        frames.len() >= 20,
        "{} complete frames in the corpus",
        frames.len()
    );
    let strategy = (vec(any::<Index>(), 1..8), vec(1..300usize, 1..64));
    run(
        regressions!("rpc_stream"),
        "stream in pieces",
        strategy,
        |(picks, cuts)| {
            let stream: Vec<u8> = picks
                .iter()
                .flat_map(|i| frames[i.index(frames.len())].clone())
                .collect();
            let want: Vec<usize> = picks
                .iter()
                .map(|i| frames[i.index(frames.len())].len())
                .collect();
            let mut got = Vec::new();
            let (mut buf, mut fed, mut cut) = (Vec::new(), 0, 0);
            while fed < stream.len() {
                let n = cuts[cut % cuts.len()].min(stream.len() - fed);
                cut += 1;
                buf.extend_from_slice(&stream[fed..fed + n]);
                fed += n;
                let mut start = 0;
                loop {
                    match frame(&buf[start..]) {
                        Frame::Header { len, .. } | Frame::Body { len, .. } => {
                            got.push(len);
                            start += len;
                        }
                        Frame::Incomplete => break,
                        Frame::Invalid => {
                            return Err(TestCaseError::fail("a valid stream framed invalid"))
                        }
                    }
                }
                buf.drain(..start);
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, want);
            Ok(())
        },
    );
}

// Well-formed bodies, generated with the values they must decode to.

fn mp_str(s: &str) -> Mp {
    Mp::from(s)
}

fn mp_map(entries: Vec<(&str, Mp)>) -> Mp {
    Mp::Map(entries.into_iter().map(|(k, v)| (mp_str(k), v)).collect())
}

fn encode(v: &Mp) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).expect("encodes into a Vec");
    out
}

/// Any msgpack value, shallow; for unknown keys and perturbed fields.
fn arb_mp() -> impl Strategy<Value = Mp> {
    let leaf = prop_oneof![
        Just(Mp::Nil),
        any::<bool>().prop_map(Mp::from),
        any::<u64>().prop_map(Mp::from),
        any::<i64>().prop_map(Mp::from),
        any::<f64>().prop_map(Mp::F64),
        any::<f32>().prop_map(Mp::F32),
        ".{0,12}".prop_map(|s| Mp::from(s.as_str())),
        vec(any::<u8>(), 0..20).prop_map(Mp::Binary),
        (any::<i8>(), vec(any::<u8>(), 0..4)).prop_map(|(t, b)| Mp::Ext(t, b)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Mp::Array),
            vec((inner.clone(), inner), 0..4).prop_map(Mp::Map),
        ]
    })
}

/// Keys the agent never sends, with any value: ignored.
fn unknown_keys() -> impl Strategy<Value = Vec<(String, Mp)>> {
    vec(("X[a-z]{0,6}", arb_mp()), 0..3)
}

/// Fields in any order, with unknown ones mixed in.
fn shuffled_map(fields: Vec<(&'static str, Mp)>) -> impl Strategy<Value = Mp> {
    unknown_keys().prop_flat_map(move |extra| {
        let mut all: Vec<(Mp, Mp)> = fields.iter().map(|(k, v)| (mp_str(k), v.clone())).collect();
        all.extend(extra.into_iter().map(|(k, v)| (mp_str(&k), v)));
        Just(all).prop_shuffle().prop_map(Mp::Map)
    })
}

/// A map field: an empty one may also be `nil` or absent, which read the same.
fn optional_map(
    entries: BTreeMap<String, Mp>,
    key: &'static str,
) -> BoxedStrategy<Vec<(&'static str, Mp)>> {
    let map = Mp::Map(
        entries
            .iter()
            .map(|(k, v)| (mp_str(k), v.clone()))
            .collect(),
    );
    if entries.is_empty() {
        prop_oneof![
            Just(vec![(key, map)]),
            Just(vec![(key, Mp::Nil)]),
            Just(vec![])
        ]
        .boxed()
    } else {
        Just(vec![(key, map)]).boxed()
    }
}

fn arb_member() -> impl Strategy<Value = (Mp, Member)> {
    let addr = prop_oneof![
        any::<[u8; 4]>().prop_map(|b| b.to_vec()),
        any::<[u8; 16]>().prop_map(|b| b.to_vec()),
        any::<[u8; 4]>().prop_map(|b| [&[0u8; 10][..], &[0xff, 0xff], &b].concat()),
    ];
    let status = prop_oneof![
        Just("alive".to_owned()),
        Just("leaving".to_owned()),
        Just("left".to_owned()),
        Just("failed".to_owned()),
        Just("none".to_owned()),
        ".{0,8}",
    ];
    (
        ".{0,16}",
        addr,
        any::<u16>(),
        btree_map(".{0,8}", ".{0,8}", 0..4),
        status,
        any::<[u8; 6]>(),
    )
        .prop_flat_map(|(name, addr, port, tags, status, v)| {
            let tag_values = tags.iter().map(|(k, v)| (k.clone(), mp_str(v))).collect();
            let expected = Member {
                name: name.clone(),
                addr: match addr.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(&addr[..]).unwrap()),
                    _ => {
                        let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&addr[..]).unwrap());
                        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
                    }
                },
                port,
                tags,
                status: MemberStatus::from(status.clone()),
                protocol: [v[0], v[1], v[2]],
                delegate: [v[3], v[4], v[5]],
            };
            let fields = vec![
                ("Name", mp_str(&name)),
                ("Addr", Mp::Binary(addr)),
                ("Port", Mp::from(port)),
                ("Status", mp_str(&status)),
                ("ProtocolMin", Mp::from(v[0])),
                ("ProtocolMax", Mp::from(v[1])),
                ("ProtocolCur", Mp::from(v[2])),
                ("DelegateMin", Mp::from(v[3])),
                ("DelegateMax", Mp::from(v[4])),
                ("DelegateCur", Mp::from(v[5])),
            ];
            (
                optional_map(tag_values, "Tags"),
                Just(fields),
                Just(expected),
            )
        })
        .prop_flat_map(|(tags, mut fields, expected)| {
            fields.extend(tags);
            (shuffled_map(fields), Just(expected))
        })
}

/// A body of one kind and what the client must make of it.
#[derive(Debug, Clone)]
enum Expect {
    Members(Vec<Member>),
    Record(StreamRecord),
    Query(QueryRecord),
    Keys(KeyResponse),
    Header(u64, String),
}

fn payload() -> impl Strategy<Value = (Mp, Vec<u8>)> {
    prop_oneof![
        vec(any::<u8>(), 0..40).prop_map(|b| (Mp::Binary(b.clone()), b)),
        Just((Mp::Nil, Vec::new())),
    ]
}

fn arb_body() -> impl Strategy<Value = (Mp, Expect)> {
    let members = || {
        vec(arb_member(), 0..4).prop_map(|ms| {
            let (wire, want): (Vec<Mp>, Vec<Member>) = ms.into_iter().unzip();
            (wire, want)
        })
    };
    let members_body = members().prop_flat_map(|(wire, want)| {
        let field = if want.is_empty() {
            prop_oneof![
                Just(vec![("Members", Mp::Array(vec![]))]),
                Just(vec![("Members", Mp::Nil)]),
                Just(vec![])
            ]
            .boxed()
        } else {
            Just(vec![("Members", Mp::Array(wire))]).boxed()
        };
        (
            field.prop_flat_map(shuffled_map),
            Just(Expect::Members(want)),
        )
    });
    let user = (any::<u64>(), ".{0,12}", payload(), any::<bool>()).prop_flat_map(
        |(ltime, name, (p, payload), coalesce)| {
            let want = StreamRecord::User {
                ltime,
                name: name.clone(),
                payload,
                coalesce,
            };
            let fields = vec![
                ("Event", mp_str("user")),
                ("LTime", Mp::from(ltime)),
                ("Name", mp_str(&name)),
                ("Payload", p),
                ("Coalesce", Mp::from(coalesce)),
            ];
            (shuffled_map(fields), Just(Expect::Record(want)))
        },
    );
    let query = (any::<u64>(), any::<u64>(), ".{0,12}", payload()).prop_flat_map(
        |(id, ltime, name, (p, payload))| {
            let want = StreamRecord::Query {
                id,
                ltime,
                name: name.clone(),
                payload,
            };
            let fields = vec![
                ("Event", mp_str("query")),
                ("ID", Mp::from(id)),
                ("LTime", Mp::from(ltime)),
                ("Name", mp_str(&name)),
                ("Payload", p),
            ];
            (shuffled_map(fields), Just(Expect::Record(want)))
        },
    );
    let member_event = (
        prop::sample::select(vec![
            ("member-join", serfnode::cluster::rpc::MemberEvent::Join),
            ("member-leave", serfnode::cluster::rpc::MemberEvent::Leave),
            ("member-failed", serfnode::cluster::rpc::MemberEvent::Failed),
            ("member-update", serfnode::cluster::rpc::MemberEvent::Update),
            ("member-reap", serfnode::cluster::rpc::MemberEvent::Reap),
        ]),
        members(),
    )
        .prop_flat_map(|((name, event), (wire, want))| {
            let want = StreamRecord::Member {
                event,
                members: want,
            };
            (
                shuffled_map(vec![("Event", mp_str(name)), ("Members", Mp::Array(wire))]),
                Just(Expect::Record(want)),
            )
        });
    let query_record =
        (0..3u8, ".{0,12}", payload()).prop_flat_map(|(kind, from, (p, payload))| {
            let (ty, want) = match kind {
                0 => ("ack", QueryRecord::Ack { from: from.clone() }),
                1 => (
                    "response",
                    QueryRecord::Response {
                        from: from.clone(),
                        payload,
                    },
                ),
                _ => ("done", QueryRecord::Done),
            };
            let fields = vec![
                ("Type", mp_str(ty)),
                ("From", mp_str(&from)),
                ("Payload", p),
            ];
            (shuffled_map(fields), Just(Expect::Query(want)))
        });
    let keys = (
        btree_map(".{0,8}", ".{0,8}", 0..3),
        btree_map(".{0,8}", any::<u32>(), 0..3),
        any::<[u32; 3]>(),
    )
        .prop_flat_map(|(messages, keys, n)| {
            let want = KeyResponse {
                messages: messages.clone(),
                keys: keys.clone(),
                num_nodes: n[0],
                num_err: n[1],
                num_resp: n[2],
            };
            let m = messages.into_iter().map(|(k, v)| (k, mp_str(&v))).collect();
            let k = keys.into_iter().map(|(k, v)| (k, Mp::from(v))).collect();
            (
                optional_map(m, "Messages"),
                optional_map(k, "Keys"),
                Just(n),
                Just(want),
            )
        })
        .prop_flat_map(|(m, k, n, want)| {
            let mut fields = vec![
                ("NumNodes", Mp::from(n[0])),
                ("NumErr", Mp::from(n[1])),
                ("NumResp", Mp::from(n[2])),
            ];
            fields.extend(m);
            fields.extend(k);
            (shuffled_map(fields), Just(Expect::Keys(want)))
        });
    let header = (any::<u64>(), ".{0,12}", any::<bool>()).prop_map(|(seq, error, flip)| {
        let mut fields = vec![("Seq", Mp::from(seq)), ("Error", mp_str(&error))];
        if flip {
            fields.reverse();
        }
        (mp_map(fields), Expect::Header(seq, error))
    });
    prop_oneof![
        members_body,
        user,
        query,
        member_event,
        query_record,
        keys,
        header
    ]
}

fn check_structured((value, expect): &(Mp, Expect)) -> Result<(), TestCaseError> {
    let bytes = encode(value);
    let f = frame(&bytes);
    if let Expect::Header(seq, error) = expect {
        prop_assert_eq!(
            f,
            Frame::Header {
                len: bytes.len(),
                seq: *seq,
                error: error.clone()
            }
        );
        return check_rpc(&bytes);
    }
    let Frame::Body { len, query_done } = f else {
        return Err(TestCaseError::fail(format!("a body framed as {f:?}")));
    };
    prop_assert_eq!(len, bytes.len());
    let d = decode_body(&bytes);
    match expect {
        Expect::Members(want) => prop_assert_eq!(d.members.as_ref(), Ok(want)),
        Expect::Record(want) => prop_assert_eq!(d.record.as_ref(), Ok(&Ok(want.clone()))),
        Expect::Query(want) => {
            prop_assert_eq!(d.query_record.as_ref(), Ok(&Ok(want.clone())));
            prop_assert_eq!(query_done, *want == QueryRecord::Done);
        }
        Expect::Keys(want) => prop_assert_eq!(d.keys.as_ref(), Ok(want)),
        Expect::Header(..) => unreachable!(),
    }
    check_rpc(&bytes)
}

#[test]
fn rpc_well_formed_bodies() {
    run(
        regressions!("rpc_bodies"),
        "well-formed bodies",
        arb_body(),
        |b| check_structured(&b),
    );
    // The same bodies, then damaged: anything goes but a panic.
    let damaged = (arb_body(), vec(mutation(), 1..4)).prop_map(|((v, _), muts)| {
        let bytes = encode(&v);
        mutate(&bytes, &muts, std::slice::from_ref(&bytes), RPC_DICT)
    });
    run(regressions!("rpc_bodies"), "damaged bodies", damaged, |b| {
        check_rpc(&b)
    });
}

// ---- event lines ---------------------------------------------------------------

const LINE_DICT: &[&[u8]] = &[
    b"[",
    b"]",
    b"{",
    b"}",
    b"\"",
    b",",
    b":",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"\\ud83d\\ude00",
    b"null",
    b"1e400",
    b"-0",
    b"18446744073709551616",
    b"[[[[[[[[[[[[[[[[",
    b"]]]]]]]]]]]]]]]]",
    b"\"a\"",
    b"\"a\",",
    b"\xff",
    b"\xc3",
    b"\xe2\x82",
    b".",
    b"/",
    b"\n",
    b" ",
    b"\"serfnode\"",
];

/// Limits worth trying: the agent's, the enveloped one, none, and tiny.
fn limit() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(DEFAULT_EVENT_LIMIT),
        Just(472),
        0..600usize,
        Just(usize::MAX)
    ]
}

fn check_line(line: &[u8], limit: usize) -> Result<(), TestCaseError> {
    let result = bounded!(line, parse_line(line, limit));
    let parsed = serde_json::from_slice::<Value>(line);
    let shape = match &parsed {
        Ok(Value::Array(items)) if items.len() == 2 => match &items[0] {
            Value::String(name) => Some((name.clone(), items[1].clone())),
            _ => None,
        },
        _ => None,
    };
    match result {
        Ok(event) => {
            let Some((name, payload)) = shape else {
                return Err(TestCaseError::fail(
                    "accepted a line that is not [string, value]",
                ));
            };
            prop_assert_eq!(&event.name, &name);
            prop_assert!(is_event_name(&event.name));
            prop_assert!(event.name.len() + event.payload.len() <= limit);
            // The payload is the line's value, as compact JSON.
            prop_assert_eq!(&event.payload, &serde_json::to_vec(&payload).unwrap());
            // Read back, it is the line's value (exactly with serde_json's
            // float_roundtrip feature, which we build with; a few ULP off
            // without it: see fuzz/README.md).
            let again: Value = serde_json::from_slice(&event.payload).expect("payload is JSON");
            prop_assert!(
                same_json(&again, &payload, 4),
                "{} became {}",
                payload,
                again
            );
            prop_assert_eq!(event.check(limit), Ok(()));
            // More room never refuses it.
            prop_assert!(parse_line(line, limit.saturating_mul(2)).is_ok());
        }
        Err(e) => {
            let errno = e.errno();
            prop_assert!(
                errno == libc::EINVAL || errno == libc::EMSGSIZE,
                "errno {}",
                errno
            );
            match &e {
                LineError::NotJson(_) => prop_assert!(parsed.is_err(), "{:?}", parsed),
                LineError::Shape => prop_assert!(parsed.is_ok() && shape.is_none()),
                LineError::Name(n) => {
                    let name = shape.map(|s| s.0);
                    prop_assert_eq!(name.as_ref(), Some(n));
                    prop_assert!(!is_event_name(n));
                }
                LineError::TooBig {
                    name,
                    size,
                    limit: l,
                } => {
                    let Some((n, payload)) = shape else {
                        return Err(TestCaseError::fail("too big but not [string, value]"));
                    };
                    prop_assert_eq!(name, &n);
                    prop_assert!(is_event_name(name));
                    prop_assert_eq!(*l, limit);
                    prop_assert_eq!(*size, n.len() + serde_json::to_vec(&payload).unwrap().len());
                    prop_assert!(*size > limit);
                    prop_assert_eq!(errno, libc::EMSGSIZE);
                    prop_assert!(parse_line(line, *size).is_ok());
                }
            }
            if !matches!(e, LineError::TooBig { .. }) {
                prop_assert_eq!(errno, libc::EINVAL);
            }
        }
    }
    Ok(())
}

/// Any JSON value, with strings that need escaping and numbers of every kind.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // NaN and infinities become null
        prop_oneof![
            Just(0.1),
            Just(1e22),
            Just(5e-324),
            Just(-0.0),
            Just(1.7976931348623157e308)
        ]
        .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        "[\\x00-\\x1f\"\\\\]{0,4}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            btree_map(".{0,6}", inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Nests `v` `depth` times in arrays or objects.
fn nest(v: Value, depth: usize, object: bool) -> Value {
    (0..depth).fold(v, |v, _| {
        if object {
            json!({ "a": v })
        } else {
            json!([v])
        }
    })
}

fn event_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z0-9_:@+-][A-Za-z0-9._:@+-]{0,20}",
        1 => "[A-Za-z0-9._:@+-]{120,130}",
        1 => ".{0,10}",
        1 => "\\.[a-z]{0,4}",
    ]
}

#[test]
fn event_lines() {
    let seeds = replay("event_line", |b| check_line(b, DEFAULT_EVENT_LIMIT));
    // The corpus again, under every kind of limit.
    let small = seeds.clone();
    run(
        regressions!("event_line"),
        "corpus under limits",
        (any::<Index>(), limit()),
        |(i, l)| check_line(&small[i.index(small.len())], l),
    );
    run(
        regressions!("event_line"),
        "mutated lines",
        (mutated(seeds, LINE_DICT), limit()),
        |(b, l)| check_line(&b, l),
    );
    // Well-formed lines: accepted iff the name is valid and it fits.
    let lines = (
        event_name(),
        prop_oneof![
            4 => arb_json(),
            1 => (arb_json(), 100..140usize, any::<bool>()).prop_map(|(v, d, o)| nest(v, d, o)),
        ],
        any::<bool>(),
        limit(),
    );
    run(
        regressions!("event_line"),
        "well-formed lines",
        lines,
        |(name, payload, pretty, limit)| {
            let item = json!([name, payload]);
            let line = if pretty {
                serde_json::to_vec_pretty(&item).unwrap()
            } else {
                serde_json::to_vec(&item).unwrap()
            };
            check_line(&line, limit)?;
            // serde_json reads at most 127 levels: the array and 126 of payload.
            let depth = depth_of(&payload);
            // The size of the payload as read (a float may read a few ULP off).
            let read = match serde_json::from_slice::<Value>(&line) {
                Ok(Value::Array(mut items)) => items.pop().unwrap(),
                _ => payload.clone(),
            };
            let size = name.len() + serde_json::to_vec(&read).unwrap().len();
            match parse_line(&line, limit) {
                Ok(e) => {
                    prop_assert!(is_event_name(&name) && size <= limit && depth < 127);
                    // Read twice (the line, then the payload): a few ULP off each.
                    let got = serde_json::from_slice::<Value>(&e.payload).unwrap();
                    prop_assert!(same_json(&got, &payload, 8), "{} became {}", payload, got);
                }
                Err(LineError::NotJson(_)) => prop_assert!(depth >= 127, "depth {}", depth),
                Err(LineError::Name(_)) => prop_assert!(!is_event_name(&name)),
                Err(LineError::TooBig { .. }) => prop_assert!(size > limit),
                Err(LineError::Shape) => return Err(TestCaseError::fail("a [string, value] line")),
            }
            Ok(())
        },
    );
}

/// Equal, but for floats at most `ulps` apart.
fn same_json(a: &Value, b: &Value, ulps: u64) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() && y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x.to_bits().abs_diff(y.to_bits()) <= ulps
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y, ulps))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, x), (ky, y))| kx == ky && same_json(x, y, ulps))
        }
        _ => a == b,
    }
}

fn depth_of(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth_of).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

// ---- user-event envelopes -------------------------------------------------------

const ENVELOPE_DICT: &[&[u8]] = &[
    b"{\"serfnode\":{\"node\":\"a\"},\"payload\":",
    b"{\"serfnode\":{\"node\":\"a\",\"child\":\"c\"},\"payload\":",
    b"\"child\":null",
    b"\"payload\":",
    b"\"serfnode\":",
    b"\"node\":",
    b"}",
    b"]",
    b"[",
    b"null",
    b",",
    b"\xff",
    b"[[[[[[[[[[[[[[[[",
];

fn check_unwrap(payload: &[u8]) -> Result<(), TestCaseError> {
    let (value, from) = bounded!(payload, events::unwrap(payload));
    let parsed = serde_json::from_slice::<Value>(payload);
    match (&from, &parsed) {
        (Some(_), Ok(Value::Object(env))) => {
            prop_assert_eq!(env.get("payload"), Some(&value));
        }
        // serde_json skips an unknown field of `serfnode` without checking
        // its strings are UTF-8: the one way an envelope may not be JSON.
        (Some(_), Err(_)) if std::str::from_utf8(payload).is_err() => {}
        (Some(_), _) => return Err(TestCaseError::fail("an envelope that is not a JSON object")),
        (None, Ok(v)) => prop_assert_eq!(&value, v),
        (None, Err(_)) if payload.is_empty() => prop_assert_eq!(&value, &Value::Null),
        (None, Err(_)) => {
            prop_assert_eq!(
                value,
                Value::String(String::from_utf8_lossy(payload).into_owned())
            )
        }
    }
    // Whatever `wrap` accepts, `unwrap` gives back with its origin.
    for origin in [
        Origin {
            node: "alpha".into(),
            child: None,
        },
        Origin {
            node: "n\"\\\u{0}".into(),
            child: Some(String::new()),
        },
    ] {
        check_wrap(&origin, payload)?;
    }
    Ok(())
}

fn check_wrap(origin: &Origin, payload: &[u8]) -> Result<(), TestCaseError> {
    let Ok(wire) = bounded!(payload, events::wrap(origin, payload)) else {
        // Refused: not JSON, or too deep to read back inside the envelope.
        if let Ok(v) = serde_json::from_slice::<Value>(payload) {
            prop_assert!(depth_of(&v) >= 127, "refused at depth {}", depth_of(&v));
        }
        return Ok(());
    };
    let Ok(want) = serde_json::from_slice::<Value>(payload) else {
        return Err(TestCaseError::fail(
            "wrap took a payload that does not parse",
        ));
    };
    prop_assert_eq!(events::unwrap(&wire), (want, Some(origin.clone())));
    Ok(())
}

#[test]
fn envelopes() {
    let seeds = replay("envelope", check_unwrap);
    run(
        regressions!("envelope"),
        "mutated envelopes",
        mutated(seeds, ENVELOPE_DICT),
        |b| check_unwrap(&b),
    );
    let origin = (".{0,12}", proptest::option::of(".{0,12}"))
        .prop_map(|(node, child)| Origin { node, child });
    let payloads = prop_oneof![
        4 => arb_json(),
        1 => (arb_json(), 100..140usize, any::<bool>()).prop_map(|(v, d, o)| nest(v, d, o)),
    ];
    run(
        regressions!("envelope"),
        "wrap then unwrap",
        (origin, payloads, any::<bool>()),
        |(origin, payload, pretty)| {
            let bytes = if pretty {
                serde_json::to_vec_pretty(&payload).unwrap()
            } else {
                serde_json::to_vec(&payload).unwrap()
            };
            check_wrap(&origin, &bytes)
        },
    );
}

// ---- query files ------------------------------------------------------------------

const QUERY_DICT: &[&[u8]] = &[
    b"%",
    b"%2F",
    b"%3B",
    b"%25",
    b"%00",
    b"%e2",
    b"%+1",
    b";",
    b";role=",
    b";node=",
    b";timeout=",
    b"1e300",
    b"1e-10",
    b"0.5",
    b"5",
    b"NaN",
    b"-1",
    b",",
    b"=",
    b"/",
    b"where/",
    b"ports/",
    b"\xff",
];

/// A corpus entry is `NAME/SEGMENT`, as under `query/`.
fn check_query_file(input: &[u8]) -> Result<(), TestCaseError> {
    let s = String::from_utf8_lossy(input);
    let (name, segment) = s.split_once('/').unwrap_or((&s, ""));
    let result = bounded!(input, Ask::from_file(name, segment));
    match result {
        Ok(ask) => {
            prop_assert!(is_event_name(&ask.name));
            prop_assert_eq!(&ask.name, name);
            prop_assert!(
                !ask.timeout.is_zero() && ask.timeout <= MAX_TIMEOUT,
                "timeout {:?}",
                ask.timeout
            );
            if name == WHERE || name == PORTS {
                // The role asked about, or every member.
                match &ask.role {
                    Some(role) => prop_assert_eq!(&ask.payload, &json!({ "role": role })),
                    None => prop_assert_eq!(&ask.payload, &Value::Null),
                }
            }
            // The options survive `to_segment` (the argument is kept as
            // written, escapes and all).
            let arg = segment.split(';').next().unwrap_or_default();
            let again = format!("{arg}{}", ask.to_segment(""));
            prop_assert_eq!(Ask::from_file(name, &again), Ok(ask), "segment {:?}", again);
        }
        Err(AskError::Name(n)) => prop_assert!(!is_event_name(&n)),
        Err(AskError::Option(_) | AskError::Escape(_)) => {}
        Err(AskError::Role { name, arg, role }) => {
            prop_assert!(name == WHERE || name == PORTS);
            prop_assert!(!arg.is_empty() && arg != role);
        }
    }
    Ok(())
}

#[test]
fn query_files() {
    let seeds = replay("query_file", check_query_file);
    run(
        regressions!("query_file"),
        "mutated query files",
        mutated(seeds, QUERY_DICT),
        |b| check_query_file(&b),
    );
    // Any ask `to_segment` writes is read back as the same ask. Node names
    // are joined with ',', so one holding a ',' cannot be told apart.
    let asks = (
        prop_oneof![4 => event_name(), 1 => Just(WHERE.to_owned()), 1 => Just(PORTS.to_owned())],
        prop_oneof![
            ".{0,16}",
            "[%;/\\x00,=]{0,6}",
            Just("{\"a\":[1,2]}".to_owned())
        ],
        proptest::option::of(".{0,12}"),
        vec("[^,]{0,8}", 0..3),
        prop_oneof![
            Just(DEFAULT_TIMEOUT),
            (1..=5_000_000_000u64).prop_map(Duration::from_nanos)
        ],
    );
    run(
        regressions!("query_file"),
        "to_segment then from_file",
        asks,
        |(name, arg, role, nodes, timeout)| {
            let ask = Ask {
                name: name.clone(),
                payload: Value::Null,
                role: role.clone(),
                nodes: nodes.clone(),
                timeout,
            };
            let segment = ask.to_segment(&arg);
            let got = Ask::from_file(&name, &segment);
            if !is_event_name(&name) {
                prop_assert_eq!(got, Err(AskError::Name(name)));
                return Ok(());
            }
            let builtin = name == WHERE || name == PORTS;
            // For where/ports the role is the argument, or the option when
            // the argument is empty; the two must agree.
            let role = match role {
                // An empty `;role=` is none.
                Some(role) if builtin && role.is_empty() => (!arg.is_empty()).then(|| arg.clone()),
                Some(role) if builtin && !arg.is_empty() && role != arg => {
                    let want = AskError::Role { name, arg, role };
                    prop_assert_eq!(got, Err(want));
                    return Ok(());
                }
                _ if builtin && !arg.is_empty() => Some(arg.clone()),
                role => role,
            };
            let want = Ask {
                payload: match (&role, builtin) {
                    (Some(role), true) => json!({ "role": role }),
                    (None, true) => Value::Null,
                    (_, false) => events::plain(arg.as_bytes()),
                },
                role,
                ..ask
            };
            prop_assert_eq!(got.as_ref(), Ok(&want), "segment {:?}", segment);
            check_query_file(format!("{name}/{segment}").as_bytes())
        },
    );
}

// ---- port maps ----------------------------------------------------------------------

const PORTS_DICT: &[&[u8]] = &[b"|", b"t", b"u", b",", b"80", b"/tcp", b"\xc3\xbc", b"8080"];

fn check_ports(input: &[u8]) -> Result<(), TestCaseError> {
    let s = String::from_utf8_lossy(input);
    let map = bounded!(input, decode_ports(&s));
    for (key, externals) in &map {
        let (port, proto) = key.split_once('/').expect("port/proto");
        prop_assert!(
            !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()),
            "{}",
            key
        );
        prop_assert!(proto == "tcp" || proto == "udp", "{}", key);
        for e in externals {
            prop_assert!(!e.is_empty() && !e.contains([',', '|']), "{:?}", e);
        }
    }
    // Decoding normalizes: what it returns encodes and decodes to itself.
    prop_assert_eq!(decode_ports(&encode_ports(&map)), map);
    Ok(())
}

#[test]
fn port_maps() {
    let seeds = replay("ports", check_ports);
    run(
        regressions!("ports"),
        "mutated port tags",
        mutated(seeds, PORTS_DICT),
        |b| check_ports(&b),
    );
    run(regressions!("ports"), "any string", ".{0,64}", |s| {
        check_ports(s.as_bytes())
    });
    let maps = btree_map(
        ("[0-9]{1,5}", prop_oneof![Just("tcp"), Just("udp")]).prop_map(|(p, t)| format!("{p}/{t}")),
        vec("[0-9]{1,5}", 0..4),
        0..8,
    );
    run(
        regressions!("ports"),
        "encode then decode",
        maps,
        |m: PortMap| {
            prop_assert_eq!(decode_ports(&encode_ports(&m)), m.clone());
            check_ports(encode_ports(&m).as_bytes())
        },
    );
}

// ---- replica frames ---------------------------------------------------------------

const FRAME_DICT: &[&[u8]] = &[
    b"\n",
    b"\r\n",
    b"{\"type\":\"hello\",\"child\":\"web\"}\n",
    b"{\"type\":\"events\",",
    b"{\"type\":\"query\",",
    b"{\"type\":\"view\",",
    b"\"id\":",
    b"\"pid\":",
    b"\"events\":[",
    b"\"ask\":{",
    b"\"token\":",
    b"\"payload\":",
    b"\"name\":",
    b"\"timeout\":{\"secs\":1,\"nanos\":0}",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b":",
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"\xff",
    b"18446744073709551616",
    b"-1",
    b"null",
];

/// What the parent reads from a connection sending `input` (cut at
/// `cuts`): the same whatever the cuts; a hello first, then requests, an
/// error only last and nothing after it; no line over its bound taken; and
/// what is taken reads back the same once written again.
fn check_frames(input: &[u8], cuts: &[usize]) -> Result<(), TestCaseError> {
    let whole = bounded!(
        input,
        serfnode::containers::replica::fuzz::server_reads(&[input])
    );
    let mut pieces = Vec::new();
    let (mut at, mut i) = (0, 0);
    while at < input.len() && !cuts.is_empty() {
        let n = cuts[i % cuts.len()].clamp(1, input.len() - at);
        pieces.push(&input[at..at + n]);
        at += n;
        i += 1;
    }
    if at < input.len() {
        pieces.push(&input[at..]);
    }
    let cut = serfnode::containers::replica::fuzz::server_reads(&pieces);
    prop_assert_eq!(&whole, &cut, "read whole vs in {} pieces", pieces.len());
    prop_assert!(!whole.is_empty());
    let lines: Vec<&[u8]> = input.split_inclusive(|&b| b == b'\n').collect();
    for (i, got) in whole.iter().enumerate() {
        match got {
            Ok(msg) => {
                let line = lines[i];
                let bound = if i == 0 { MAX_HELLO } else { MAX_CHILD_FRAME };
                prop_assert!(
                    line.len() <= bound,
                    "line {i} of {} bytes taken",
                    line.len()
                );
                prop_assert_eq!(
                    i == 0,
                    matches!(msg, ToParent::Hello { .. }),
                    "hello only first: {:?}",
                    msg
                );
            }
            Err(_) => prop_assert_eq!(i, whole.len() - 1, "an error is the last thing read"),
        }
    }
    let taken: Vec<&ToParent> = whole.iter().filter_map(|r| r.as_ref().ok()).collect();
    let again: Vec<u8> = taken.iter().flat_map(|m| frame_line(m)).collect();
    let reread = serfnode::containers::replica::fuzz::server_reads(&[&again]);
    let reread: Vec<&ToParent> = reread.iter().filter_map(|r| r.as_ref().ok()).collect();
    prop_assert_eq!(taken, reread);
    Ok(())
}

fn frame_line(msg: &ToParent) -> Vec<u8> {
    let mut line = serde_json::to_vec(msg).unwrap();
    line.push(b'\n');
    line
}

fn arb_request() -> impl Strategy<Value = ToParent> {
    let event = (event_name(), arb_json()).prop_map(|(name, payload)| WireEvent {
        name,
        payload: payload.to_string(),
    });
    let ask = (
        event_name(),
        arb_json(),
        proptest::option::of(".{0,8}"),
        vec(".{0,8}", 0..3),
        1..5000u64,
    )
        .prop_map(|(name, payload, role, nodes, ms)| Ask {
            name,
            payload,
            role,
            nodes,
            timeout: Duration::from_millis(ms),
        });
    prop_oneof![
        (any::<u64>(), any::<u32>(), vec(event, 0..6))
            .prop_map(|(id, pid, events)| ToParent::Events { id, pid, events }),
        (any::<u64>(), any::<u32>(), ask).prop_map(|(id, pid, ask)| ToParent::Query {
            id,
            pid,
            ask
        }),
    ]
}

#[test]
fn replica_frames() {
    let seeds = replay("replica_frames", |b| check_frames(b, &[]));
    let cuts = vec(1..600usize, 0..8);
    run(
        regressions!("replica_frames"),
        "mutated frames, in pieces",
        (mutated(seeds, FRAME_DICT), cuts.clone()),
        |(b, cuts)| check_frames(&b, &cuts),
    );
    let hello = (".{0,24}", proptest::option::of("[0-9a-f]{32}"))
        .prop_map(|(child, token)| ToParent::Hello { child, token });
    run(
        regressions!("replica_frames"),
        "well-formed frames read back exactly",
        (hello, vec(arb_request(), 0..6), cuts),
        |(hello, requests, cuts)| {
            let input: Vec<u8> = std::iter::once(&hello)
                .chain(&requests)
                .flat_map(frame_line)
                .collect();
            check_frames(&input, &cuts)?;
            let got = serfnode::containers::replica::fuzz::server_reads(&[&input]);
            let want: Vec<Result<ToParent, String>> =
                std::iter::once(hello).chain(requests).map(Ok).collect();
            prop_assert_eq!(got, want);
            Ok(())
        },
    );
    // The bounds, exactly: a hello of MAX_HELLO bytes is taken, one byte
    // more is not; a request of MAX_CHILD_FRAME bytes is taken, one more
    // is not.
    let hello_of = |len: usize| {
        let head = r#"{"type":"hello","child":"x"}"#;
        format!("{head}{}\n", " ".repeat(len - head.len() - 1)).into_bytes()
    };
    let reads = |b: &[u8]| serfnode::containers::replica::fuzz::server_reads(&[b]);
    assert!(reads(&hello_of(MAX_HELLO))[0].is_ok());
    assert!(reads(&hello_of(MAX_HELLO + 1))[0].is_err());
    let request_of = |len: usize| {
        let head = r#"{"type":"events","id":1,"pid":1,"events":[]}"#;
        format!("{head}{}\n", " ".repeat(len - head.len() - 1)).into_bytes()
    };
    let mut at_bound = hello_of(40);
    at_bound.extend(request_of(MAX_CHILD_FRAME));
    assert!(reads(&at_bound).iter().all(Result::is_ok));
    let mut over = hello_of(40);
    over.extend(request_of(MAX_CHILD_FRAME + 1));
    let got = reads(&over);
    assert!(
        got[1].as_ref().is_err_and(|e| e.contains("over")),
        "{:?}",
        got[1]
    );
}
