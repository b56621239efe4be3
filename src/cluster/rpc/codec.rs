//! Framing of the agent's RPC byte stream.
//!
//! The stream has no length prefix: it is back-to-back msgpack values. A
//! request is a header `{Command, Seq}` and maybe a body; a reply is a header
//! `{Seq, Error}` and maybe a body, and only the sender of the request knows
//! which. This module finds where one value ends, tells headers from bodies
//! by shape, and encodes requests.

use rmpv::ValueRef;
use serde::Serialize;

use super::proto::RequestHeader;

/// A reply or record header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub seq: u64,
    /// Empty on success.
    pub error: String,
}

/// Nesting allowed in one value. The agent's deepest (members → member →
/// tags) is 4; rmpv's own limit (1024) overflows a thread's stack first.
pub(crate) const MAX_DEPTH: usize = 32;

/// Why a value cannot be framed; the connection is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("byte 0xc1 (never used by msgpack) at offset {0}")]
    Reserved(usize),
    #[error("values nested deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// Finds where the first msgpack value of a buffer ends without building
/// it, resuming where the last call stopped.
///
/// The agent's `members` reply is one value of ~280 bytes per member (2.8
/// MB for 10,000) that arrives over many socket reads. Parsing the buffer
/// from its start after every read, as a value tree, made a large reply cost
/// O(reads × size) and a tree's worth of allocations each time; this looks
/// at each byte once and allocates only its stack of open containers.
///
/// Invariant: between calls the buffer only grows at its end, until `scan`
/// returns a length; the scanner is then ready for the next value, which
/// starts at offset 0 of the buffer the caller passes next.
#[derive(Debug, Default)]
pub(crate) struct Scanner {
    /// Offset of the next item to read.
    pos: usize,
    /// Items still to read in each open array or map, outermost first.
    open: Vec<u64>,
}

impl Scanner {
    /// The length of the first value of `buf` once it is complete;
    /// `Ok(None)` while `buf` holds only part of it.
    pub(crate) fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        loop {
            let Some(&marker) = buf.get(self.pos) else {
                return Ok(None);
            };
            let at = |offset: usize, width: usize| -> Option<u64> {
                let b = buf.get(self.pos + offset..self.pos + offset + width)?;
                Some(b.iter().fold(0u64, |n, &x| (n << 8) | u64::from(x)))
            };
            // (bytes of the item before any payload, payload bytes, items inside)
            let (head, payload, items): (usize, Option<u64>, u64) = match marker {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (1, Some(0), 0),
                0x80..=0x8f => (1, Some(0), 2 * u64::from(marker & 0x0f)),
                0x90..=0x9f => (1, Some(0), u64::from(marker & 0x0f)),
                0xa0..=0xbf => (1, Some(u64::from(marker & 0x1f)), 0),
                0xc1 => return Err(FrameError::Reserved(self.pos)),
                0xc4 | 0xd9 => (2, at(1, 1), 0),
                0xc5 | 0xda => (3, at(1, 2), 0),
                0xc6 | 0xdb => (5, at(1, 4), 0),
                // ext: the length, then a type byte
                0xc7 => (3, at(1, 1), 0),
                0xc8 => (4, at(1, 2), 0),
                0xc9 => (6, at(1, 4), 0),
                0xca | 0xce | 0xd2 => (5, Some(0), 0),
                0xcb | 0xcf | 0xd3 => (9, Some(0), 0),
                0xcc | 0xd0 => (2, Some(0), 0),
                0xcd | 0xd1 => (3, Some(0), 0),
                // fixext 1, 2, 4, 8, 16: a type byte and the data
                0xd4..=0xd8 => (2, Some(1 << (marker - 0xd4)), 0),
                0xdc => (3, Some(0), at(1, 2).unwrap_or(0)),
                0xdd => (5, Some(0), at(1, 4).unwrap_or(0)),
                0xde => (3, Some(0), 2 * at(1, 2).unwrap_or(0)),
                0xdf => (5, Some(0), 2 * at(1, 4).unwrap_or(0)),
            };
            let Some(payload) = payload else {
                return Ok(None); // its length field has not arrived
            };
            let end = (self.pos as u64)
                .saturating_add(head as u64)
                .saturating_add(payload);
            if end > buf.len() as u64 {
                return Ok(None);
            }
            self.pos = end as usize;
            if items > 0 {
                if self.open.len() >= MAX_DEPTH {
                    return Err(FrameError::TooDeep);
                }
                self.open.push(items);
                continue;
            }
            // One item is complete, and with it every container it fills.
            loop {
                match self.open.last_mut() {
                    None => {
                        let len = self.pos;
                        self.pos = 0;
                        return Ok(Some(len));
                    }
                    Some(left) => {
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        self.open.pop();
                    }
                }
            }
        }
    }
}

/// Could `frame` be a reply or record header: a map of exactly two
/// entries? Only then is it worth building a value tree to find out.
pub(crate) fn maybe_header(frame: &[u8]) -> bool {
    matches!(
        frame,
        [0x82, ..] | [0xde, 0, 2, ..] | [0xdf, 0, 0, 0, 2, ..]
    )
}

/// Finds the first complete msgpack value in `buf`: its length in bytes and a
/// view borrowing `buf`. `Ok(None)` when `buf` holds only part of a value.
pub(crate) fn next_frame(buf: &[u8]) -> Result<Option<(usize, ValueRef<'_>)>, FrameError> {
    let Some(len) = Scanner::default().scan(buf)? else {
        return Ok(None);
    };
    Ok(Some((len, value_of(&buf[..len]))))
}

/// The value tree of one complete frame (as framed by [`Scanner`]).
pub(crate) fn value_of(frame: &[u8]) -> ValueRef<'_> {
    let mut rest = frame;
    // The scanner checked the structure and the depth; what is left to fail
    // is rmpv's own view of it, which makes the frame an unknown body.
    rmpv::decode::read_value_ref_with_max_depth(&mut rest, MAX_DEPTH).unwrap_or(ValueRef::Nil)
}

/// A reply header is always exactly the 2-key map `{Seq, Error}` and no body
/// has that shape, so this also tells a header from a stray body.
pub(crate) fn as_header(value: &ValueRef<'_>) -> Option<Header> {
    let ValueRef::Map(entries) = value else {
        return None;
    };
    if entries.len() != 2 {
        return None;
    }
    let (mut seq, mut error) = (None, None);
    for (key, val) in entries {
        match as_str(key)? {
            "Seq" => seq = val.as_u64(),
            "Error" => error = as_str(val),
            _ => return None,
        }
    }
    Some(Header {
        seq: seq?,
        error: error?.to_owned(),
    })
}

/// The string under `key` when `value` is a map that has one.
pub(crate) fn str_field<'a>(value: &'a ValueRef<'_>, key: &str) -> Option<&'a str> {
    let ValueRef::Map(entries) = value else {
        return None;
    };
    entries
        .iter()
        .find(|(k, _)| as_str(k) == Some(key))
        .and_then(|(_, v)| as_str(v))
}

fn as_str<'a>(value: &'a ValueRef<'_>) -> Option<&'a str> {
    match value {
        ValueRef::String(s) => s.as_str(),
        _ => None,
    }
}

/// Header and body of one request, ready to write.
pub(crate) fn encode_request<B: Serialize>(command: &str, seq: u64, body: Option<&B>) -> Vec<u8> {
    // Plain structs of strings, numbers, maps and bytes into a Vec: encoding
    // cannot fail.
    let mut out =
        rmp_serde::to_vec_named(&RequestHeader { command, seq }).expect("request header encodes");
    if let Some(body) = body {
        rmp_serde::encode::write_named(&mut out, body).expect("request body encodes");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::rpc::proto;

    fn header_bytes(seq: u64, error: &str) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct H<'a> {
            seq: u64,
            error: &'a str,
        }
        rmp_serde::to_vec_named(&H { seq, error }).unwrap()
    }

    #[test]
    fn frames_split_anywhere_resume_where_they_stopped() {
        let members = include_bytes!("testdata/members.bin");
        let mut stream = header_bytes(7, "");
        stream.extend_from_slice(members);
        stream.extend(header_bytes(8, "boom"));

        // Feed byte by byte: every prefix that ends inside a value is incomplete.
        let mut frames = Vec::new();
        let mut buf = Vec::new();
        for &b in &stream {
            buf.push(b);
            if let Some((len, _)) = next_frame(&buf).unwrap() {
                frames.push(buf.drain(..len).collect::<Vec<u8>>());
            }
        }
        assert!(buf.is_empty());
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[1], members);
        let (_, v) = next_frame(&frames[0]).unwrap().unwrap();
        assert_eq!(
            as_header(&v),
            Some(Header {
                seq: 7,
                error: String::new()
            })
        );
        let (_, v) = next_frame(&frames[2]).unwrap().unwrap();
        assert_eq!(as_header(&v).unwrap().error, "boom");
    }

    /// Every msgpack marker, at the widths an encoder picks for them.
    fn every_kind() -> Vec<rmpv::Value> {
        use rmpv::Value as V;
        let s = |n: usize| V::from("x".repeat(n));
        let b = |n: usize| V::Binary(vec![7; n]);
        let e = |n: usize| V::Ext(5, vec![1; n]);
        let arr = |n: usize| V::Array((0..n).map(|i| V::from(i as u64)).collect());
        let map = |n: usize| {
            V::Map(
                (0..n)
                    .map(|i| (V::from(format!("k{i}")), V::from(-(i as i64))))
                    .collect(),
            )
        };
        let mut out = vec![
            V::Nil,
            V::from(true),
            V::from(false),
            V::F32(1.5),
            V::F64(-2.5),
        ];
        for i in [
            0i64,
            1,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            1 << 40,
            -1,
            -32,
            -33,
            -128,
            -129,
            -32_769,
            -(1 << 40),
        ] {
            out.push(V::from(i));
        }
        out.push(V::from(u64::MAX));
        for n in [0, 1, 31, 32, 255, 256, 65_535, 65_536] {
            out.extend([s(n), b(n)]);
        }
        for n in [1, 2, 4, 8, 16, 3, 255, 256, 65_536] {
            out.push(e(n));
        }
        for n in [0, 15, 16, 65_536] {
            out.extend([arr(n), map(n)]);
        }
        // Containers closing several levels at once, and empty ones inside.
        out.push(V::Array(vec![
            V::Array(vec![V::Map(vec![(V::from("a"), V::Array(vec![]))])]),
            V::Nil,
        ]));
        out
    }

    #[test]
    fn the_scanner_frames_every_kind_of_value_however_it_arrives() {
        let values = every_kind();
        let mut stream = Vec::new();
        let mut lens = Vec::new();
        for v in &values {
            let before = stream.len();
            rmpv::encode::write_value(&mut stream, v).unwrap();
            lens.push(stream.len() - before);
        }
        for chunk in [1, 3, 7, 4096, stream.len()] {
            let mut scanner = Scanner::default();
            let (mut buf, mut got) = (Vec::new(), Vec::new());
            for piece in stream.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(len) = scanner.scan(&buf).unwrap() {
                    let frame: Vec<u8> = buf.drain(..len).collect();
                    let mut rest = &frame[..];
                    assert_eq!(
                        rmpv::decode::read_value(&mut rest).unwrap(),
                        values[got.len()],
                        "value {} read in chunks of {chunk}",
                        got.len()
                    );
                    assert!(rest.is_empty());
                    got.push(len);
                }
            }
            assert!(buf.is_empty(), "chunks of {chunk}: bytes left over");
            assert_eq!(got, lens, "chunks of {chunk}");
        }
    }

    #[test]
    fn a_reserved_byte_is_an_error_wherever_it_is() {
        assert_eq!(
            Scanner::default().scan(&[0xc1]),
            Err(FrameError::Reserved(0))
        );
        assert_eq!(
            Scanner::default().scan(&[0x92, 0x01, 0xc1]),
            Err(FrameError::Reserved(2))
        );
    }

    #[test]
    fn only_two_entry_maps_may_be_headers() {
        assert!(maybe_header(&header_bytes(1, "")));
        assert!(!maybe_header(include_bytes!("testdata/members.bin")));
        assert!(!maybe_header(&[]));
    }

    #[test]
    fn two_values_in_one_buffer_frame_one_at_a_time() {
        let mut buf = header_bytes(1, "");
        let first = buf.len();
        buf.extend(header_bytes(2, ""));
        let (len, _) = next_frame(&buf).unwrap().unwrap();
        assert_eq!(len, first);
        assert_eq!(next_frame(&[]).unwrap(), None);
    }

    #[test]
    fn bodies_never_look_like_headers() {
        for body in [
            &include_bytes!("testdata/members.bin")[..],
            include_bytes!("testdata/record_user.bin"),
            include_bytes!("testdata/record_user_nil.bin"),
            include_bytes!("testdata/record_query.bin"),
            include_bytes!("testdata/record_member_join.bin"),
            include_bytes!("testdata/query_done.bin"),
            include_bytes!("testdata/keys_nil.bin"),
            include_bytes!("testdata/stats.bin"),
            include_bytes!("testdata/join.bin"),
            include_bytes!("testdata/coordinate.bin"),
        ] {
            let (len, v) = next_frame(body).unwrap().unwrap();
            assert_eq!(len, body.len());
            assert_eq!(as_header(&v), None);
        }
        // Headers recorded from the agent, error and success alike.
        let (_, v) = next_frame(include_bytes!("testdata/error_header.bin"))
            .unwrap()
            .unwrap();
        assert!(as_header(&v).is_some_and(|h| !h.error.is_empty()));
    }

    #[test]
    fn runaway_nesting_is_an_error_not_a_short_read() {
        // Nested one-element arrays, deeper than the depth limit.
        assert!(next_frame(&[0x91; 5000]).is_err());
    }

    #[test]
    fn requests_use_the_agents_key_names() {
        let bytes = encode_request(
            "respond",
            3,
            Some(&proto::Respond {
                id: 9,
                payload: b"hi",
            }),
        );
        let (len, header) = next_frame(&bytes).unwrap().unwrap();
        assert_eq!(str_field(&header, "Command"), Some("respond"));
        let (_, body) = next_frame(&bytes[len..]).unwrap().unwrap();
        let ValueRef::Map(entries) = body else {
            panic!("body is a map")
        };
        assert_eq!(as_str(&entries[0].0), Some("ID"));
        assert_eq!(entries[1].1, ValueRef::Binary(b"hi"));
    }
}
