//! Who is at the other end of an RPC connection. Children share the
//! parent's loopback, so while the agent restarts anyone there can listen on
//! its RPC port, answer the handshake and wait for the key. A daemon that
//! supervises its agent therefore authenticates (and believes what it
//! reads) only when the server end of its connection is a socket of that
//! very process: the socket whose local and remote addresses are the
//! connection's, found in `/proc/net/tcp` or `/proc/net/tcp6` (the
//! daemon's network namespace), and whose inode is among
//! `/proc/<agent pid>/fd`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// The pid of the `serf agent` this daemon runs, while it runs. The
/// supervisor sets it; every RPC connection checks against it.
#[derive(Debug, Clone, Default)]
pub struct AgentPid(Arc<AtomicU32>);

impl AgentPid {
    pub fn set(&self, pid: Option<u32>) {
        self.0.store(pid.unwrap_or(0), Ordering::SeqCst);
    }

    pub fn get(&self) -> Option<u32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            pid => Some(pid),
        }
    }
}

/// Why a peer is not the agent; each names the address.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PeerError {
    #[error("the serf agent this daemon runs is not running, so {0} is someone else")]
    NoAgent(SocketAddr),
    #[error("{addr} is not served by the serf agent this daemon runs (pid {pid}) but by another process")]
    Stranger { addr: SocketAddr, pid: u32 },
    #[error("{addr}: the server end of the connection is not in /proc/net/tcp: {why}")]
    Unknown { addr: SocketAddr, why: String },
}

/// Ok when the server end of our connection from `local` to `peer` is a
/// socket of the process `agent` names.
pub fn check(agent: &AgentPid, local: SocketAddr, peer: SocketAddr) -> Result<(), PeerError> {
    let pid = agent.get().ok_or(PeerError::NoAgent(peer))?;
    let unknown = |why: String| PeerError::Unknown { addr: peer, why };
    // The server end: its local address is our peer, its remote is us.
    let inode = server_inode(peer, local)
        .map_err(|e| unknown(e.to_string()))?
        .ok_or_else(|| unknown("no such connection".into()))?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| unknown(format!("/proc/{pid}/fd: {e}")))?;
    let want = format!("socket:[{inode}]");
    let held = fds
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str()));
    held.then_some(())
        .ok_or(PeerError::Stranger { addr: peer, pid })
}

/// The inode of the TCP socket whose local address is `local` and remote
/// `remote`, from /proc/net/tcp and tcp6 (an IPv4 connection to a
/// dual-stack listener shows there as IPv4-mapped). `None` when no such
/// socket, or its inode is 0 (not yet accepted).
fn server_inode(local: SocketAddr, remote: SocketAddr) -> std::io::Result<Option<u64>> {
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(t) => t,
            // No IPv6 in this kernel or namespace.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if let Some(inode) = find(&text, local, remote) {
            return Ok(Some(inode));
        }
    }
    Ok(None)
}

/// The inode of the line of a /proc/net/tcp{,6} table for (`local`,
/// `remote`).
fn find(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let same = |a: SocketAddr, b: SocketAddr| {
        a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
    };
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (l, r, inode) = (decode(f.get(1)?)?, decode(f.get(2)?)?, f.get(9)?);
        let inode: u64 = inode.parse().ok()?;
        (same(l, local) && same(r, remote) && inode != 0).then_some(inode)
    })
}

/// `0100007F:1CCD` (an IPv4 address as the kernel's u32 in host order, the
/// port in hex) or the IPv6 form (four such u32s).
fn decode(field: &str) -> Option<SocketAddr> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(8 * i..8 * i + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[4 * i..4 * i + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lines_decode_as_the_kernel_writes_them() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1CCD 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0\n   1: 0100007F:1CCD 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 20 4 30 10 -1\n";
        let agent: SocketAddr = "127.0.0.1:7373".parse().unwrap();
        let us: SocketAddr = "127.0.0.1:53924".parse().unwrap();
        assert_eq!(find(table, agent, us), Some(222));
        assert_eq!(find(table, us, agent), None);
        let v6 = "  sl  local_address                         remote_address                        st\n   0: 0000000000000000FFFF00000100007F:1CCD 0000000000000000FFFF00000100007F:D2A4 01 00000000:00000000 00:00000000 00000000     0        0 333 1\n";
        assert_eq!(find(v6, agent, us), Some(333), "IPv4-mapped");
        assert_eq!(
            decode("00000000000000000000000001000000:1CCD"),
            Some("[::1]:7373".parse().unwrap())
        );
        assert_eq!(decode("zz:1"), None);
    }

    /// Real sockets: the server end of a connection to a listener of this
    /// process is held by this process and by no other.
    #[test]
    fn a_connection_is_traced_to_the_process_that_accepted_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(peer).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let local = client.local_addr().unwrap();
        let me = AgentPid::default();
        assert_eq!(check(&me, local, peer), Err(PeerError::NoAgent(peer)));
        me.set(Some(std::process::id()));
        assert_eq!(check(&me, local, peer), Ok(()));
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let stranger = AgentPid::default();
        stranger.set(Some(other.id()));
        let err = check(&stranger, local, peer);
        let _ = other.kill();
        let _ = other.wait();
        assert_eq!(
            err,
            Err(PeerError::Stranger {
                addr: peer,
                pid: other.id()
            })
        );
        assert!(err.unwrap_err().to_string().contains(&peer.to_string()));
    }
}
