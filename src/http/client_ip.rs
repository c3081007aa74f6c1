//! Which address a request comes from: the peer, or (only when the peer is a trusted proxy)
//! the nearest untrusted hop of `X-Forwarded-For`. Anyone else's header is ignored, so a client
//! cannot choose its own rate-limit bucket.

use std::net::{IpAddr, SocketAddr};

use axum::extract::connect_info::{ConnectInfo, MockConnectInfo};

use axum::http::HeaderMap;
use ipnet::IpNet;

pub struct ClientIpResolver {
    trusted: Vec<IpNet>,
}

impl ClientIpResolver {
    pub fn new(trusted: Vec<IpNet>) -> ClientIpResolver {
        ClientIpResolver { trusted }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client of a request the server accepted (it records the peer address, or a test
    /// layers a `MockConnectInfo`); a router driven without either counts it as loopback.
    pub fn of_request<B>(&self, request: &axum::http::Request<B>) -> IpAddr {
        let extensions = request.extensions();
        let peer = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0)
            .or_else(|| {
                extensions
                    .get::<MockConnectInfo<SocketAddr>>()
                    .map(|info| info.0)
            })
            .map_or(IpAddr::from([127, 0, 0, 1]), |addr| addr.ip());
        self.resolve(peer, request.headers())
    }

    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map_while(|hop| hop.trim().parse::<IpAddr>().ok())
            .collect();
        // Walk from the nearest hop outwards, through trusted proxies only.
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            client = hop;
            if !self.is_trusted(hop) {
                break;
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", xff.parse().unwrap());
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_cannot_pick_their_address() {
        let resolver = ClientIpResolver::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            resolver.resolve(ip("203.0.113.9"), &headers("1.2.3.4")),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn trusted_proxies_forward_the_client() {
        let resolver = ClientIpResolver::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            resolver.resolve(ip("10.0.0.2"), &headers("198.51.100.7")),
            ip("198.51.100.7")
        );
        // The client prepended a fake hop; the nearest untrusted one is what the proxy saw.
        assert_eq!(
            resolver.resolve(ip("10.0.0.2"), &headers("6.6.6.6, 198.51.100.7, 10.0.0.5")),
            ip("198.51.100.7")
        );
        assert_eq!(
            resolver.resolve(ip("10.0.0.2"), &HeaderMap::new()),
            ip("10.0.0.2")
        );
    }
}
