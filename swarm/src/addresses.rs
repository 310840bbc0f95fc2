//! Which local address each client socket of the swarm binds to.
//!
//! Real phones come from many addresses, and the edge limits handshakes per source address.
//! Against loopback edges the swarm gives each of its client endpoints an address of its own
//! in 127.0.0.0/8 (Linux routes the whole block to `lo`), and every connection flooder the one
//! address of "the attacker", each attempt from a fresh port: the per-source limit sees what
//! it would see in the field. Against other edges every socket binds the unspecified address.
//! Where only 127.0.0.1 exists (not Linux), [`super::client_endpoint`] falls back to it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The connection flooders' address against loopback edges.
pub const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 66, 0, 1);

/// Whether every edge is on IPv4 loopback (so per-endpoint addresses can be used).
fn loopback_v4(edges: &[SocketAddr]) -> bool {
    !edges.is_empty() && edges.iter().all(|e| matches!(e.ip(), IpAddr::V4(v4) if v4.is_loopback()))
}

fn unspecified(edges: &[SocketAddr]) -> SocketAddr {
    if edges.iter().any(SocketAddr::is_ipv6) {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    }
}

/// The address honest client endpoint `index` binds: 127.1.x.y against loopback edges.
pub fn phone_endpoint(edges: &[SocketAddr], index: usize) -> SocketAddr {
    if !loopback_v4(edges) {
        return unspecified(edges);
    }
    let index = index % (250 * 250);
    (Ipv4Addr::new(127, 1, (index / 250) as u8, (index % 250 + 1) as u8), 0).into()
}

/// The address a connection flooder binds (any free port each time).
pub fn flooder(edges: &[SocketAddr]) -> SocketAddr {
    if loopback_v4(edges) { (ATTACKER, 0).into() } else { unspecified(edges) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_edges_get_one_address_per_endpoint_and_one_for_the_attacker() {
        let edges: Vec<SocketAddr> = vec!["127.0.0.1:7443".parse().unwrap()];
        let a = phone_endpoint(&edges, 0);
        let b = phone_endpoint(&edges, 1);
        assert_eq!(a, "127.1.0.1:0".parse().unwrap());
        assert_ne!(a.ip(), b.ip());
        assert_eq!(phone_endpoint(&edges, 251).ip(), "127.1.1.2".parse::<IpAddr>().unwrap());
        assert!(phone_endpoint(&edges, usize::MAX).ip().is_loopback());
        assert_eq!(flooder(&edges).ip(), IpAddr::V4(ATTACKER));
        // The addresses can be bound on this machine.
        std::net::UdpSocket::bind(a).unwrap();
        std::net::UdpSocket::bind(flooder(&edges)).unwrap();
    }

    #[test]
    fn other_edges_get_the_unspecified_address() {
        let remote: Vec<SocketAddr> = vec!["192.0.2.1:7443".parse().unwrap()];
        assert_eq!(phone_endpoint(&remote, 3), "0.0.0.0:0".parse().unwrap());
        let v6: Vec<SocketAddr> = vec!["[::1]:7443".parse().unwrap()];
        assert_eq!(flooder(&v6), "[::]:0".parse().unwrap());
    }
}
