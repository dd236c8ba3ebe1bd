//! Routes each datagram on the shared UDP port to the participant it belongs to.
//!
//! Known source addresses (with their transport: a TCP connection's remote
//! address is not the same source as a UDP datagram's) are one hash lookup.
//! A STUN binding request from a new address names the server's ICE ufrag in
//! its USERNAME, which is a second hash lookup; no datagram scans the peers.

use std::net::SocketAddr;

use rustc_hash::FxHashMap;

use str0m::ice::StunMessage;
use str0m::net::Protocol;

use crate::id::ConnectionId;

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// From an address a participant owns.
    Known(ConnectionId),
    /// A STUN message naming a participant's ufrag, from an address not yet known.
    Stun(ConnectionId),
    /// Nobody's.
    Unknown,
}

/// The address and ufrag tables.
///
/// FxHash: one lookup per datagram. Only addresses that passed a STUN check
/// and the server's own ufrags are inserted, so a sender cannot flood the
/// tables with colliding keys.
#[derive(Debug, Default)]
pub(crate) struct Router {
    by_addr: FxHashMap<(Protocol, SocketAddr), ConnectionId>,
    by_ufrag: FxHashMap<String, ConnectionId>,
}

impl Router {
    pub fn route(&self, proto: Protocol, source: SocketAddr, datagram: &[u8]) -> Route {
        if let Some(p) = self.by_addr.get(&(proto, source)) {
            return Route::Known(*p);
        }
        // RFC 7983: a first byte of 0..=3 is STUN.
        if datagram.first().is_some_and(|b| *b < 4)
            && let Ok(msg) = StunMessage::parse(datagram)
            && let Some((local, _remote)) = msg.split_username()
            && let Some(p) = self.by_ufrag.get(local)
        {
            return Route::Stun(*p);
        }
        Route::Unknown
    }

    pub fn add_ufrag(&mut self, ufrag: String, participant: ConnectionId) {
        self.by_ufrag.insert(ufrag, participant);
    }

    pub fn add_addr(&mut self, addr: (Protocol, SocketAddr), participant: ConnectionId) {
        self.by_addr.insert(addr, participant);
    }

    /// The participant that owns this source.
    pub fn owner(&self, addr: (Protocol, SocketAddr)) -> Option<ConnectionId> {
        self.by_addr.get(&addr).copied()
    }

    /// Forgets a participant's ufrags and addresses.
    pub fn remove(
        &mut self,
        ufrags: &[String],
        addrs: &[(Protocol, SocketAddr)],
        participant: ConnectionId,
    ) {
        for u in ufrags {
            if self.by_ufrag.get(u) == Some(&participant) {
                self.by_ufrag.remove(u);
            }
        }
        for a in addrs {
            if self.by_addr.get(a) == Some(&participant) {
                self.by_addr.remove(a);
            }
        }
    }
}
