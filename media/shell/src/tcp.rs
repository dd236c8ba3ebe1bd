//! ICE over TCP (RFC 6544): one listening port for the whole node, passive
//! host candidates, RFC 4571 framing (a 2-byte length before each datagram).
//!
//! Networks that block UDP still let a client reach the node on one TCP
//! port. The accept loop reads a connection's first frame (within
//! [`FIRST_FRAME_TIMEOUT`]), which must be a STUN binding request, and asks
//! the shards in turn whether the server ufrag its USERNAME names is one of
//! theirs ([`vela_media_core::Sfu::routes_tcp`]); the shard that owns it
//! adopts the connection. This costs a few channel round trips once per
//! connection and nothing per packet. From then on the connection's task
//! reads frames and hands them to its shard one read at a time (a chunk of
//! whole frames, one allocation per read, not per frame), and writes what
//! the shard queued for it, a batch of frames per `write_all`.
//!
//! Back-pressure: each connection has a bounded write queue. The driver
//! never waits on it: a full queue drops the packet (counted), and a queue
//! full for longer than [`STALL_TIMEOUT`], or a write that does not finish
//! in that time, closes the connection (counted), so a client that stops
//! reading never slows its shard. Reads are bounded too: a frame is at most
//! [`MAX_FRAME`] bytes, the read buffer holds one partial frame plus one
//! read, and a full shard queue stops the reading (TCP's flow control then
//! slows the sender). At most [`MAX_CONNECTIONS`] connections are open, at
//! most [`MAX_PENDING`] of them without their first frame
//! ([`MAX_PENDING_PER_IP`] from one address); a connection
//! that never becomes a peer's, or stops being one, is closed.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use str0m::ice::StunMessage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;
use vela_media_core::{Sfu, Transmit};

use crate::socket::BindError;

/// The largest frame taken: WebRTC keeps datagrams under the path MTU
/// (browsers about 1200-1500 bytes), so anything much larger is not ICE.
pub const MAX_FRAME: usize = 4096;
/// A new connection must send its first frame (a STUN binding request)
/// within this time, or it is closed.
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection whose write queue stays full this long, or whose write does
/// not finish in this time, is closed: its client stopped reading.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Most TCP connections open on the node at once (each is a socket and a
/// task); further ones are closed as they are accepted.
pub const MAX_CONNECTIONS: u64 = 8192;
/// Most connections open that have not yet sent their first frame.
pub const MAX_PENDING: u64 = 512;
/// Most of those from one address, so that one host cannot take them all
/// (generous: clients behind one NAT connect at once when a meeting starts).
pub const MAX_PENDING_PER_IP: u32 = 64;
/// Frames queued for one connection: about a second of a 2.5 Mbit/s video
/// in ~1200-byte packets. A fuller queue drops.
const WRITE_QUEUE: usize = 256;
/// The kernel's send buffer per connection (it doubles this): bytes in
/// flight to a TCP client, at most ~1 s of 2 Mbit/s video, so that a client
/// that stops reading is noticed within seconds, not after megabytes.
const SEND_BUFFER: usize = 128 * 1024;
/// Frames written with one `write_all`.
const WRITE_BATCH: usize = 64;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// Messages from connection tasks waiting for one shard.
pub(crate) const SHARD_QUEUE: usize = 1024;
/// How often a shard looks for connections to close.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Why a TCP connection was closed (the label of its counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The node had [`MAX_CONNECTIONS`] (or [`MAX_PENDING`]) already, or
    /// its address [`MAX_PENDING_PER_IP`].
    Limit,
    /// No first frame within [`FIRST_FRAME_TIMEOUT`].
    Silent,
    /// The first frame was not a STUN binding request with a USERNAME.
    NotStun,
    /// A frame of length 0 or over [`MAX_FRAME`].
    BadFrame,
    /// No participant's ufrag, or its STUN check failed.
    NoPeer,
    /// Its participant left, or moved to another connection or address.
    PeerGone,
    /// Its client stopped reading ([`STALL_TIMEOUT`]).
    Stalled,
    /// The client closed it, or it failed.
    ClientClosed,
}

impl CloseReason {
    /// Every reason, in counter order.
    pub const ALL: [CloseReason; 8] = [
        CloseReason::Limit,
        CloseReason::Silent,
        CloseReason::NotStun,
        CloseReason::BadFrame,
        CloseReason::NoPeer,
        CloseReason::PeerGone,
        CloseReason::Stalled,
        CloseReason::ClientClosed,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Limit => "limit",
            CloseReason::Silent => "silent",
            CloseReason::NotStun => "not_stun",
            CloseReason::BadFrame => "bad_frame",
            CloseReason::NoPeer => "no_peer",
            CloseReason::PeerGone => "peer_gone",
            CloseReason::Stalled => "stalled",
            CloseReason::ClientClosed => "client_closed",
        }
    }

    fn index(self) -> usize {
        CloseReason::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(0)
    }
}

/// The node's TCP counters, shared by its listeners, shards and connections.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
    pending: AtomicU64,
    closed: [AtomicU64; CloseReason::ALL.len()],
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    dropped_full: AtomicU64,
    dropped_no_connection: AtomicU64,
    /// Pending connections by source address (only those with some).
    pending_by_ip: Mutex<FxHashMap<IpAddr, u32>>,
}

impl Counters {
    fn close(&self, reason: CloseReason) {
        self.closed[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot.
    pub fn stats(&self) -> TcpStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TcpStats {
            accepted: get(&self.accepted),
            open: get(&self.open),
            pending: get(&self.pending),
            closed: CloseReason::ALL.map(|r| (r, get(&self.closed[r.index()]))),
            frames_in: get(&self.frames_in),
            frames_out: get(&self.frames_out),
            dropped_full: get(&self.dropped_full),
            dropped_no_connection: get(&self.dropped_no_connection),
        }
    }
}

/// The node's ICE-over-TCP counters (see [`crate::MediaHandle::tcp_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
    /// Of those, connections that have not sent their first frame.
    pub pending: u64,
    /// Connections closed, by reason.
    pub closed: [(CloseReason, u64); CloseReason::ALL.len()],
    /// Frames received and given to a core.
    pub frames_in: u64,
    /// Frames written to connections.
    pub frames_out: u64,
    /// Frames dropped because their connection's write queue was full.
    pub dropped_full: u64,
    /// Frames for a connection that is not (or no longer) open.
    pub dropped_no_connection: u64,
}

impl TcpStats {
    /// Connections closed for `reason`.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

/// Counts a connection as open while it lives, and as pending until it
/// sent its first frame.
struct OpenGuard {
    counters: Arc<Counters>,
    ip: IpAddr,
    pending: bool,
}

impl OpenGuard {
    /// `None` when the node, or `ip`, has too many connections already.
    fn new(counters: Arc<Counters>, ip: IpAddr) -> Option<Self> {
        if counters.open.load(Ordering::Relaxed) >= MAX_CONNECTIONS
            || counters.pending.load(Ordering::Relaxed) >= MAX_PENDING
        {
            return None;
        }
        {
            let mut by_ip = counters
                .pending_by_ip
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let n = by_ip.entry(ip).or_insert(0);
            if *n >= MAX_PENDING_PER_IP {
                return None;
            }
            *n += 1;
        }
        counters.open.fetch_add(1, Ordering::Relaxed);
        counters.pending.fetch_add(1, Ordering::Relaxed);
        Some(OpenGuard {
            counters,
            ip,
            pending: true,
        })
    }

    fn established(&mut self) {
        if std::mem::take(&mut self.pending) {
            self.counters.pending.fetch_sub(1, Ordering::Relaxed);
            let mut by_ip = self
                .counters
                .pending_by_ip
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = by_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    by_ip.remove(&self.ip);
                }
            }
        }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.established();
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The node's TCP media port: one listening socket per advertised address,
/// all on one port.
#[derive(Debug)]
pub struct TcpListeners {
    pub(crate) listeners: Vec<(TcpListener, SocketAddr)>,
}

impl TcpListeners {
    /// Binds `port` on each of `ips` (a port of 0 picks one, shared by
    /// all); as [`crate::MediaSockets::bind`], an address that is not local
    /// is advertised and listened for on `fallback_ip`.
    pub async fn bind(ips: &[IpAddr], port: u16, fallback_ip: IpAddr) -> Result<Self, BindError> {
        let mut listeners = Vec::new();
        let mut port = port;
        let mut not_local = Vec::new();
        let bound = |l: io::Result<TcpListener>, addr: SocketAddr| {
            let l = l.map_err(|source| BindError::BindTcp { addr, source })?;
            let local = l
                .local_addr()
                .map_err(|source| BindError::BindTcp { addr, source })?;
            Ok::<_, BindError>((l, local))
        };
        for ip in ips {
            let addr = SocketAddr::new(*ip, port);
            match TcpListener::bind(addr).await {
                Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => not_local.push(*ip),
                r => {
                    let (l, local) = bound(r, addr)?;
                    port = local.port();
                    listeners.push((l, local));
                }
            }
        }
        if let Some(first) = not_local.first() {
            let addr = SocketAddr::new(fallback_ip, port);
            let (l, local) = bound(TcpListener::bind(addr).await, addr)?;
            listeners.push((l, SocketAddr::new(*first, local.port())));
        }
        if listeners.is_empty() {
            return Err(BindError::NoAddress);
        }
        Ok(TcpListeners { listeners })
    }

    /// The addresses advertised as passive TCP host candidates.
    pub fn advertised(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|(_, a)| *a).collect()
    }

    /// The shared port.
    pub fn port(&self) -> u16 {
        self.listeners.first().map_or(0, |(_, a)| a.port())
    }
}

/// Why the frames at the front of a buffer cannot be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// A length of 0: no datagram is empty.
    Empty,
    /// A length over [`MAX_FRAME`].
    TooLong(usize),
}

/// Splits the complete frames (each with its length prefix) off the front of
/// `buf`; `None` when not one is complete yet. A bad length is an error as
/// soon as its prefix has arrived, before its body is waited for.
pub(crate) fn take_frames(buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
    let mut end = 0;
    while let Some(prefix) = buf.get(end..end + 2) {
        let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > MAX_FRAME {
            return Err(FrameError::TooLong(len));
        }
        if buf.len() < end + 2 + len {
            break;
        }
        end += 2 + len;
    }
    Ok((end > 0).then(|| buf.split_to(end).freeze()))
}

/// The frames of a chunk from [`take_frames`], without their prefixes.
pub(crate) fn frames(chunk: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = chunk;
    std::iter::from_fn(move || {
        let prefix = rest.get(..2)?;
        let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
        let frame = rest.get(2..2 + len)?;
        rest = &rest[2 + len..];
        Some(frame)
    })
}

/// Appends `datagram` to `out` as one frame; false (nothing appended) when
/// it is too long for a frame.
pub(crate) fn put_frame(out: &mut Vec<u8>, datagram: &[u8]) -> bool {
    let Ok(len) = u16::try_from(datagram.len()) else {
        return false;
    };
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(datagram);
    true
}

/// Whether `frame` may start an ICE-TCP connection: a STUN binding request
/// with a USERNAME (the server's ufrag in front).
pub(crate) fn is_first_frame(frame: &[u8]) -> bool {
    StunMessage::parse(frame).is_ok_and(|m| m.is_binding_request() && m.split_username().is_some())
}

/// Where a connection is: the passive candidate it came to (as advertised)
/// and its client's address.
pub(crate) type ConnKey = (SocketAddr, SocketAddr);

/// A connection that sent its first frame, on its way to its shard.
pub(crate) struct NewConn {
    stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    /// What was read after the first frames.
    buf: BytesMut,
    /// The first frames.
    first: Bytes,
    guard: OpenGuard,
}

/// What a shard's driver is told about TCP connections.
pub(crate) enum TcpIn {
    /// A new connection: the shard adopts it if its first frame is for one
    /// of its participants, or gives it back.
    Offer(Box<NewConn>, oneshot::Sender<Option<Box<NewConn>>>),
    /// Whole frames from connection `id`.
    Frames(ConnKey, u64, Bytes),
    /// Connection `id` ended (its task counted why).
    Closed(ConnKey, u64),
}

/// Accepts connections on `listener` until the shards stop, and hands each
/// to the shard that owns its first frame's ufrag.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    advertised: SocketAddr,
    shards: Arc<[mpsc::Sender<TcpIn>]>,
    counters: Arc<Counters>,
) {
    let Some(first_shard) = shards.first().cloned() else {
        return;
    };
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = first_shard.closed() => break,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait, rather than spin.
                tracing::debug!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        let Some(guard) = OpenGuard::new(counters.clone(), remote.ip()) else {
            counters.close(CloseReason::Limit);
            continue; // dropped: closed
        };
        let _ = stream.set_nodelay(true);
        let _ =
            nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::SndBuf, &SEND_BUFFER);
        tokio::spawn(
            handshake(stream, advertised, remote, shards.clone(), guard)
                .instrument(tracing::debug_span!("ice_tcp", %remote)),
        );
    }
}

/// Reads the first frames of a connection and finds its shard.
async fn handshake(
    mut stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    shards: Arc<[mpsc::Sender<TcpIn>]>,
    guard: OpenGuard,
) {
    let counters = guard.counters.clone();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let first = tokio::time::timeout(FIRST_FRAME_TIMEOUT, async {
        loop {
            match take_frames(&mut buf) {
                Ok(Some(first)) => return Ok(first),
                Ok(None) => {}
                Err(_) => return Err(CloseReason::BadFrame),
            }
            buf.reserve(READ_CHUNK);
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Err(CloseReason::ClientClosed),
                Ok(_) => {}
            }
        }
    })
    .await;
    let first = match first {
        Ok(Ok(first)) => first,
        Ok(Err(reason)) => return close(&counters, reason),
        Err(_) => return close(&counters, CloseReason::Silent),
    };
    if !frames(&first).next().is_some_and(is_first_frame) {
        return close(&counters, CloseReason::NotStun);
    }
    let mut conn = Box::new(NewConn {
        stream,
        local,
        remote,
        buf,
        first,
        guard,
    });
    for tx in shards.iter() {
        let (reply, answer) = oneshot::channel();
        if tx.send(TcpIn::Offer(conn, reply)).await.is_err() {
            return; // shutting down
        }
        match answer.await {
            Ok(Some(back)) => conn = back,
            // Adopted (or the shard stopped).
            _ => return,
        }
    }
    close(&counters, CloseReason::NoPeer);
}

fn close(counters: &Counters, reason: CloseReason) {
    tracing::debug!(reason = reason.as_str(), "tcp connection closed");
    counters.close(reason);
}

/// A connection's task, once adopted: reads frames for its shard, writes
/// what its shard queued. Ends when either side closes; the shard dropping
/// the queue's sender is its way of closing it (it counted why).
async fn serve(
    conn: NewConn,
    id: u64,
    mut queue: mpsc::Receiver<Transmit>,
    shard: mpsc::Sender<TcpIn>,
) {
    let NewConn {
        mut stream,
        local,
        remote,
        mut buf,
        mut guard,
        ..
    } = conn;
    guard.established();
    let counters = guard.counters.clone();
    let key = (local, remote);
    let (mut rd, mut wr) = stream.split();
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    // Grows to the largest batch written (a few tens of kB under video).
    let mut out: Vec<u8> = Vec::new();
    let reason = loop {
        // What was read with the first frames, or by the last read.
        match take_frames(&mut buf) {
            Ok(Some(chunk)) => {
                if shard.send(TcpIn::Frames(key, id, chunk)).await.is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(_) => break CloseReason::BadFrame,
        }
        buf.reserve(READ_CHUNK);
        tokio::select! {
            n = queue.recv_many(&mut batch, WRITE_BATCH) => {
                if n == 0 {
                    return; // closed by the shard
                }
                out.clear();
                let mut frames = 0;
                for t in batch.drain(..) {
                    frames += u64::from(put_frame(&mut out, &t.contents));
                }
                match tokio::time::timeout(STALL_TIMEOUT, wr.write_all(&out)).await {
                    Ok(Ok(())) => {
                        counters.frames_out.fetch_add(frames, Ordering::Relaxed);
                    }
                    Ok(Err(_)) => break CloseReason::ClientClosed,
                    Err(_) => break CloseReason::Stalled,
                }
            }
            r = rd.read_buf(&mut buf) => {
                if !matches!(r, Ok(n) if n > 0) {
                    break CloseReason::ClientClosed;
                }
            }
        }
    };
    close(&counters, reason);
    // The shard forgets it (it may be gone already).
    let _ = shard.try_send(TcpIn::Closed(key, id));
}

/// One adopted connection, as its shard sees it.
struct Conn {
    id: u64,
    queue: mpsc::Sender<Transmit>,
    /// Since when its queue has been full.
    full_since: Option<Instant>,
}

/// A shard's TCP connections.
pub(crate) struct TcpShard {
    conns: FxHashMap<ConnKey, Conn>,
    counters: Arc<Counters>,
    /// Where its connections' tasks send.
    tx: mpsc::Sender<TcpIn>,
    next_id: u64,
    next_sweep: Instant,
}

impl TcpShard {
    pub fn new(counters: Arc<Counters>, tx: mpsc::Sender<TcpIn>) -> Self {
        TcpShard {
            conns: FxHashMap::default(),
            counters,
            tx,
            next_id: 0,
            next_sweep: Instant::now() + SWEEP_EVERY,
        }
    }

    /// Takes what a connection task or the accept loop sent.
    pub fn handle(&mut self, sfu: &mut Sfu, msg: TcpIn) {
        let now = Instant::now();
        match msg {
            TcpIn::Offer(conn, reply) => self.offer(sfu, now, conn, reply),
            TcpIn::Frames(key, id, chunk) => {
                if self.conns.get(&key).is_some_and(|c| c.id == id) {
                    self.receive(sfu, now, key, &chunk);
                }
            }
            TcpIn::Closed(key, id) => {
                if self.conns.get(&key).is_some_and(|c| c.id == id) {
                    self.conns.remove(&key);
                }
            }
        }
    }

    fn receive(&mut self, sfu: &mut Sfu, now: Instant, (local, remote): ConnKey, chunk: &[u8]) {
        let mut n = 0;
        for frame in frames(chunk) {
            sfu.handle_receive_tcp(now, remote, local, frame);
            n += 1;
        }
        self.counters.frames_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Adopts a new connection whose first frame names one of this core's
    /// participants, and gives it that frame; gives it back otherwise.
    fn offer(
        &mut self,
        sfu: &mut Sfu,
        now: Instant,
        conn: Box<NewConn>,
        reply: oneshot::Sender<Option<Box<NewConn>>>,
    ) {
        let first = frames(&conn.first).next().unwrap_or_default();
        if !sfu.routes_tcp(conn.remote, first) {
            let _ = reply.send(Some(conn));
            return;
        }
        let _ = reply.send(None);
        let key = (conn.local, conn.remote);
        self.receive(sfu, now, key, &conn.first);
        // Its STUN request passed the participant's check (integrity).
        let Some(participant) = sfu.tcp_owner(conn.remote) else {
            close(&self.counters, CloseReason::NoPeer);
            return;
        };
        let (queue, rx) = mpsc::channel(WRITE_QUEUE);
        self.next_id += 1;
        let id = self.next_id;
        // A connection from the same address replaces the old one (closed).
        if self
            .conns
            .insert(
                key,
                Conn {
                    id,
                    queue,
                    full_since: None,
                },
            )
            .is_some()
        {
            self.counters.close(CloseReason::PeerGone);
        }
        let span = tracing::info_span!("ice_tcp", %participant, remote = %conn.remote);
        span.in_scope(|| tracing::info!("ICE over TCP connection"));
        tokio::spawn(serve(*conn, id, rx, self.tx.clone()).instrument(span));
    }

    /// Queues a frame for its connection without waiting: a full queue
    /// drops it (counted).
    pub fn send(&mut self, t: Transmit) {
        let key = (t.source, t.destination);
        let Some(conn) = self.conns.get_mut(&key) else {
            self.counters
                .dropped_no_connection
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        match conn.queue.try_send(t) {
            Ok(()) => conn.full_since = None,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.dropped_full.fetch_add(1, Ordering::Relaxed);
                conn.full_since.get_or_insert_with(Instant::now);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // Its task ended (and counted why); its `Closed` may not
                // have reached this shard.
                self.conns.remove(&key);
                self.counters
                    .dropped_no_connection
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// At most every [`SWEEP_EVERY`]: closes the connections whose queue
    /// has been full too long, and those no participant owns any more.
    pub fn sweep(&mut self, sfu: &Sfu, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_EVERY;
        let counters = &self.counters;
        self.conns.retain(|(_, remote), c| {
            let reason = if c.full_since.is_some_and(|t| now >= t + STALL_TIMEOUT) {
                CloseReason::Stalled
            } else if sfu.tcp_owner(*remote).is_none() {
                CloseReason::PeerGone
            } else {
                return true;
            };
            tracing::info!(remote = %remote, reason = reason.as_str(), "ICE over TCP connection closed");
            counters.close(reason);
            false // dropping its queue's sender ends its task
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    fn framed(datagrams: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for d in datagrams {
            assert!(put_frame(&mut out, d));
        }
        out
    }

    #[test]
    fn two_frames_in_one_read_come_out_whole() {
        let mut buf = BytesMut::from(&framed(&[b"abc", b"defgh"])[..]);
        let chunk = take_frames(&mut buf).expect("valid").expect("complete");
        let got: Vec<&[u8]> = frames(&chunk).collect();
        assert_eq!(got, vec![&b"abc"[..], &b"defgh"[..]]);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_partial_frame_waits_for_the_rest() {
        let all = framed(&[b"hello", b"world!"]);
        // Byte by byte: each frame comes out once it is whole, not before.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in &all {
            buf.extend_from_slice(&[*b]);
            if let Some(chunk) = take_frames(&mut buf).expect("valid") {
                got.extend(frames(&chunk).map(<[u8]>::to_vec));
            }
        }
        assert_eq!(got, vec![b"hello".to_vec(), b"world!".to_vec()]);
        assert!(buf.is_empty());
        // A whole frame and half of the next: the half stays.
        let mut buf = BytesMut::from(&all[..all.len() - 3]);
        let chunk = take_frames(&mut buf).expect("valid").expect("one");
        assert_eq!(frames(&chunk).count(), 1);
        assert_eq!(buf.len(), 2 + 6 - 3);
        assert_eq!(take_frames(&mut buf), Ok(None));
        buf.extend_from_slice(&all[all.len() - 3..]);
        let chunk = take_frames(&mut buf).expect("valid").expect("rest");
        assert_eq!(frames(&chunk).collect::<Vec<_>>(), vec![&b"world!"[..]]);
    }

    #[test]
    fn zero_and_oversize_lengths_are_refused_at_their_prefix() {
        let mut buf = BytesMut::from(&[0u8, 0, 1, 2][..]);
        assert_eq!(take_frames(&mut buf), Err(FrameError::Empty));
        // Too long: refused with only the prefix read, its body never waited for.
        let len = (MAX_FRAME + 1) as u16;
        let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
        assert_eq!(
            take_frames(&mut buf),
            Err(FrameError::TooLong(MAX_FRAME + 1))
        );
        // A good frame followed by a bad prefix: the error wins (the
        // connection closes), whatever came before.
        let mut v = framed(&[b"ok"]);
        v.extend_from_slice(&[0, 0]);
        let mut buf = BytesMut::from(&v[..]);
        assert_eq!(take_frames(&mut buf), Err(FrameError::Empty));
        // The largest allowed frame passes.
        let big = vec![7u8; MAX_FRAME];
        let mut buf = BytesMut::from(&framed(&[&big])[..]);
        let chunk = take_frames(&mut buf).expect("valid").expect("whole");
        assert_eq!(frames(&chunk).next().map(<[u8]>::len), Some(MAX_FRAME));
    }

    #[test]
    fn a_lone_prefix_byte_is_not_a_frame() {
        let mut buf = BytesMut::from(&[0u8][..]);
        assert_eq!(take_frames(&mut buf), Ok(None));
        buf.advance(1);
        assert_eq!(take_frames(&mut buf), Ok(None));
    }

    #[test]
    fn only_a_binding_request_with_a_username_opens() {
        assert!(!is_first_frame(b"GET / HTTP/1.1\r\n"));
        assert!(!is_first_frame(&[0u8; 20]));
        let encode = |msg: StunMessage<'_>| {
            let mut buf = vec![0u8; 512];
            let n = msg
                .to_bytes(Some(b"password"), &mut buf, |_, _| [0; 20])
                .expect("encodes");
            buf.truncate(n);
            buf
        };
        let trans = str0m::ice::TransId::new();
        let req = encode(StunMessage::binding_request(
            "srv:cli", trans, true, 1, 1, false,
        ));
        assert!(is_first_frame(&req));
        let reply = encode(StunMessage::binding_reply(
            trans,
            "192.0.2.1:9".parse().expect("addr"),
        ));
        assert!(!is_first_frame(&reply), "a reply does not open");
    }
}
