//! The original serfnode's member tags: the names it gossips (`role`, `ip`,
//! `serf_port`, `rpc`, `timestamp`, `service`, `service_port`, `ports`), the
//! compact port-map encoding that keeps them under Serf's 512-byte tag limit,
//! and the *Node info* document a member's tags describe.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use crate::cluster::rpc::Member;

pub const ROLE: &str = "role";
pub(crate) const IP: &str = "ip";
pub(crate) const SERF_PORT: &str = "serf_port";
pub const RPC: &str = "rpc";
pub(crate) const TIMESTAMP: &str = "timestamp";
pub(crate) const SERVICE: &str = "service";
pub(crate) const SERVICE_PORT: &str = "service_port";
pub const PORTS: &str = "ports";

/// The role of a member that carries no `role` tag, as in the original.
pub(crate) const NO_ROLE: &str = "no_role";

/// Container port (`"80/tcp"`) → host ports, as Docker reports them.
pub type PortMap = BTreeMap<String, Vec<String>>;

/// Decodes `8000t8000|53u32768,32769` into `{"8000/tcp": ["8000"], "53/udp":
/// ["32768", "32769"]}`. Malformed items are skipped rather than failing the
/// whole member: the tag comes from another node and must not blind us to it.
pub fn decode_ports(encoded: &str) -> PortMap {
    let mut map = PortMap::new();
    for item in encoded.split('|').filter(|s| !s.is_empty()) {
        let Some(at) = item.find(['t', 'u']) else {
            continue;
        };
        let (internal, rest) = item.split_at(at);
        if internal.is_empty() || !internal.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let proto = if rest.starts_with('t') { "tcp" } else { "udp" };
        let externals = rest[1..]
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        map.insert(format!("{internal}/{proto}"), externals);
    }
    map
}

/// Inverse of [`decode_ports`]; ports with a protocol other than tcp/udp are
/// left out (Serf tags cannot carry them in this encoding).
pub fn encode_ports(ports: &PortMap) -> String {
    let mut items = Vec::with_capacity(ports.len());
    for (key, externals) in ports {
        let Some((internal, proto)) = key.split_once('/') else {
            continue;
        };
        let short = match proto {
            "tcp" => 't',
            "udp" => 'u',
            _ => continue,
        };
        items.push(format!("{internal}{short}{}", externals.join(",")));
    }
    items.join("|")
}

/// *Node info*: one member as the file API shows it. Field names and string
/// values follow the original project's documents.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct NodeInfo {
    pub id: String,
    pub role: String,
    pub ports: PortMap,
    pub serf_ip: String,
    pub serf_port: String,
    pub service_ip: String,
    pub service_port: String,
    pub timestamp: String,
}

impl NodeInfo {
    pub fn of(member: &Member) -> NodeInfo {
        let tag = |k: &str| member.tags.get(k).cloned();
        let serf_ip = member.addr.to_string();
        NodeInfo {
            id: member.name.clone(),
            role: role_of(member).to_owned(),
            ports: tag(PORTS).map(|p| decode_ports(&p)).unwrap_or_default(),
            serf_port: tag(SERF_PORT).unwrap_or_else(|| member.port.to_string()),
            service_ip: tag(SERVICE)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| serf_ip.clone()),
            serf_ip,
            service_port: tag(SERVICE_PORT).unwrap_or_else(|| "0".to_owned()),
            timestamp: tag(TIMESTAMP).unwrap_or_default(),
        }
    }
}

pub(crate) fn role_of(member: &Member) -> &str {
    member.tags.get(ROLE).map_or(NO_ROLE, String::as_str)
}

/// The address other members should use for the member's service.
pub fn service_ip(member: &Member) -> String {
    match member.tags.get(SERVICE) {
        Some(s) if !s.is_empty() => s.clone(),
        _ => member.addr.to_string(),
    }
}

/// Seniority order within a role: lowest start `timestamp` first (a missing
/// or unparsable one counts as youngest), ties broken by node name, so every
/// member computes the same "oldest" without talking to the others.
pub fn seniority(a: &Member, b: &Member) -> std::cmp::Ordering {
    seniority_of(start(a), &a.name, start(b), &b.name)
}

/// [`seniority`] from what it looks at: each member's [`start`] and name.
pub(crate) fn seniority_of(a: f64, a_name: &str, b: f64, b_name: &str) -> std::cmp::Ordering {
    a.total_cmp(&b).then_with(|| a_name.cmp(b_name))
}

/// A member's start `timestamp` for [`seniority`]; missing or unparsable:
/// infinity (the youngest).
pub(crate) fn start(m: &Member) -> f64 {
    m.tags
        .get(TIMESTAMP)
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|t| t.is_finite())
        .unwrap_or(f64::INFINITY)
}

/// One version of a member's Node info as `serfnodes_by_id.json` and
/// `serfnodes_by_role.json` show it, rendered once: the map entry
/// `"<name>":{…}` (the name as a JSON string, the Node info compact with its
/// keys sorted, exactly as `serde_json` writes it through a `Value`), and
/// what the role file groups and orders by.
#[derive(Debug, Clone)]
pub(crate) struct NodeInfoJson {
    entry: Box<[u8]>,
    /// Where the Node info starts in `entry` (after the key and `:`).
    info_at: usize,
    pub(crate) role: String,
    pub(crate) start: f64,
}

impl NodeInfoJson {
    pub(crate) fn of(member: &Member) -> NodeInfoJson {
        let mut entry = serde_json::to_vec(&member.name).expect("a string is json");
        entry.push(b':');
        let info_at = entry.len();
        let info = serde_json::to_value(NodeInfo::of(member)).expect("node info is json");
        serde_json::to_writer(&mut entry, &info).expect("node info is json");
        NodeInfoJson {
            entry: entry.into_boxed_slice(),
            info_at,
            role: role_of(member).to_owned(),
            start: start(member),
        }
    }

    /// `"<name>":{…}`, an entry of the by-id map.
    pub(crate) fn entry(&self) -> &[u8] {
        &self.entry
    }

    /// The Node info document alone, `{…}`.
    pub(crate) fn info(&self) -> &[u8] {
        &self.entry[self.info_at..]
    }

    /// Whether the by-id and by-role files would show the two alike: the
    /// same bytes, in the same role, at the same place in it.
    pub(crate) fn same_as(&self, other: &NodeInfoJson) -> bool {
        self.entry == other.entry
            && self.info_at == other.info_at
            && self.role == other.role
            && self.start.to_bits() == other.start.to_bits()
    }
}

/// What this node announces about itself.
#[derive(Debug, Clone)]
pub struct OwnTags {
    pub role: String,
    pub advertise_ip: IpAddr,
    pub serf_port: u16,
    pub rpc_port: u16,
    /// Seconds since the epoch when this serfnode started; kept across agent
    /// restarts so the member keeps its seniority in its role.
    pub timestamp: f64,
    pub service_ip: Option<String>,
    pub service_port: u16,
    pub ports: PortMap,
}

impl OwnTags {
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut tags = BTreeMap::new();
        tags.insert(ROLE.to_owned(), self.role.clone());
        tags.insert(IP.to_owned(), self.advertise_ip.to_string());
        tags.insert(SERF_PORT.to_owned(), self.serf_port.to_string());
        tags.insert(RPC.to_owned(), self.rpc_port.to_string());
        tags.insert(TIMESTAMP.to_owned(), format!("{:.6}", self.timestamp));
        let service = self
            .service_ip
            .clone()
            .unwrap_or_else(|| self.advertise_ip.to_string());
        tags.insert(SERVICE.to_owned(), service);
        tags.insert(SERVICE_PORT.to_owned(), self.service_port.to_string());
        tags.insert(PORTS.to_owned(), encode_ports(&self.ports));
        tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, tags: &[(&str, &str)]) -> Member {
        Member {
            addr: "10.1.2.3".parse().unwrap(),
            ..Member::fixture(name, tags)
        }
    }

    #[test]
    fn udp_decodes_as_udp_not_u() {
        let map = decode_ports("8000t8000|53u32768,32769");
        assert_eq!(map["8000/tcp"], vec!["8000"]);
        assert_eq!(map["53/udp"], vec!["32768", "32769"]);
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn ports_round_trip_and_skip_garbage() {
        let map = decode_ports("80t8080,8081|x|u9|53u|tt|7t1");
        assert_eq!(map.len(), 3, "{map:?}");
        assert_eq!(map["53/udp"], Vec::<String>::new());
        assert_eq!(decode_ports(&encode_ports(&map)), map);
        assert!(decode_ports("").is_empty());
    }

    #[test]
    fn node_info_follows_tags_with_original_defaults() {
        let m = member(
            "n1",
            &[
                ("role", "web"),
                ("serf_port", "7950"),
                ("service", "10.9.9.9"),
                ("service_port", "80"),
                ("timestamp", "1448900000.5"),
                ("ports", "80t32000"),
            ],
        );
        let info = NodeInfo::of(&m);
        assert_eq!(info.role, "web");
        assert_eq!(info.serf_ip, "10.1.2.3");
        assert_eq!(info.service_ip, "10.9.9.9");
        assert_eq!(info.serf_port, "7950");
        assert_eq!(info.ports["80/tcp"], vec!["32000"]);

        let bare = NodeInfo::of(&member("n2", &[]));
        assert_eq!(bare.role, NO_ROLE);
        assert_eq!(bare.service_ip, "10.1.2.3");
        assert_eq!(bare.serf_port, "7946");
        assert_eq!(bare.service_port, "0");
    }

    #[test]
    fn seniority_is_numeric_then_name_and_missing_is_youngest() {
        let a = member("b", &[("timestamp", "9.5")]);
        let b = member("a", &[("timestamp", "10")]);
        let c = member("c", &[]);
        let d = member("a", &[("timestamp", "9.5")]);
        let mut all = [c.clone(), b.clone(), a.clone(), d.clone()];
        all.sort_by(seniority);
        let names: Vec<_> = all.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "a", "c"]);
        assert_eq!(all[0].tags["timestamp"], "9.5");
    }

    #[test]
    fn own_tags_fit_and_decode() {
        let own = OwnTags {
            role: "db".into(),
            advertise_ip: "127.0.0.5".parse().unwrap(),
            serf_port: 7946,
            rpc_port: 7373,
            timestamp: 1_700_000_000.25,
            service_ip: None,
            service_port: 5432,
            ports: decode_ports("5432t15432"),
        };
        let tags = own.to_map();
        assert_eq!(tags["service"], "127.0.0.5");
        assert_eq!(tags["ports"], "5432t15432");
        assert_eq!(tags["timestamp"], "1700000000.250000");
    }
}
