//! Links to other nodes' cores over the node's QUIC endpoint ([`super::quic`]).
//!
//! Signaling tells the handle which other nodes hold a room
//! ([`crate::MediaHandle::relay_room`]). Nodes then tell each other which of
//! their shards hold it (an *announcement*: a control frame between the
//! shells, shard tags [`SHELL`]), and every shard of this node holding the
//! room links to every shard of the other node holding it: a link per core
//! pair, all over the one connection per node pair, each frame tagged with
//! its source and destination shard. A link's id here is allocated on first
//! use from [`super::REMOTE_BASE`] and never reused while the node runs.
//!
//! Inbound frames go to the destination shard's driver through a bounded
//! queue: a full queue drops media (counted) and makes the router wait for
//! control, which backs up into QUIC's flow control until the sending node
//! finds the link too slow and closes it (both sides then see it down and
//! link again when it returns).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;
use vela_media_core::RoomId;
use vela_media_core::relay::LinkId;

use super::REMOTE_BASE;
use super::quic::{NodeName, RelayEndpoint, RelayEvent};
use crate::placement::Placement;

/// The shard tag of frames between the nodes' shells (not for a core).
pub(crate) const SHELL: u16 = u16::MAX;

/// Frames from other nodes waiting for one driver.
pub(crate) const INBOUND_QUEUE: usize = 8192;

/// Another node holding a room, as signaling knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePeer {
    /// Its `cluster.node_id`.
    pub node_id: String,
    /// Its relay (QUIC) address.
    pub relay_addr: SocketAddr,
}

/// What the node router hands a driver.
#[derive(Debug)]
pub(crate) enum RemoteIn {
    /// A frame of a core on another node (encoded `RelayMessage`).
    Frame { link: LinkId, payload: Bytes },
    /// Link (or unlink) `room` over `link`.
    LinkRoom {
        link: LinkId,
        room: RoomId,
        on: bool,
    },
    /// These links are gone (their node's connection dropped).
    Down(Vec<LinkId>),
}

/// The relay to other nodes, shared by the handle, the router and the
/// drivers.
#[derive(Debug)]
pub(crate) struct NodeRelay {
    pub(crate) endpoint: RelayEndpoint,
    drivers: Vec<mpsc::Sender<RemoteIn>>,
    placement: Option<Arc<Mutex<Placement>>>,
    state: Mutex<State>,
    /// Datagrams dropped because a driver's inbound queue was full.
    pub(crate) inbound_dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// By `LinkId.0 - REMOTE_BASE`: the node and its shard.
    links: Vec<(NodeName, u16)>,
    ids: FxHashMap<(NodeName, u16), LinkId>,
    /// The other nodes holding each room, as signaling said.
    rooms: FxHashMap<RoomId, Vec<NodePeer>>,
    /// The shards each node announced for a room.
    parts: FxHashMap<(RoomId, NodeName), Vec<u16>>,
}

impl State {
    fn link(&mut self, node: &NodeName, shard: u16) -> LinkId {
        if let Some(id) = self.ids.get(&(node.clone(), shard)) {
            return *id;
        }
        let id = LinkId(REMOTE_BASE + self.links.len() as u32);
        self.links.push((node.clone(), shard));
        self.ids.insert((node.clone(), shard), id);
        id
    }
}

/// An announcement: `shards` of the sending node hold `room` (all of
/// them: a shard not listed holds it no longer); `reply` asks for the
/// receiver's own. Binary: kind 1, flags (bit 0: reply), shard count
/// (u16 BE), the shards (u16 BE each), the room's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Announce {
    pub room: RoomId,
    pub shards: Vec<u16>,
    pub reply: bool,
}

impl Announce {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(4 + 2 * self.shards.len() + self.room.as_str().len());
        b.push(1);
        b.push(u8::from(self.reply));
        b.extend_from_slice(&(self.shards.len() as u16).to_be_bytes());
        for s in &self.shards {
            b.extend_from_slice(&s.to_be_bytes());
        }
        b.extend_from_slice(self.room.as_str().as_bytes());
        b
    }

    /// `None` for anything malformed (a peer runs other code: ignored).
    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let [1, flags, n0, n1, rest @ ..] = b else {
            return None;
        };
        let n = usize::from(u16::from_be_bytes([*n0, *n1]));
        if rest.len() < 2 * n {
            return None;
        }
        let (shards, room) = rest.split_at(2 * n);
        let shards = shards
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        let room = RoomId::new(std::str::from_utf8(room).ok()?).ok()?;
        Some(Announce {
            room,
            shards,
            reply: flags & 1 == 1,
        })
    }
}

impl NodeRelay {
    pub(crate) fn new(
        endpoint: RelayEndpoint,
        drivers: Vec<mpsc::Sender<RemoteIn>>,
        placement: Option<Arc<Mutex<Placement>>>,
    ) -> Self {
        NodeRelay {
            endpoint,
            drivers,
            placement,
            state: Mutex::new(State::default()),
            inbound_dropped: AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This node's shards where `room` is open.
    fn shards_of(&self, room: &RoomId) -> Vec<u16> {
        match &self.placement {
            None => vec![0],
            Some(p) => p
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .open_shards_of(room)
                .into_iter()
                .map(|s| s as u16)
                .collect(),
        }
    }

    /// The node and shard behind a link of this relay.
    pub(crate) fn peer_of(&self, link: LinkId) -> Option<(NodeName, u16)> {
        let i = link.0.checked_sub(REMOTE_BASE)? as usize;
        self.state().links.get(i).cloned()
    }

    /// The links to the other nodes' shards holding `room`, as they
    /// announced them.
    pub(crate) fn links_of_room(&self, room: &RoomId) -> Vec<LinkId> {
        let mut st = self.state();
        let parts: Vec<(NodeName, u16)> = st
            .parts
            .iter()
            .filter(|((r, _), _)| r == room)
            .flat_map(|((_, n), shards)| shards.iter().map(move |s| (n.clone(), *s)))
            .collect();
        parts.into_iter().map(|(n, s)| st.link(&n, s)).collect()
    }

    /// Tells the other nodes holding `room` which shards of this node hold
    /// it now (after a shard's part opened or closed).
    pub(crate) fn announce(&self, room: &RoomId) {
        let peers = self.state().rooms.get(room).cloned().unwrap_or_default();
        if peers.is_empty() {
            return;
        }
        let a = Announce {
            room: room.clone(),
            shards: self.shards_of(room),
            reply: false,
        };
        let frame = a.encode();
        for p in peers {
            let _ = self.endpoint.send_control(&p.node_id, SHELL, SHELL, &frame);
        }
    }

    /// Signaling's word: these other nodes hold `room` (and no others).
    pub(crate) async fn relay_room(&self, room: &RoomId, peers: Vec<NodePeer>) {
        let gone: Vec<NodePeer> = {
            let mut st = self.state();
            let old = if peers.is_empty() {
                st.rooms.remove(room).unwrap_or_default()
            } else {
                st.rooms
                    .insert(room.clone(), peers.clone())
                    .unwrap_or_default()
            };
            old.into_iter().filter(|p| !peers.contains(p)).collect()
        };
        // Nodes no longer holding the room: unlinked here, and told that
        // none of this node's shards hold it for them.
        let none = Announce {
            room: room.clone(),
            shards: Vec::new(),
            reply: false,
        }
        .encode();
        for p in &gone {
            self.set_parts(room, &p.node_id.as_str().into(), Vec::new())
                .await;
            let _ = self.endpoint.send_control(&p.node_id, SHELL, SHELL, &none);
        }
        let frame = Announce {
            room: room.clone(),
            shards: self.shards_of(room),
            reply: true,
        }
        .encode();
        for p in &peers {
            self.endpoint.link(&p.node_id, p.relay_addr);
            // Not up yet: the announcement goes when it comes up.
            let _ = self.endpoint.send_control(&p.node_id, SHELL, SHELL, &frame);
        }
    }

    /// Records that `node`'s shards `shards` hold `room`; links this node's
    /// shards of the room to the new ones and unlinks the gone ones.
    async fn set_parts(&self, room: &RoomId, node: &NodeName, shards: Vec<u16>) {
        let (added, removed) = {
            let mut st = self.state();
            let key = (room.clone(), node.clone());
            let old = if shards.is_empty() {
                st.parts.remove(&key).unwrap_or_default()
            } else {
                st.parts.insert(key, shards.clone()).unwrap_or_default()
            };
            let added: Vec<LinkId> = shards
                .iter()
                .filter(|s| !old.contains(s))
                .map(|s| st.link(node, *s))
                .collect();
            let removed: Vec<LinkId> = old
                .iter()
                .filter(|s| !shards.contains(s))
                .map(|s| st.link(node, *s))
                .collect();
            (added, removed)
        };
        let ours = self.shards_of(room);
        for k in ours {
            let Some(tx) = self.drivers.get(usize::from(k)) else {
                continue;
            };
            for (links, on) in [(&added, true), (&removed, false)] {
                for link in links {
                    let msg = RemoteIn::LinkRoom {
                        link: *link,
                        room: room.clone(),
                        on,
                    };
                    let _ = tx.send(msg).await;
                }
            }
        }
    }

    /// Carries out one event of the endpoint.
    async fn event(&self, e: RelayEvent) {
        match e {
            RelayEvent::LinkUp { node } => {
                tracing::info!(%node, "relay link up");
                let rooms: Vec<RoomId> = self
                    .state()
                    .rooms
                    .iter()
                    .filter(|(_, peers)| peers.iter().any(|p| p.node_id.as_str() == &*node))
                    .map(|(r, _)| r.clone())
                    .collect();
                for room in rooms {
                    let frame = Announce {
                        shards: self.shards_of(&room),
                        room,
                        reply: true,
                    }
                    .encode();
                    let _ = self.endpoint.send_control(&node, SHELL, SHELL, &frame);
                }
            }
            RelayEvent::LinkDown { node } => {
                tracing::warn!(%node, "relay link down");
                let links: Vec<LinkId> = {
                    let mut st = self.state();
                    st.parts.retain(|(_, n), _| *n != node);
                    st.ids
                        .iter()
                        .filter(|((n, _), _)| *n == node)
                        .map(|(_, id)| *id)
                        .collect()
                };
                for tx in &self.drivers {
                    let _ = tx.send(RemoteIn::Down(links.clone())).await;
                }
            }
            RelayEvent::Control {
                node,
                src: SHELL,
                dst: SHELL,
                payload,
            } => {
                let Some(a) = Announce::decode(&payload) else {
                    tracing::debug!(%node, "malformed relay announcement ignored");
                    return;
                };
                self.set_parts(&a.room, &node, a.shards).await;
                if a.reply {
                    let frame = Announce {
                        shards: self.shards_of(&a.room),
                        room: a.room,
                        reply: false,
                    }
                    .encode();
                    let _ = self.endpoint.send_control(&node, SHELL, SHELL, &frame);
                }
            }
            RelayEvent::Control {
                node,
                src,
                dst,
                payload,
            } => {
                let link = self.state().link(&node, src);
                if let Some(tx) = self.drivers.get(usize::from(dst)) {
                    let _ = tx.send(RemoteIn::Frame { link, payload }).await;
                }
            }
            RelayEvent::Datagram {
                node,
                src,
                dst,
                payload,
            } => {
                let link = self.state().link(&node, src);
                if let Some(tx) = self.drivers.get(usize::from(dst))
                    && tx.try_send(RemoteIn::Frame { link, payload }).is_err()
                {
                    self.inbound_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Routes the endpoint's events until it closes.
pub(crate) async fn route(relay: Arc<NodeRelay>, mut events: mpsc::Receiver<RelayEvent>) {
    while let Some(e) = events.recv().await {
        relay.event(e).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::relay::auth::RelayAuth;
    use crate::relay::quic::RelayConfig;

    /// A relay for a node of two shards where `room` is open on both, and
    /// the drivers' inbound queues.
    fn relay(room: &RoomId) -> (NodeRelay, Vec<mpsc::Receiver<RemoteIn>>) {
        let auth = RelayAuth::from_secret(b"a cluster secret for unit tests").unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let (endpoint, _events) =
            RelayEndpoint::bind(addr, &auth, RelayConfig::new("here")).unwrap();
        let mut placement = Placement::new(2, 1);
        let now = Instant::now();
        for _ in 0..2 {
            let k = placement.place_join(now, room);
            placement.joined(room, k, true);
        }
        assert_eq!(placement.open_shards_of(room), [0, 1]);
        let (txs, rxs) = (0..2).map(|_| mpsc::channel(16)).unzip();
        let placement = Some(Arc::new(Mutex::new(placement)));
        (NodeRelay::new(endpoint, txs, placement), rxs)
    }

    fn announce(node: &str, room: &RoomId, shards: &[u16]) -> RelayEvent {
        RelayEvent::Control {
            node: node.into(),
            src: SHELL,
            dst: SHELL,
            payload: Announce {
                room: room.clone(),
                shards: shards.to_vec(),
                reply: false,
            }
            .encode()
            .into(),
        }
    }

    /// What a driver was handed, as (link, on) for LinkRoom and link for Down.
    fn taken(rx: &mut mpsc::Receiver<RemoteIn>) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|m| match m {
                RemoteIn::LinkRoom { link, on, .. } => format!("{}:{on}", link.0 - REMOTE_BASE),
                RemoteIn::Down(links) => format!(
                    "down{:?}",
                    links.iter().map(|l| l.0 - REMOTE_BASE).collect::<Vec<_>>()
                ),
                RemoteIn::Frame { link, .. } => format!("frame{}", link.0 - REMOTE_BASE),
            })
            .collect()
    }

    #[tokio::test]
    async fn announcements_link_every_shard_pair_and_unlink_the_shards_gone() {
        let room = RoomId::new("r").unwrap();
        let (relay, mut rxs) = relay(&room);
        // Node x's shards 0 and 2 hold the room: both our shards link to both.
        relay.event(announce("x", &room, &[0, 2])).await;
        for rx in &mut rxs {
            assert_eq!(taken(rx), ["0:true", "1:true"]);
        }
        assert_eq!(
            relay.peer_of(LinkId(REMOTE_BASE + 1)),
            Some(("x".into(), 2))
        );
        // The same again changes nothing; then x's shard 0 closes its part.
        relay.event(announce("x", &room, &[0, 2])).await;
        relay.event(announce("x", &room, &[2])).await;
        for rx in &mut rxs {
            assert_eq!(taken(rx), ["0:false"]);
        }
        assert_eq!(relay.links_of_room(&room), [LinkId(REMOTE_BASE + 1)]);
        // A frame from x's shard 2 to our shard 1 goes to that driver only,
        // on the link numbered for x's shard 2.
        relay
            .event(RelayEvent::Control {
                node: "x".into(),
                src: 2,
                dst: 1,
                payload: Bytes::from_static(b"core frame"),
            })
            .await;
        assert!(taken(&mut rxs[0]).is_empty());
        assert_eq!(taken(&mut rxs[1]), ["frame1"]);
        // Node x is gone: every driver drops its links to it.
        relay.event(RelayEvent::LinkDown { node: "x".into() }).await;
        for rx in &mut rxs {
            let mut got = taken(rx);
            got.sort();
            assert!(got == ["down[0, 1]"] || got == ["down[1, 0]"], "{got:?}");
        }
        assert!(relay.links_of_room(&room).is_empty());
        // Frames to a shard this node does not have are dropped.
        relay
            .event(RelayEvent::Datagram {
                node: "x".into(),
                src: 2,
                dst: 7,
                payload: Bytes::from_static(b"media"),
            })
            .await;
        for rx in &mut rxs {
            assert!(taken(rx).is_empty());
        }
    }

    #[test]
    fn an_announcement_survives_the_wire_and_garbage_does_not_parse() {
        let a = Announce {
            room: RoomId::new("r-1").unwrap(),
            shards: vec![0, 3, 65534],
            reply: true,
        };
        assert_eq!(Announce::decode(&a.encode()), Some(a.clone()));
        let e = a.encode();
        for cut in 0..e.len() - 3 {
            // Truncated: the room's name is cut or the shards are short;
            // some cuts still leave a valid (shorter) name.
            let d = Announce::decode(&e[..cut]);
            assert!(d.is_none() || d.unwrap().room.as_str().len() < 3);
        }
        assert_eq!(Announce::decode(&[2, 0, 0, 0, b'r']), None);
        assert_eq!(Announce::decode(&[1, 0, 0, 5, 0, 1, b'r']), None);
        assert_eq!(Announce::decode(&[1, 0, 0, 0, 0xff]), None);
    }
}
