//! Tokio shell of the vela SFU.
//!
//! A driver task per shard owns the shard's UDP sockets (one per advertised
//! address, all on the shard's port) and its [`vela_media_core::Sfu`];
//! everything else talks to the drivers through a [`MediaHandle`], which
//! finds a room's or participant's shard. A driver feeds its core datagrams,
//! commands and timeouts, and carries out what the core asks: send
//! datagrams, deliver signals to participants, send relay messages. One
//! shard is one core's work: shards share no state on the media path. A
//! room too big for one shard spreads over several, and a room over several
//! nodes too; their cores are joined by relay links ([`relay`]): channels
//! between drivers, QUIC between nodes.

mod driver;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
mod handle;
mod placement;
pub mod relay;
mod socket;
mod supervisor;
mod tcp;
mod udp;

pub use handle::{MediaError, MediaHandle, PermissionsUpdate, SignalReceiver};
pub use relay::{CoreLinkStats, LinkPeer, LocalLinkStats, NodePeer, RelayEndpoint, RelayEvent};
pub use socket::{BindError, MediaSockets, local_addresses};
pub use supervisor::DriverFailed;
pub use tcp::{
    CloseReason, FIRST_FRAME_TIMEOUT as TCP_FIRST_FRAME_TIMEOUT,
    MAX_CONNECTIONS as MAX_TCP_CONNECTIONS, MAX_PENDING_PER_IP as TCP_MAX_PENDING_PER_IP,
    TcpListeners, TcpStats,
};
pub use vela_media_core as core;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::task::JoinHandle;
use vela_media_core::{RoomEvent, Sfu, SfuConfig};

/// Ends when every driver has stopped as asked, or with an error as soon as
/// one has failed.
pub type MediaTask = JoinHandle<Result<(), DriverFailed>>;

/// Starts the driver task on bound sockets; the config's candidates should be
/// the sockets' advertised addresses.
pub fn spawn(sockets: MediaSockets, config: SfuConfig) -> (MediaHandle, MediaTask) {
    spawn_shards(vec![(sockets, config)], None)
}

/// Like [`spawn`], and the core's room events go to `events`; when that
/// queue is full, events are dropped rather than delay media.
pub fn spawn_with_events(
    sockets: MediaSockets,
    config: SfuConfig,
    events: tokio::sync::mpsc::Sender<RoomEvent>,
) -> (MediaHandle, MediaTask) {
    spawn_shards(vec![(sockets, config)], Some(events))
}

/// How a node's shards share its rooms, and its relay to other nodes.
#[derive(Debug, Default)]
pub struct NodeOptions {
    id_base: u64,
    max_room_participants_per_shard: u32,
    relay: Option<(RelayEndpoint, tokio::sync::mpsc::Receiver<RelayEvent>)>,
    tcp: Option<TcpListeners>,
}

impl NodeOptions {
    /// One shard per room, ids from 1 (a single node).
    pub fn new() -> Self {
        NodeOptions::default()
    }

    /// Numbers this node's participants and tracks above `base` (unique in
    /// the cluster: each node its own base); every shard's config gets it.
    pub fn set_id_base(mut self, base: u64) -> Self {
        self.id_base = base;
        self
    }

    /// Participants of one room a shard takes before the room's next ones
    /// go to another shard, linked to it (a 1 -> N room then uses every
    /// core); 0 keeps a room on one shard.
    pub fn set_max_room_participants_per_shard(mut self, n: u32) -> Self {
        self.max_room_participants_per_shard = n;
        self
    }

    /// Relays rooms to other nodes over this endpoint (and its events, as
    /// [`RelayEndpoint::bind`] returned them); see
    /// [`MediaHandle::relay_room`].
    pub fn set_relay(
        mut self,
        endpoint: RelayEndpoint,
        events: tokio::sync::mpsc::Receiver<RelayEvent>,
    ) -> Self {
        self.relay = Some((endpoint, events));
        self
    }

    /// Takes ICE over TCP on these listeners (the node's one TCP port):
    /// each connection goes to the shard of the participant its first STUN
    /// request names. The shards' configs should advertise
    /// [`TcpListeners::advertised`] with
    /// [`vela_media_core::SfuConfig::set_tcp_candidates`].
    pub fn set_tcp(mut self, listeners: TcpListeners) -> Self {
        self.tcp = Some(listeners);
        self
    }
}

/// Starts one driver task per shard, each with its own sockets (its own
/// port) and core; a room lives on one shard, the least loaded when it
/// opened ([`MediaHandle::shard_of_room`]) (see [`spawn_node`] for rooms
/// spread over shards).
/// Shard `k` of `n` must number its ids with
/// [`SfuConfig::set_id_space`]`(k + 1, n)`, which is how the handle finds a
/// participant's shard. The tasks run in parallel on the runtime's threads.
/// The returned task ends when every driver has stopped, or as soon as one
/// fails (panics), with the error.
pub fn spawn_shards(
    shards: Vec<(MediaSockets, SfuConfig)>,
    events: Option<tokio::sync::mpsc::Sender<RoomEvent>>,
) -> (MediaHandle, MediaTask) {
    spawn_node(shards, events, NodeOptions::new())
}

/// Like [`spawn_shards`], with the node's options: its id base, and how far
/// a room fills one shard before it spreads over several, whose cores are
/// then joined by in-process relay links.
pub fn spawn_node(
    shards: Vec<(MediaSockets, SfuConfig)>,
    events: Option<tokio::sync::mpsc::Sender<RoomEvent>>,
    options: NodeOptions,
) -> (MediaHandle, MediaTask) {
    let mut txs = Vec::with_capacity(shards.len());
    let mut tasks = Vec::with_capacity(shards.len());
    let n = shards.len();
    // With one shard and no relay, nothing is placed or linked.
    let placement = (n > 1 || options.relay.is_some()).then(|| {
        Arc::new(Mutex::new(placement::Placement::new(
            n,
            options.max_room_participants_per_shard,
        )))
    });
    let mut links: Vec<_> = if n > 1 {
        relay::local::mesh(n).into_iter().map(Some).collect()
    } else {
        (0..n).map(|_| None).collect()
    };
    let mut remote_rxs: Vec<_> = (0..n).map(|_| None).collect();
    let node = options.relay.map(|(endpoint, relay_events)| {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| tokio::sync::mpsc::channel(relay::node::INBOUND_QUEUE))
            .unzip();
        remote_rxs = rxs.into_iter().map(Some).collect();
        let node = Arc::new(relay::node::NodeRelay::new(
            endpoint,
            txs,
            placement.clone(),
        ));
        tokio::spawn(relay::node::route(node.clone(), relay_events));
        node
    });
    let tcp_counters = options
        .tcp
        .as_ref()
        .map(|_| Arc::new(tcp::Counters::default()));
    let (tcp_txs, mut tcp_rxs): (Vec<_>, Vec<_>) = match &tcp_counters {
        Some(_) => (0..n)
            .map(|_| {
                let (tx, rx) = tokio::sync::mpsc::channel(tcp::SHARD_QUEUE);
                (tx, Some(rx))
            })
            .unzip(),
        None => (Vec::new(), Vec::new()),
    };
    if let (Some(listeners), Some(counters)) = (options.tcp, &tcp_counters) {
        let txs: Arc<[_]> = tcp_txs.clone().into();
        for (listener, advertised) in listeners.listeners {
            tokio::spawn(tcp::accept_loop(
                listener,
                advertised,
                txs.clone(),
                counters.clone(),
            ));
        }
    }
    for (k, (sockets, config)) in shards.into_iter().enumerate() {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let sfu = Sfu::new(config.set_id_base(options.id_base), Instant::now());
        let wiring = driver::Wiring {
            events: events.clone(),
            placement: placement.clone().map(|p| (k, p)),
            links: links[k].take(),
            remote: node.clone().zip(remote_rxs[k].take()),
            tcp: tcp_counters
                .clone()
                .zip(tcp_rxs.get_mut(k).and_then(Option::take))
                .map(|(counters, rx)| (tcp::TcpShard::new(counters, tcp_txs[k].clone()), rx)),
        };
        tasks.push(tokio::spawn(driver::run(sfu, sockets, rx, wiring)));
        txs.push(tx);
    }
    let all = tokio::spawn(supervisor::supervise(tasks));
    let handle = MediaHandle::new(txs, placement)
        .with_relay(node)
        .with_tcp(tcp_counters);
    (handle, all)
}
