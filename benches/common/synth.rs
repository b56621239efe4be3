//! Synthetic members, as a serfnode node announces itself (the original
//! project's tags), and the msgpack the agent's `members` reply carries:
//! what the benchmarks use for views larger than this machine can run as
//! real agents.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};
use serde::Serialize;
use serfnode::cluster::rpc::{Member, MemberStatus};

/// Member `i` of a synthetic cluster: `node-<i>` on 10.x.y.z, one of `roles`
/// roles, started `start + i × 13 ms` (so each role has one oldest member).
pub fn synthetic_member(i: usize, start: f64, roles: usize) -> Member {
    let ip = Ipv4Addr::from(0x0a00_0000 + u32::try_from(i).expect("index fits u32"));
    let tags = [
        ("role", format!("role-{:02}", i % roles)),
        ("ip", ip.to_string()),
        ("serf_port", "7946".into()),
        ("rpc", "7373".into()),
        ("timestamp", format!("{:.6}", start + i as f64 * 0.013)),
        ("service", ip.to_string()),
        ("service_port", "8080".into()),
        ("ports", "8080t8080|9090t32768,32769|53u53".into()),
    ];
    Member {
        name: format!("node-{i:05}"),
        addr: IpAddr::V4(ip),
        port: 7946,
        tags: tags.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        status: MemberStatus::Alive,
        protocol: [1, 5, 5],
        delegate: [2, 5, 5],
    }
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
    pub fn of(m: &'a Member) -> WireMember<'a> {
        let addr = match m.addr {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        WireMember {
            name: &m.name,
            addr,
            port: m.port,
            tags: &m.tags,
            status: m.status.as_str(),
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
pub fn encode_members(members: &[Member]) -> Result<Vec<u8>> {
    let wire: Vec<WireMember> = members.iter().map(WireMember::of).collect();
    rmp_serde::to_vec_named(&wire).context("encode a members reply")
}
