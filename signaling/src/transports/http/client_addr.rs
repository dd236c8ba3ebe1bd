//! The client's address for per-address limits: the connection's peer, or,
//! behind a trusted reverse proxy, the address its `X-Forwarded-For` names.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;

use crate::transports::error::ApiError;
use crate::transports::state::AppState;

/// The address a request came from, as the per-address limits count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientAddr(pub IpAddr);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .ok_or_else(|| ApiError::internal("no peer address on the request"))?;
        Ok(ClientAddr(client_addr(
            peer,
            &parts.headers,
            &state.trusted_proxies,
        )))
    }
}

/// `peer` itself unless it is a trusted proxy; then the nearest address in
/// `X-Forwarded-For` (read from the right, the hops the proxies appended)
/// that is not a trusted proxy. Anything left of an untrusted hop could be
/// forged by the client, so it is never read; a malformed entry stops the
/// walk at the last good address.
pub(crate) fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |a: &IpAddr| trusted.iter().any(|n| n.contains(a));
    if !is_trusted(&peer) {
        return peer;
    }
    // Several headers are one list, in order.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(addr) = parse_hop(hop) else {
            break;
        };
        client = addr;
        if !is_trusted(&addr) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, maybe with a port (`a:port`,
/// `[v6]:port`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client() {
        let h = xff(&["203.0.113.7"]);
        assert_eq!(client_addr(ip("10.0.0.2"), &h, &[]), ip("10.0.0.2"));
        // An untrusted peer cannot choose its address with the header.
        let t = nets(&["10.0.0.0/8"]);
        assert_eq!(client_addr(ip("198.51.100.1"), &h, &t), ip("198.51.100.1"));
    }

    #[test]
    fn behind_trusted_proxies_the_first_untrusted_hop_from_the_right() {
        let t = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        // client -> proxy 10.0.0.9 -> proxy 10.0.0.2 -> us; the client put a
        // forged entry first.
        let h = xff(&["1.2.3.4, 203.0.113.7", "10.0.0.9"]);
        assert_eq!(client_addr(ip("10.0.0.2"), &h, &t), ip("203.0.113.7"));
        // Ports and IPv6.
        let h = xff(&["[2001:db8::5]:4711, 10.0.0.9:80"]);
        assert_eq!(client_addr(ip("127.0.0.1"), &h, &t), ip("2001:db8::5"));
    }

    #[test]
    fn a_missing_or_malformed_header_leaves_the_last_good_address() {
        let t = nets(&["10.0.0.0/8"]);
        assert_eq!(client_addr(ip("10.0.0.2"), &xff(&[]), &t), ip("10.0.0.2"));
        let h = xff(&["203.0.113.7, garbage, 10.0.0.9"]);
        assert_eq!(client_addr(ip("10.0.0.2"), &h, &t), ip("10.0.0.9"));
        // Only trusted hops: the leftmost of them.
        let h = xff(&["10.1.1.1, 10.0.0.9"]);
        assert_eq!(client_addr(ip("10.0.0.2"), &h, &t), ip("10.1.1.1"));
    }
}
