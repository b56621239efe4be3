//! Synthetic members, as a serfnode node announces itself (the original
//! project's tags), as the stand-in agent holds them and as its `members` reply carries them:
//! what the benchmarks use for views larger than this machine can run as
//! real agents.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Result;
use serfnode::cluster::rpc::{Member, MemberStatus};
use serfnode_testkit::fake_agent::{self, FakeMember};

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

/// Member `m` as the stand-in agent holds it (its status by name).
pub fn fake_member(m: &Member) -> FakeMember {
    let Member {
        name,
        addr,
        port,
        tags,
        status,
        protocol,
        delegate,
    } = m.clone();
    let status = status.as_str().to_owned();
    FakeMember {
        status,
        name,
        addr,
        port,
        tags,
        protocol,
        delegate,
    }
}

/// The members as a msgpack array, as in the `Members` field of a reply.
pub fn encode_members(members: &[Member]) -> Result<Vec<u8>> {
    let fake: Vec<FakeMember> = members.iter().map(fake_member).collect();
    fake_agent::encode_members(&fake)
}
