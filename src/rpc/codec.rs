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
const MAX_DEPTH: usize = 32;

/// Finds the first complete msgpack value in `buf`: its length in bytes and a
/// view borrowing `buf`. `Ok(None)` when `buf` holds only part of a value.
pub(crate) fn next_frame(buf: &[u8]) -> Result<Option<(usize, ValueRef<'_>)>, rmpv::decode::Error> {
    let mut rest = buf;
    match rmpv::decode::read_value_ref_with_max_depth(&mut rest, MAX_DEPTH) {
        Ok(value) => Ok(Some((buf.len() - rest.len(), value))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
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
    use crate::rpc::proto;

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
