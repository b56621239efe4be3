//! Loopback addresses for real agents and daemons. Every member gets an
//! address of its own with Serf's default ports, so agents of test binaries
//! running in parallel never meet: [`unique_ip`] (127.x.y.z, never
//! 127.0.x.x) for the tests, a fixed [`Block`] 127.0.B.1–254 for a
//! benchmark whose figures name its addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{ensure, Result};

/// Serf's default gossip (`-bind`) and RPC ports.
pub const GOSSIP_PORT: u16 = 7946;
pub const RPC_PORT: u16 = 7373;

/// Whether nothing holds `ip`'s gossip (TCP and UDP) and RPC ports.
pub fn is_free(ip: IpAddr) -> bool {
    TcpListener::bind((ip, GOSSIP_PORT)).is_ok()
        && UdpSocket::bind((ip, GOSSIP_PORT)).is_ok()
        && TcpListener::bind((ip, RPC_PORT)).is_ok()
}

/// A loopback address no other agent uses: derived from the pid and a
/// counter, so concurrent test binaries get disjoint ranges, and checked
/// free (a leftover agent of an earlier run may still hold one).
pub fn unique_ip() -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let pid = std::process::id();
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Second octet 1..=254 and third from the pid, fourth 1..=254 from
        // the counter (rolling the third on wrap).
        let b = 1 + pid % 254;
        let c = (pid / 254 + n / 254) % 256;
        let d = 1 + n % 254;
        let ip = IpAddr::V4(Ipv4Addr::new(127, b as u8, c as u8, d as u8));
        if is_free(ip) {
            return ip;
        }
    }
}

/// A benchmark's fixed addresses: member `n` is 127.0.`third`.`n + 1`.
#[derive(Debug, Clone, Copy)]
pub struct Block {
    pub third: u8,
}

impl Block {
    pub fn ip(self, n: usize) -> IpAddr {
        let last = u8::try_from(n + 1).expect("at most 254 nodes");
        IpAddr::V4(Ipv4Addr::new(127, 0, self.third, last))
    }

    pub fn gossip(self, n: usize) -> SocketAddr {
        SocketAddr::new(self.ip(n), GOSSIP_PORT)
    }

    pub fn rpc(self, n: usize) -> SocketAddr {
        SocketAddr::new(self.ip(n), RPC_PORT)
    }

    /// Fails when member `n`'s ports are taken: a leftover agent of an
    /// earlier run would make the figures meaningless.
    pub fn ensure_free(self, n: usize) -> Result<()> {
        ensure!(
            is_free(self.ip(n)),
            "{} or {} is in use: a leftover agent of an earlier run? (pgrep -a serf)",
            self.gossip(n),
            self.rpc(n)
        );
        Ok(())
    }
}
