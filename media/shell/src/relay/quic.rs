//! The QUIC transport between nodes: one connection per node pair carrying
//! opaque frames tagged with a source and destination shard.
//!
//! Media goes in QUIC datagrams (unreliable; a frame that does not fit or
//! finds the send buffer full is dropped and counted, never waited for: the
//! media drivers must not block on the network). Control goes on one
//! bidirectional stream per connection, length-prefixed, in order. Sends are
//! synchronous and non-blocking; what arrives comes out of one event queue.
//!
//! One connection per pair: either node may dial (both do, when both were
//! told to link), and the node with the smaller id decides which connection
//! is the link (the first it completes; a second one from the same peer
//! instance is refused as a duplicate, one from a restarted peer replaces
//! the old). Nodes asked to [`RelayEndpoint::link`] a peer keep redialing it
//! with backoff while it is unreachable; keep-alives and the idle timeout
//! notice a dead peer within about two seconds ([`RelayEvent::LinkDown`]).
//!
//! Wire format (all integers big-endian):
//! - datagram: `src u16, dst u16, payload`;
//! - control frame: `len u32, src u16, dst u16, payload[len]`;
//! - stream start: each side sends `"VRLY", version u8, instance u64,
//!   id_len u16, node id`; then the deciding node sends one byte
//!   (1 = this connection is the link, 0 = duplicate).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use rustc_hash::FxHashMap;
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::auth::{self, AuthError, RelayAuth};

/// A node's id in the cluster (`cluster.node_id`), shared cheaply.
pub type NodeName = Arc<str>;

/// The largest control frame accepted; a bigger length is a protocol error.
pub const MAX_CONTROL_FRAME: usize = 1 << 20;

/// Bytes of the datagram header (src and dst shard).
pub const DATAGRAM_HEADER: usize = 4;

const CONTROL_HEADER: usize = 8;
const SOCKET_BUFFER: usize = 4 << 20;
const HELLO_MAGIC: &[u8; 4] = b"VRLY";
const HELLO_VERSION: u8 = 1;

/// Application close codes.
const CLOSE_SHUTDOWN: u32 = 0;
const CLOSE_DUPLICATE: u32 = 1;
const CLOSE_SLOW_PEER: u32 = 2;
const CLOSE_PROTOCOL: u32 = 3;
const CLOSE_UNLINKED: u32 = 4;
const CLOSE_REPLACED: u32 = 5;

/// Settings of the relay endpoint; [`RelayConfig::new`] has the defaults.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// This node's id (`cluster.node_id`); the peer checks it against our
    /// certificate.
    pub node_id: String,
    /// A link without a packet from the peer for this long is down.
    pub idle_timeout: Duration,
    /// Keep-alive interval (well under `idle_timeout`).
    pub keep_alive: Duration,
    /// First redial delay after a failed dial; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest delay between redials.
    pub reconnect_max: Duration,
    /// Limit on a dial and on the stream start exchange.
    pub handshake_timeout: Duration,
    /// Control bytes queued for one link past which the peer is too slow:
    /// the link is closed (and redialed) rather than memory grown.
    pub control_queue_bytes: usize,
    /// Datagrams queued for sending per connection, in bytes: small, as
    /// media that waits is stale (256 KiB is ~40 ms at 50 Mbit/s); past it
    /// frames are dropped and counted (`dropped_queue_full`).
    pub datagram_send_buffer: usize,
    /// Datagrams received and not yet taken per connection, in bytes:
    /// large, to ride out a busy runtime without loss.
    pub datagram_receive_buffer: usize,
    /// UDP payload size a connection starts with (MTU discovery raises it,
    /// black-hole detection lowers it to 1200). 1400 fits the links between
    /// nodes of one network (Ethernet, most tunnels) and gives datagrams of
    /// ~1360 B from the start, room for a 1200 B RTP packet and its header.
    pub initial_mtu: u16,
    /// Capacity of the event queue (datagrams past it are dropped, counted;
    /// control and link events wait).
    pub event_capacity: usize,
}

impl RelayConfig {
    /// Defaults for `node_id`: a dead peer noticed within 2 s, redials from
    /// 100 ms to 2 s, 4 MiB of control, 256 KiB of datagrams to send and 2 MiB
    /// received per link.
    pub fn new(node_id: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            idle_timeout: Duration::from_millis(2000),
            keep_alive: Duration::from_millis(400),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_millis(2000),
            handshake_timeout: Duration::from_millis(3000),
            control_queue_bytes: 4 << 20,
            datagram_send_buffer: 256 << 10,
            datagram_receive_buffer: 2 << 20,
            initial_mtu: 1400,
            event_capacity: 8192,
        }
    }
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Credentials or TLS configuration.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Binding or configuring the UDP socket.
    #[error("relay socket: {0}")]
    Io(#[from] std::io::Error),
    /// A setting out of range.
    #[error("relay config: {0}")]
    Config(String),
}

/// Why a frame was not sent (datagrams: also counted in [`LinkStats`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No connection to that node now.
    #[error("no relay link to that node")]
    NoLink,
    /// The datagram (header included) exceeds what the path carries now.
    #[error("datagram of {len} bytes exceeds the link's {max}")]
    TooLarge {
        /// Frame size with header.
        len: usize,
        /// The link's current maximum.
        max: usize,
    },
    /// The datagram send buffer is full (congestion): dropped.
    #[error("datagram send buffer full")]
    QueueFull,
    /// The control queue passed its bound: the link was closed.
    #[error("control queue full, link closed")]
    ControlOverflow,
    /// A control frame over [`MAX_CONTROL_FRAME`].
    #[error("control frame too large")]
    ControlTooLarge,
}

/// What the endpoint reports, in order per link.
#[derive(Debug, Clone)]
pub enum RelayEvent {
    /// A link to `node` is up (frames can be sent).
    LinkUp {
        /// The peer.
        node: NodeName,
    },
    /// The link to `node` is gone (peer dead, closed, replaced or too slow).
    LinkDown {
        /// The peer.
        node: NodeName,
    },
    /// A media frame.
    Datagram {
        /// The peer.
        node: NodeName,
        /// Shard on the peer that sent it.
        src: u16,
        /// Shard of this node it is for.
        dst: u16,
        /// The frame, without the header.
        payload: Bytes,
    },
    /// A control frame (reliable, in order on the link).
    Control {
        /// The peer.
        node: NodeName,
        /// Shard on the peer that sent it.
        src: u16,
        /// Shard of this node it is for.
        dst: u16,
        /// The frame, without the header.
        payload: Bytes,
    },
}

/// Counters of one peer, kept across its reconnections.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkStats {
    /// The peer.
    pub node: String,
    /// Whether a connection is up now.
    pub connected: bool,
    /// How many times the link came up.
    pub links_up: u64,
    /// Datagrams handed to QUIC.
    pub datagrams_sent: u64,
    /// Their payload bytes (headers excluded).
    pub bytes_sent: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Their payload bytes.
    pub bytes_received: u64,
    /// Datagrams not sent: larger than the path allows.
    pub dropped_too_large: u64,
    /// Datagrams not sent: send buffer full (congestion).
    pub dropped_queue_full: u64,
    /// Frames not sent: no connection.
    pub dropped_no_link: u64,
    /// Datagrams received but dropped: the event queue was full.
    pub dropped_inbound: u64,
    /// Control frames queued / received.
    pub control_sent: u64,
    /// Control frames received.
    pub control_received: u64,
    /// Times the link was closed because the peer read control too slowly.
    pub control_overflows: u64,
    /// QUIC packets declared lost (all connections to the peer).
    pub lost_packets: u64,
    /// QUIC congestion events (all connections to the peer).
    pub congestion_events: u64,
    /// Smoothed round-trip time of the current connection.
    pub rtt: Option<Duration>,
    /// Congestion window of the current connection, in bytes.
    pub cwnd: Option<u64>,
    /// Largest payload [`RelayEndpoint::send_datagram`] takes now.
    pub max_datagram_payload: Option<usize>,
}

/// The endpoint's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RelayStats {
    /// Per peer.
    pub links: Vec<LinkStats>,
    /// Connections that failed authentication or the stream start
    /// (strangers, wrong ids, protocol errors), either direction.
    pub refused: u64,
}

#[derive(Default)]
struct Counters {
    links_up: AtomicU64,
    datagrams_sent: AtomicU64,
    bytes_sent: AtomicU64,
    datagrams_received: AtomicU64,
    bytes_received: AtomicU64,
    dropped_too_large: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_no_link: AtomicU64,
    dropped_inbound: AtomicU64,
    control_sent: AtomicU64,
    control_received: AtomicU64,
    control_overflows: AtomicU64,
    // Of connections that ended; the current one's are read live.
    lost_packets: AtomicU64,
    congestion_events: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The connection that is the link to a peer now.
struct Active {
    conn: Connection,
    generation: u64,
    instance: u64,
    control: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
}

struct Peer {
    name: NodeName,
    addr: std::sync::Mutex<Option<SocketAddr>>,
    wanted: std::sync::atomic::AtomicBool,
    /// The dial loop that may run (an unlink then link starts a new one;
    /// the old one sees it is stale and ends).
    dialer: AtomicU64,
    active: RwLock<Option<Active>>,
    /// Serialises link transitions so LinkDown/LinkUp come out in order.
    transition: tokio::sync::Mutex<()>,
    changed: tokio::sync::Notify,
    counters: Counters,
}

impl Peer {
    fn new(name: NodeName) -> Self {
        Self {
            name,
            addr: std::sync::Mutex::new(None),
            wanted: std::sync::atomic::AtomicBool::new(false),
            dialer: AtomicU64::new(0),
            active: RwLock::new(None),
            transition: tokio::sync::Mutex::new(()),
            changed: tokio::sync::Notify::new(),
            counters: Counters::default(),
        }
    }

    fn generation(&self) -> Option<u64> {
        read(&self.active).as_ref().map(|a| a.generation)
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

struct Shared {
    node_id: NodeName,
    instance: u64,
    config: RelayConfig,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    peers: RwLock<FxHashMap<NodeName, Arc<Peer>>>,
    events: mpsc::Sender<RelayEvent>,
    generations: AtomicU64,
    refused: AtomicU64,
    cancel: CancellationToken,
}

/// Closes the endpoint when the last [`RelayEndpoint`] handle goes.
struct CloseGuard(Arc<Shared>);

impl Drop for CloseGuard {
    fn drop(&mut self) {
        self.0.cancel.cancel();
        self.0
            .endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
    }
}

/// This node's relay endpoint (cheap to clone; the endpoint closes when the
/// last clone is dropped or on [`RelayEndpoint::close`]).
#[derive(Clone)]
pub struct RelayEndpoint {
    shared: Arc<Shared>,
    _guard: Arc<CloseGuard>,
}

impl std::fmt::Debug for RelayEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayEndpoint")
            .field("node_id", &self.shared.node_id)
            .finish_non_exhaustive()
    }
}

impl RelayEndpoint {
    /// Binds `addr` (`cluster.relay_addr`) and starts accepting peers. Must
    /// run inside a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        auth: &RelayAuth,
        config: RelayConfig,
    ) -> Result<(Self, mpsc::Receiver<RelayEvent>), RelayError> {
        Self::from_socket(UdpSocket::bind(addr)?, auth, config)
    }

    /// Like [`RelayEndpoint::bind`] on a socket the caller bound.
    pub fn from_socket(
        socket: UdpSocket,
        auth: &RelayAuth,
        config: RelayConfig,
    ) -> Result<(Self, mpsc::Receiver<RelayEvent>), RelayError> {
        if config.node_id.is_empty() {
            return Err(RelayError::Config("node id is empty".into()));
        }
        if config.keep_alive >= config.idle_timeout {
            return Err(RelayError::Config(
                "keep_alive must be shorter than idle_timeout".into(),
            ));
        }
        // Bursts (keyframes of many publishers) must not overflow the
        // kernel's default receive buffer (~200 KiB): ask for more, best
        // effort (Linux caps it at net.core.rmem_max).
        for (name, result) in [
            (
                "receive",
                nix::sys::socket::setsockopt(
                    &socket,
                    nix::sys::socket::sockopt::RcvBuf,
                    &SOCKET_BUFFER,
                ),
            ),
            (
                "send",
                nix::sys::socket::setsockopt(
                    &socket,
                    nix::sys::socket::sockopt::SndBuf,
                    &SOCKET_BUFFER,
                ),
            ),
        ] {
            if let Err(e) = result {
                debug!(error = %e, "relay socket {name} buffer not raised");
            }
        }
        let creds = auth.node_credentials(&config.node_id)?;
        let (server_tls, client_tls) = auth::tls_configs(creds)?;
        let transport = Arc::new(transport_config(&config)?);
        let server_crypto =
            QuicServerConfig::try_from(server_tls).map_err(|e| AuthError::Tls(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(transport.clone());
        let client_crypto =
            QuicClientConfig::try_from(client_tls).map_err(|e| AuthError::Tls(e.to_string()))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport);
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        let (tx, rx) = mpsc::channel(config.event_capacity.max(16));
        let shared = Arc::new(Shared {
            node_id: config.node_id.as_str().into(),
            instance: random_u64(),
            config,
            endpoint,
            client_config,
            peers: RwLock::new(FxHashMap::default()),
            events: tx,
            generations: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            cancel: CancellationToken::new(),
        });
        tokio::spawn(accept_loop(shared.clone()));
        info!(
            node = %shared.node_id,
            addr = ?shared.endpoint.local_addr().ok(),
            "relay endpoint listening"
        );
        let guard = Arc::new(CloseGuard(shared.clone()));
        Ok((
            Self {
                shared,
                _guard: guard,
            },
            rx,
        ))
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.endpoint.local_addr()
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeName {
        &self.shared.node_id
    }

    /// Keep a link to `node` at `addr`: dial it now if there is none, and
    /// redial with backoff whenever it is lost, until [`RelayEndpoint::unlink`].
    /// Calling it again (e.g. with a new address) is cheap.
    pub fn link(&self, node: &str, addr: SocketAddr) {
        if node == &*self.shared.node_id {
            return;
        }
        let peer = self.shared.peer(node);
        *peer.addr.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
        if !peer.wanted.swap(true, Ordering::SeqCst) {
            let dialer = peer.dialer.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(dial_loop(self.shared.clone(), peer, dialer));
        } else {
            peer.changed.notify_waiters();
        }
    }

    /// Stop keeping a link to `node` and close it if up. (The peer may dial
    /// again if it still keeps a link to us: links are accepted from any
    /// node of the cluster.)
    pub fn unlink(&self, node: &str) {
        let Some(peer) = read(&self.shared.peers).get(node).cloned() else {
            return;
        };
        peer.wanted.store(false, Ordering::SeqCst);
        if let Some(active) = read(&peer.active).as_ref() {
            active
                .conn
                .close(VarInt::from_u32(CLOSE_UNLINKED), b"unlinked");
        }
        peer.changed.notify_waiters();
    }

    /// Whether a link to `node` is up.
    pub fn is_linked(&self, node: &str) -> bool {
        read(&self.shared.peers)
            .get(node)
            .is_some_and(|p| read(&p.active).is_some())
    }

    /// The largest datagram payload the link to `node` carries now (the
    /// path MTU less QUIC's and our headers), if it is up.
    pub fn max_datagram_payload(&self, node: &str) -> Option<usize> {
        let peers = read(&self.shared.peers);
        let peer = peers.get(node)?;
        let active = read(&peer.active);
        active
            .as_ref()?
            .conn
            .max_datagram_size()
            .map(|m| m.saturating_sub(DATAGRAM_HEADER))
    }

    /// Sends a media frame from shard `src` to shard `dst` of `node`
    /// unreliably. Never blocks; a frame that is too large or finds the send
    /// buffer full is dropped and counted.
    pub fn send_datagram(
        &self,
        node: &str,
        src: u16,
        dst: u16,
        payload: &[u8],
    ) -> Result<(), SendError> {
        let peers = read(&self.shared.peers);
        let Some(peer) = peers.get(node) else {
            return Err(SendError::NoLink);
        };
        let c = &peer.counters;
        let active = read(&peer.active);
        let Some(active) = active.as_ref() else {
            bump(&c.dropped_no_link);
            return Err(SendError::NoLink);
        };
        let len = DATAGRAM_HEADER + payload.len();
        // quinn would make room by dropping the oldest queued datagram;
        // dropping the newest instead keeps the count honest. (Too large
        // is quinn's check in `send_datagram`, one lock fewer per frame.)
        if active.conn.datagram_send_buffer_space() < len {
            bump(&c.dropped_queue_full);
            return Err(SendError::QueueFull);
        }
        let mut frame = BytesMut::with_capacity(len);
        frame.put_u16(src);
        frame.put_u16(dst);
        frame.put_slice(payload);
        match active.conn.send_datagram(frame.freeze()) {
            Ok(()) => {
                bump(&c.datagrams_sent);
                c.bytes_sent
                    .fetch_add(payload.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(quinn::SendDatagramError::TooLarge) => {
                bump(&c.dropped_too_large);
                let max = active.conn.max_datagram_size().unwrap_or(0);
                Err(SendError::TooLarge { len, max })
            }
            Err(_) => {
                bump(&c.dropped_no_link);
                Err(SendError::NoLink)
            }
        }
    }

    /// Queues a control frame from shard `src` to shard `dst` of `node`
    /// (reliable, in order). Never blocks; if the link's control queue is
    /// past its bound the peer is too slow and the link is closed (it is
    /// redialed; the core sees LinkDown and LinkUp).
    pub fn send_control(
        &self,
        node: &str,
        src: u16,
        dst: u16,
        payload: &[u8],
    ) -> Result<(), SendError> {
        if payload.len() > MAX_CONTROL_FRAME {
            return Err(SendError::ControlTooLarge);
        }
        let peers = read(&self.shared.peers);
        let Some(peer) = peers.get(node) else {
            return Err(SendError::NoLink);
        };
        let c = &peer.counters;
        let active = read(&peer.active);
        let Some(active) = active.as_ref() else {
            bump(&c.dropped_no_link);
            return Err(SendError::NoLink);
        };
        let len = CONTROL_HEADER + payload.len();
        let queued = active.queued.fetch_add(len, Ordering::AcqRel) + len;
        if queued > self.shared.config.control_queue_bytes {
            active.queued.fetch_sub(len, Ordering::AcqRel);
            bump(&c.control_overflows);
            warn!(
                node = %self.shared.node_id,
                peer = %peer.name,
                queued,
                "relay peer reads control too slowly: closing the link"
            );
            active
                .conn
                .close(VarInt::from_u32(CLOSE_SLOW_PEER), b"control queue full");
            return Err(SendError::ControlOverflow);
        }
        let mut frame = BytesMut::with_capacity(len);
        frame.put_u32(payload.len() as u32);
        frame.put_u16(src);
        frame.put_u16(dst);
        frame.put_slice(payload);
        if active.control.send(frame.freeze()).is_err() {
            active.queued.fetch_sub(len, Ordering::AcqRel);
            bump(&c.dropped_no_link);
            return Err(SendError::NoLink);
        }
        bump(&c.control_sent);
        Ok(())
    }

    /// Counters per peer and of the endpoint.
    pub fn stats(&self) -> RelayStats {
        let peers = read(&self.shared.peers);
        let mut links: Vec<LinkStats> = peers.values().map(|p| link_stats(p)).collect();
        links.sort_by(|a, b| a.node.cmp(&b.node));
        RelayStats {
            links,
            refused: self.shared.refused.load(Ordering::Relaxed),
        }
    }

    /// Closes every link and waits (at most `limit`) until the peers were
    /// told, so they see LinkDown at once rather than after the idle
    /// timeout: for a graceful shutdown.
    pub async fn shutdown(&self, limit: Duration) {
        self.close();
        let _ = tokio::time::timeout(limit, self.shared.endpoint.wait_idle()).await;
    }

    /// Closes every link and the endpoint now (also done when the last
    /// handle is dropped).
    pub fn close(&self) {
        self.shared.cancel.cancel();
        self.shared
            .endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
    }
}

fn link_stats(p: &Peer) -> LinkStats {
    let c = &p.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut s = LinkStats {
        node: p.name.to_string(),
        links_up: get(&c.links_up),
        datagrams_sent: get(&c.datagrams_sent),
        bytes_sent: get(&c.bytes_sent),
        datagrams_received: get(&c.datagrams_received),
        bytes_received: get(&c.bytes_received),
        dropped_too_large: get(&c.dropped_too_large),
        dropped_queue_full: get(&c.dropped_queue_full),
        dropped_no_link: get(&c.dropped_no_link),
        dropped_inbound: get(&c.dropped_inbound),
        control_sent: get(&c.control_sent),
        control_received: get(&c.control_received),
        control_overflows: get(&c.control_overflows),
        lost_packets: get(&c.lost_packets),
        congestion_events: get(&c.congestion_events),
        ..LinkStats::default()
    };
    if let Some(active) = read(&p.active).as_ref() {
        let path = active.conn.stats().path;
        s.connected = true;
        s.lost_packets += path.lost_packets;
        s.congestion_events += path.congestion_events;
        s.rtt = Some(path.rtt);
        s.cwnd = Some(path.cwnd);
        s.max_datagram_payload = active
            .conn
            .max_datagram_size()
            .map(|m| m.saturating_sub(DATAGRAM_HEADER));
    }
    s
}

fn transport_config(config: &RelayConfig) -> Result<quinn::TransportConfig, RelayError> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout)
        .map_err(|_| RelayError::Config("idle_timeout out of range".into()))?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(Some(config.keep_alive));
    t.datagram_receive_buffer_size(Some(config.datagram_receive_buffer));
    t.datagram_send_buffer_size(config.datagram_send_buffer);
    t.initial_mtu(config.initial_mtu.max(1200));
    // A black hole (or a false alarm under heavy random loss) drops the MTU
    // to 1200, where a full-size RTP packet no longer fits: probe upward
    // again after 5 s rather than quinn's 60 s, so video is back soon.
    let mut mtud = quinn::MtuDiscoveryConfig::default();
    mtud.black_hole_cooldown(Duration::from_secs(5));
    t.mtu_discovery_config(Some(mtud));
    // One stream per connection: the control stream the dialer opens.
    t.max_concurrent_bidi_streams(VarInt::from_u32(1));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    Ok(t)
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // Distinguishes restarts of a node; not a secret.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

impl Shared {
    fn peer(&self, node: &str) -> Arc<Peer> {
        if let Some(p) = read(&self.peers).get(node) {
            return p.clone();
        }
        write(&self.peers)
            .entry(node.into())
            .or_insert_with_key(|k| Arc::new(Peer::new(k.clone())))
            .clone()
    }

    fn refuse(&self, why: &str, remote: SocketAddr) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        warn!(node = %self.node_id, %remote, why, "relay connection refused");
    }
}

async fn accept_loop(shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            i = shared.endpoint.accept() => i,
        };
        let Some(incoming) = incoming else { return };
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let timeout = shared.config.handshake_timeout;
            let conn = match tokio::time::timeout(timeout, incoming).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) if is_auth_failure(&e) => {
                    shared.refuse(&format!("handshake: {e}"), remote);
                    return;
                }
                Ok(Err(e)) => {
                    // E.g. a crossed dial the peer abandoned.
                    debug!(node = %shared.node_id, %remote, error = %e, "relay handshake ended");
                    return;
                }
                Err(_) => {
                    shared.refuse("handshake timed out", remote);
                    return;
                }
            };
            // start_link bounds its own exchanges; what follows them
            // (installing the link) must not be cut short.
            let result = match within(timeout, conn.accept_bi()).await {
                Ok(Ok((send, recv))) => start_link(&shared, &conn, send, recv, None).await,
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                debug!(node = %shared.node_id, %remote, error = %e, "relay stream start failed");
                conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"stream start failed");
            }
        });
    }
}

async fn dial_loop(shared: Arc<Shared>, peer: Arc<Peer>, dialer: u64) {
    let mut backoff = shared.config.reconnect_min;
    loop {
        if shared.cancel.is_cancelled()
            || !peer.wanted.load(Ordering::SeqCst)
            || peer.dialer.load(Ordering::SeqCst) != dialer
        {
            return;
        }
        if read(&peer.active).is_some() {
            // Linked (either direction): wake on a change, or look again.
            tokio::select! {
                _ = shared.cancel.cancelled() => return,
                _ = peer.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            backoff = shared.config.reconnect_min;
            continue;
        }
        let addr = *peer.addr.lock().unwrap_or_else(|e| e.into_inner());
        let Some(addr) = addr else { return };
        let attempt =
            tokio::time::timeout(shared.config.handshake_timeout, dial(&shared, &peer, addr));
        // A new address (the peer restarted elsewhere), an unlink or a
        // link made by the peer's dial abandons this attempt. The dial goes
        // first: once it has installed the link it must finish.
        let outcome = tokio::select! {
            biased;
            r = attempt => Some(r),
            _ = peer.changed.notified() => None,
            _ = shared.cancel.cancelled() => return,
        };
        match outcome {
            Some(Ok(Ok(()))) => {
                backoff = shared.config.reconnect_min;
                continue;
            }
            Some(Ok(Err(e))) => {
                debug!(node = %shared.node_id, peer = %peer.name, %addr, error = %e, "relay dial failed");
            }
            Some(Err(_)) => {
                debug!(node = %shared.node_id, peer = %peer.name, %addr, "relay dial timed out");
            }
            None => continue,
        }
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = peer.changed.notified() => {}
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(shared.config.reconnect_max);
    }
}

async fn dial(shared: &Arc<Shared>, peer: &Arc<Peer>, addr: SocketAddr) -> Result<(), String> {
    let connecting = shared
        .endpoint
        .connect_with(
            shared.client_config.clone(),
            addr,
            &auth::node_dns_name(&peer.name),
        )
        .map_err(|e| e.to_string())?;
    let conn = match connecting.await {
        Ok(conn) => conn,
        Err(e) => {
            // A TLS failure is a refusal (a stranger, or us to it); an
            // unreachable peer is only a timeout.
            if is_auth_failure(&e) {
                shared.refuse(&format!("dial: {e}"), addr);
            }
            return Err(e.to_string());
        }
    };
    // The rest runs in its own task: the dial loop may abandon this future
    // (a new address), but a connection that got this far must either
    // become the link with its tasks or be closed, never half installed.
    let (shared, peer) = (shared.clone(), peer.clone());
    tokio::spawn(async move {
        let result = match within(shared.config.handshake_timeout, conn.open_bi()).await {
            Ok(Ok((send, recv))) => start_link(&shared, &conn, send, recv, Some(&peer)).await,
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e),
        };
        if result.is_err() {
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"stream start failed");
        }
        result
    })
    .await
    .map_err(|e| e.to_string())?
}

/// `fut` within `limit`, else an error naming the timeout.
async fn within<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, String> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| "stream start timed out".to_string())
}

/// Whether a handshake failed on TLS (certificates, ALPN): QUIC's crypto
/// error codes, raised by us or sent by the peer.
fn is_auth_failure(e: &quinn::ConnectionError) -> bool {
    let code = match e {
        quinn::ConnectionError::TransportError(t) => u64::from(t.code),
        quinn::ConnectionError::ConnectionClosed(c) => u64::from(c.error_code),
        _ => return false,
    };
    (0x100..0x200).contains(&code)
}

/// The stream start on a fresh connection (both sides), then the decision
/// whether it becomes the link; on success the link runs in its own task.
async fn start_link(
    shared: &Arc<Shared>,
    conn: &Connection,
    mut send: SendStream,
    mut recv: RecvStream,
    dialed: Option<&Arc<Peer>>,
) -> Result<(), String> {
    let remote = conn.remote_address();
    let mut hello = Vec::with_capacity(15 + shared.node_id.len());
    hello.extend_from_slice(HELLO_MAGIC);
    hello.push(HELLO_VERSION);
    hello.extend_from_slice(&shared.instance.to_be_bytes());
    hello.extend_from_slice(&(shared.node_id.len() as u16).to_be_bytes());
    hello.extend_from_slice(shared.node_id.as_bytes());
    let limit = shared.config.handshake_timeout;
    within(limit, send.write_all(&hello))
        .await?
        .map_err(|e| e.to_string())?;

    let mut head = [0u8; 15];
    within(limit, recv.read_exact(&mut head))
        .await?
        .map_err(|e| e.to_string())?;
    let fail = |why: &str| {
        shared.refuse(why, remote);
        conn.close(VarInt::from_u32(CLOSE_PROTOCOL), why.as_bytes());
        why.to_string()
    };
    if &head[..4] != HELLO_MAGIC || head[4] != HELLO_VERSION {
        return Err(fail("bad stream start"));
    }
    let instance = u64::from_be_bytes(head[5..13].try_into().unwrap_or_default());
    let id_len = u16::from_be_bytes([head[13], head[14]]) as usize;
    if id_len == 0 || id_len > 1024 {
        return Err(fail("bad node id length"));
    }
    let mut id = vec![0u8; id_len];
    within(limit, recv.read_exact(&mut id))
        .await?
        .map_err(|e| e.to_string())?;
    let Ok(id) = String::from_utf8(id) else {
        return Err(fail("node id is not UTF-8"));
    };
    if id == *shared.node_id {
        return Err(fail("peer claims our own node id"));
    }
    // The peer's certificate (verified against the CA by TLS) must name
    // the node it says it is; the dialer also reached the name it dialed.
    let names_it = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| {
            chain
                .first()
                .map(|leaf| auth::certificate_names_node(leaf, &id))
        })
        .unwrap_or(false);
    if !names_it {
        return Err(fail("certificate does not name the announced node"));
    }
    if let Some(peer) = dialed
        && *peer.name != *id
    {
        return Err(fail("dialed node answered with another id"));
    }
    let peer = shared.peer(&id);

    // The node with the smaller id decides which connection is the link.
    let decider = *shared.node_id < *id;
    let _transition = peer.transition.lock().await;
    let accept = if decider {
        let keep_old = read(&peer.active)
            .as_ref()
            .is_some_and(|a| a.instance == instance && a.conn.close_reason().is_none());
        within(limit, send.write_all(&[u8::from(!keep_old)]))
            .await?
            .map_err(|e| e.to_string())?;
        !keep_old
    } else {
        let mut verdict = [0u8; 1];
        within(limit, recv.read_exact(&mut verdict))
            .await?
            .map_err(|e| e.to_string())?;
        verdict[0] == 1
    };
    if !accept {
        conn.close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate");
        return Err("duplicate connection".into());
    }

    // Replace a connection of a restarted peer (or one the decider gave up).
    let old = write(&peer.active).take();
    if let Some(old) = old {
        old.conn
            .close(VarInt::from_u32(CLOSE_REPLACED), b"replaced");
        retire(&peer, &old.conn);
        // Awaiting keeps LinkDown and LinkUp in order for the consumer.
        let _ = shared
            .events
            .send(RelayEvent::LinkDown {
                node: peer.name.clone(),
            })
            .await;
    }
    let generation = shared.generations.fetch_add(1, Ordering::Relaxed) + 1;
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    *write(&peer.active) = Some(Active {
        conn: conn.clone(),
        generation,
        instance,
        control: control_tx,
        queued: queued.clone(),
    });
    bump(&peer.counters.links_up);
    info!(node = %shared.node_id, peer = %peer.name, %remote, "relay link up");
    let _ = shared
        .events
        .send(RelayEvent::LinkUp {
            node: peer.name.clone(),
        })
        .await;
    peer.changed.notify_waiters();
    drop(_transition);

    tokio::spawn(run_link(
        shared.clone(),
        peer,
        conn.clone(),
        generation,
        send,
        recv,
        control_rx,
        queued,
    ));
    Ok(())
}

/// Adds an ended connection's loss counters to the peer's totals.
fn retire(peer: &Peer, conn: &Connection) {
    let path = conn.stats().path;
    peer.counters
        .lost_packets
        .fetch_add(path.lost_packets, Ordering::Relaxed);
    peer.counters
        .congestion_events
        .fetch_add(path.congestion_events, Ordering::Relaxed);
}

#[allow(clippy::too_many_arguments)]
async fn run_link(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    conn: Connection,
    generation: u64,
    send: SendStream,
    mut recv: RecvStream,
    control_rx: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
) {
    let writer = tokio::spawn(write_control(send, control_rx, queued));
    let datagrams = tokio::spawn(read_datagrams(
        shared.clone(),
        peer.clone(),
        conn.clone(),
        generation,
    ));
    let why = read_control(&shared, &peer, &conn, generation, &mut recv).await;
    datagrams.abort();
    writer.abort();
    conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"link ended");

    let _transition = peer.transition.lock().await;
    if peer.generation() == Some(generation) {
        *write(&peer.active) = None;
        retire(&peer, &conn);
        info!(node = %shared.node_id, peer = %peer.name, reason = %why, "relay link down");
        let _ = shared
            .events
            .send(RelayEvent::LinkDown {
                node: peer.name.clone(),
            })
            .await;
        peer.changed.notify_waiters();
    }
}

async fn write_control(
    mut send: SendStream,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
) {
    while let Some(frame) = rx.recv().await {
        let len = frame.len();
        if send.write_all(&frame).await.is_err() {
            return;
        }
        queued.fetch_sub(len, Ordering::AcqRel);
    }
}

async fn read_control(
    shared: &Shared,
    peer: &Peer,
    conn: &Connection,
    generation: u64,
    recv: &mut RecvStream,
) -> String {
    let mut head = [0u8; CONTROL_HEADER];
    loop {
        if let Err(e) = recv.read_exact(&mut head).await {
            return match conn.close_reason() {
                Some(reason) => reason.to_string(),
                None => e.to_string(),
            };
        }
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > MAX_CONTROL_FRAME {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"control frame too large");
            return "control frame too large".into();
        }
        let src = u16::from_be_bytes([head[4], head[5]]);
        let dst = u16::from_be_bytes([head[6], head[7]]);
        let mut payload = vec![0u8; len];
        if let Err(e) = recv.read_exact(&mut payload).await {
            return e.to_string();
        }
        bump(&peer.counters.control_received);
        if peer.generation() != Some(generation) {
            return "replaced".into();
        }
        // Waiting here when the consumer is behind pushes back on the
        // peer through QUIC flow control (its queue bound then trips).
        if shared
            .events
            .send(RelayEvent::Control {
                node: peer.name.clone(),
                src,
                dst,
                payload: payload.into(),
            })
            .await
            .is_err()
        {
            return "event receiver dropped".into();
        }
    }
}

async fn read_datagrams(shared: Arc<Shared>, peer: Arc<Peer>, conn: Connection, generation: u64) {
    let c = &peer.counters;
    while let Ok(frame) = conn.read_datagram().await {
        if frame.len() < DATAGRAM_HEADER || peer.generation() != Some(generation) {
            continue;
        }
        let src = u16::from_be_bytes([frame[0], frame[1]]);
        let dst = u16::from_be_bytes([frame[2], frame[3]]);
        let payload = frame.slice(DATAGRAM_HEADER..);
        bump(&c.datagrams_received);
        c.bytes_received
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        let event = RelayEvent::Datagram {
            node: peer.name.clone(),
            src,
            dst,
            payload,
        };
        match shared.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => bump(&c.dropped_inbound),
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(instance: u64, id: &str) -> Vec<u8> {
        let mut h = HELLO_MAGIC.to_vec();
        h.push(HELLO_VERSION);
        h.extend_from_slice(&instance.to_be_bytes());
        h.extend_from_slice(&(id.len() as u16).to_be_bytes());
        h.extend_from_slice(id.as_bytes());
        h
    }

    /// A member of the cluster (a valid certificate for `cert_for`) dials
    /// `server` and announces `claims`; returns whether the server went on
    /// with the stream start (answered its hello).
    async fn dial_as(server: SocketAddr, auth: &RelayAuth, cert_for: &str, claims: &str) -> bool {
        let creds = auth.node_credentials(cert_for).expect("creds");
        let (_, client_tls) = auth::tls_configs(creds).expect("tls");
        let crypto = QuicClientConfig::try_from(client_tls).expect("quic tls");
        let endpoint =
            quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("client");
        let conn = endpoint
            .connect_with(
                quinn::ClientConfig::new(Arc::new(crypto)),
                server,
                &auth::node_dns_name("server"),
            )
            .expect("connect")
            .await
            .expect("handshake (a cluster member)");
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        send.write_all(&hello(7, claims)).await.expect("hello");
        let mut head = [0u8; 15];
        let answered = tokio::time::timeout(Duration::from_secs(2), recv.read_exact(&mut head))
            .await
            .is_ok_and(|r| r.is_ok());
        endpoint.close(VarInt::from_u32(0), b"");
        answered
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_announcing_another_nodes_id_is_refused() {
        tokio::time::timeout(Duration::from_secs(20), async {
            let auth = RelayAuth::from_secret(b"0123456789abcdef-secret").expect("auth");
            let (server, mut events) = RelayEndpoint::bind(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                &auth,
                RelayConfig::new("server"),
            )
            .expect("bind");
            let addr = server.local_addr().expect("addr");
            // Its own id: the stream start goes on.
            assert!(dial_as(addr, &auth, "x", "x").await);
            // Another node's id, or the server's own: refused.
            assert!(!dial_as(addr, &auth, "x", "y").await);
            assert!(!dial_as(addr, &auth, "server", "server").await);
            assert_eq!(server.stats().refused, 2);
            // Only x ever came up (and went down when its client closed).
            while let Ok(Some(ev)) =
                tokio::time::timeout(Duration::from_millis(300), events.recv()).await
            {
                if let RelayEvent::LinkUp { node } = ev {
                    assert_eq!(&*node, "x");
                }
            }
        })
        .await
        .expect("test timed out");
    }
}
