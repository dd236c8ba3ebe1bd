//! The driver task: the only owner of the sockets and the core.

use std::future::poll_fn;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Instant;

use rustc_hash::FxHashMap;
use tokio::sync::mpsc;
use vela_media_core::relay::{LinkId, RelayMessage};
use vela_media_core::{
    ConnectionId, LeaveReason, Output, RoomEvent, RoomId, Sfu, Signal, SignalError, Transmit,
};

use crate::handle::{Command, MediaError, RoomCommand, SignalSink};
use crate::placement::Placement;
use crate::relay::local::{Body, Frame, LocalLinks, Sent};
use crate::relay::node::{NodeRelay, RemoteIn};
use crate::relay::quic::NodeName;
use crate::relay::{CoreLinkStats, LinkPeer, link_shard, local_link};
use crate::socket::MediaSockets;
use crate::tcp::{TcpIn, TcpShard};
use crate::udp::{Receiver, Sender};

/// Due timeouts handled in a row before the sockets and commands are polled.
const MAX_IMMEDIATE_TIMEOUTS: u32 = 64;

/// Frames from other shards given to the core in a row before the outputs
/// are drained and the sockets polled.
const MAX_LINK_BATCH: usize = 256;

struct Driver {
    sfu: Sfu,
    sockets: MediaSockets,
    /// One send queue per socket, same order.
    senders: Vec<Sender>,
    sinks: FxHashMap<ConnectionId, SignalSink>,
    /// Participants whose signal queue overflowed: they leave as too slow.
    too_slow: Vec<ConnectionId>,
    /// Where room events go (webhooks, metrics); never waited on.
    events: Option<mpsc::Sender<RoomEvent>>,
    events_dropped: u64,
    /// This shard's index, and where the handle places rooms (with more than
    /// one shard): told when a room opens or closes here and how many
    /// participants this shard has.
    placement: Option<(usize, Arc<Mutex<Placement>>)>,
    /// The links to this node's other shards (with more than one shard).
    links: Option<LocalLinks>,
    /// The relay to other nodes, if the node has one.
    remote: Option<Remote>,
    /// This shard's ICE-over-TCP connections, if the node listens on TCP.
    tcp: Option<TcpShard>,
}

/// A driver's side of the relay to other nodes.
struct Remote {
    node: Arc<NodeRelay>,
    /// This shard's tag in frames.
    shard: u16,
    /// The node and shard behind each remote link used so far.
    peers: FxHashMap<LinkId, (NodeName, u16)>,
    /// Encoding buffer for outbound frames.
    buf: Vec<u8>,
    /// Frames from other nodes that did not decode.
    malformed: u64,
}

/// What a driver is given besides its core and sockets.
pub(crate) struct Wiring {
    pub events: Option<mpsc::Sender<RoomEvent>>,
    pub placement: Option<(usize, Arc<Mutex<Placement>>)>,
    pub links: Option<LocalLinks>,
    pub remote: Option<(Arc<NodeRelay>, mpsc::Receiver<RemoteIn>)>,
    pub tcp: Option<(TcpShard, mpsc::Receiver<TcpIn>)>,
}

pub(crate) async fn run(
    sfu: Sfu,
    sockets: MediaSockets,
    mut rx: mpsc::Receiver<Command>,
    wiring: Wiring,
) {
    let Wiring {
        events,
        placement,
        links,
        remote,
        tcp,
    } = wiring;
    let (tcp, mut tcp_rx) = match tcp {
        Some((shard, rx)) => (Some(shard), Some(rx)),
        None => (None, None),
    };
    let shard = placement.as_ref().map_or(0, |(k, _)| *k) as u16;
    let (remote, mut remote_rx) = match remote {
        Some((node, rx)) => (
            Some(Remote {
                node,
                shard,
                peers: FxHashMap::default(),
                buf: Vec::with_capacity(1500),
                malformed: 0,
            }),
            Some(rx),
        ),
        None => (None, None),
    };
    let senders = sockets.sockets.iter().map(|_| Sender::new()).collect();
    let mut d = Driver {
        sfu,
        sockets,
        senders,
        sinks: FxHashMap::default(),
        too_slow: Vec::new(),
        events,
        events_dropped: 0,
        placement,
        links,
        remote,
        tcp,
    };
    let mut receiver = Receiver::new();
    // Timeouts already due (str0m's pacer asks for "now" after each packet it
    // releases) run at once: tokio's sleep rounds up to its next millisecond
    // tick, which would pace packets by timer ticks instead of CPU. Bounded,
    // so the sockets and commands are still served.
    let mut immediate = 0u32;
    loop {
        let timeout = d.drain().await;
        let now = Instant::now();
        if let Some(tcp) = &mut d.tcp {
            tcp.sweep(&d.sfu, now);
        }
        if timeout <= now && immediate < MAX_IMMEDIATE_TIMEOUTS {
            immediate += 1;
            d.sfu.handle_timeout(now);
            continue;
        }
        immediate = 0;
        let sockets = &d.sockets.sockets;
        let readable = poll_fn(|cx| {
            for (i, (s, _)) in sockets.iter().enumerate() {
                if let Poll::Ready(r) = s.poll_recv_ready(cx) {
                    return Poll::Ready((i, r));
                }
            }
            Poll::Pending
        });
        let links = &mut d.links;
        let frame = async {
            match links {
                Some(l) => l.recv().await,
                None => std::future::pending().await,
            }
        };
        let remote_frame = async {
            match &mut remote_rx {
                Some(r) => r.recv().await,
                None => std::future::pending().await,
            }
        };
        let tcp_in = async {
            match &mut tcp_rx {
                Some(r) => r.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                if d.command(cmd).await {
                    break;
                }
            }
            (i, r) = readable => {
                let (socket, destination) = &d.sockets.sockets[i];
                // Everything queued, up to a batch, in one system call; each
                // peer is then polled once per burst rather than per datagram.
                match r.and_then(|()| receiver.try_recv(socket)) {
                    Ok(n) => {
                        let now = Instant::now();
                        for k in 0..n {
                            let (source, datagram) = receiver.datagram(k);
                            d.sfu.handle_receive(now, source, *destination, datagram);
                        }
                    }
                    // Readiness was stale; tokio cleared it.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // ICMP port unreachable from a gone client, and the like.
                    Err(e) => tracing::debug!(error = %e, "udp receive failed"),
                }
                // The select prefers the sockets: a socket that is always
                // readable must not starve the links (nor they it).
                d.relay_batch(&mut remote_rx, MAX_LINK_BATCH);
            }
            Some(f) = frame => {
                d.relay_frame(f);
                // What else is queued, up to a batch, before draining.
                d.relay_batch(&mut remote_rx, MAX_LINK_BATCH - 1);
            }
            Some(m) = remote_frame => {
                d.remote_in(m);
                d.relay_batch(&mut remote_rx, MAX_LINK_BATCH - 1);
            }
            Some(m) = tcp_in => {
                // What else the connections queued, up to a batch.
                if let Some(tcp) = &mut d.tcp {
                    tcp.handle(&mut d.sfu, m);
                    for _ in 1..MAX_LINK_BATCH {
                        let Some(m) = tcp_rx.as_mut().and_then(|r| r.try_recv().ok()) else {
                            break;
                        };
                        tcp.handle(&mut d.sfu, m);
                    }
                }
            }
            _ = tokio::time::sleep_until(timeout.into()) => {
                d.sfu.handle_timeout(Instant::now());
            }
        }
    }
    let send_errors: u64 = d.senders.iter().map(|s| s.errors).sum();
    let relay_malformed = d.remote.as_ref().map_or(0, |r| r.malformed);
    tracing::info!(send_errors, relay_malformed, "media driver stopped");
}

impl Driver {
    /// Carries out the core's outputs until it only waits for time; the
    /// datagrams go out in batches (see `udp`), the last at the end.
    async fn drain(&mut self) -> Instant {
        loop {
            match self.sfu.poll_output() {
                Output::Timeout(t) => {
                    if !self.too_slow.is_empty() {
                        // Their leaving tells the others: poll again.
                        let now = Instant::now();
                        for p in std::mem::take(&mut self.too_slow) {
                            self.sfu.handle_leave(now, p, LeaveReason::TooSlow);
                        }
                        continue;
                    }
                    self.flush().await;
                    return t;
                }
                Output::Transmit(t) => self.send(t).await,
                Output::Signal(p, s) => self.deliver(p, s),
                Output::Event(e) => self.event(e),
                Output::Relay(link, msg) => self.relay_out(link, msg),
                _ => {}
            }
        }
    }

    /// Queues a datagram on the socket of its source address (the first
    /// socket if none matches); sends that queue when it is full. A TCP
    /// one goes to its connection's queue.
    async fn send(&mut self, t: Transmit) {
        if t.proto == str0m::net::Protocol::Tcp {
            if let Some(tcp) = &mut self.tcp {
                tcp.send(t);
            }
            return;
        }
        let sockets = &self.sockets.sockets;
        let i = sockets
            .iter()
            .position(|(_, a)| *a == t.source)
            .unwrap_or(0);
        let (Some((socket, _)), Some(sender)) = (sockets.get(i), self.senders.get_mut(i)) else {
            return;
        };
        if sender.push(t) {
            sender.flush(socket).await;
        }
    }

    /// Sends every queued datagram.
    async fn flush(&mut self) {
        for ((socket, _), sender) in self.sockets.sockets.iter().zip(&mut self.senders) {
            sender.flush(socket).await;
        }
    }

    /// Hands a room event on without waiting: a full queue drops it (counted)
    /// rather than stall media.
    fn event(&mut self, e: RoomEvent) {
        tracing::debug!(event = ?e, "room event");
        if let Some((shard, placement)) = &self.placement
            && matches!(
                e,
                RoomEvent::RoomStarted { .. }
                    | RoomEvent::RoomFinished { .. }
                    | RoomEvent::ParticipantJoined { .. }
                    | RoomEvent::ParticipantLeft { .. }
            )
        {
            let participants = self.sfu.stats().participants;
            let seen = placement
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .observe(Instant::now(), *shard, &e, participants);
            if let RoomEvent::RoomFinished { room } = &e {
                let now = Instant::now();
                for peer in seen.unlink {
                    self.link_room(now, peer, room, false);
                }
                // The other nodes unlink from this shard for the room.
                if let Some(r) = &self.remote {
                    r.node.announce(room);
                }
            }
            if !seen.forward {
                // Another shard's part of the room told it already.
                return;
            }
        }
        if let Some(tx) = &self.events
            && tx.try_send(e).is_err()
        {
            self.events_dropped += 1;
            if self.events_dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.events_dropped,
                    "room event queue full; events dropped"
                );
            }
        }
    }

    /// Queues a signal for its participant. A participant whose queue is
    /// full is too slow for its room: no more is queued for it (its
    /// receiver ends with `left`, reason `too_slow`) and it leaves.
    fn deliver(&mut self, p: ConnectionId, s: Signal) {
        let left = matches!(s, Signal::Left { .. });
        if let Some(sink) = self.sinks.get(&p)
            && !sink.deliver(s)
        {
            tracing::warn!(participant = %p, "signal queue full: the participant is too slow and leaves");
            self.sinks.remove(&p);
            self.too_slow.push(p);
            return;
        }
        if left {
            self.sinks.remove(&p);
        }
    }

    /// The server API's operations on `room`.
    fn room_command(&mut self, now: Instant, room: &RoomId, cmd: RoomCommand) {
        let sfu = &mut self.sfu;
        let known = |sfu: &Sfu| {
            sfu.room_info(room)
                .map(|_| ())
                .ok_or(MediaError::Signal(SignalError::UnknownRoom))
        };
        match cmd {
            RoomCommand::Create(options, reply) => {
                let _ = reply.send(Ok(sfu.handle_create_room(now, room.clone(), options)));
            }
            RoomCommand::Delete(reply) => {
                let _ = reply.send(Ok(sfu.handle_delete_room(now, room)));
            }
            RoomCommand::Info(reply) => {
                let _ = reply.send(Ok(sfu.room_info(room)));
            }
            RoomCommand::Participants(reply) => {
                let _ = reply.send(known(sfu).map(|()| sfu.participants(room)));
            }
            RoomCommand::Participant(identity, reply) => {
                let _ = reply.send(known(sfu).map(|()| sfu.participant(room, &identity)));
            }
            RoomCommand::Remove(identity, reply) => {
                let r = sfu.handle_remove_participant(now, room, &identity);
                let _ = reply.send(r.map_err(Into::into));
            }
            RoomCommand::UpdatePermissions(identity, update, reply) => {
                // Read and changed in one command: nothing comes between.
                let r = sfu
                    .participant(room, &identity)
                    .ok_or(SignalError::UnknownParticipant)
                    .and_then(|p| {
                        let new = update.apply(p.permissions);
                        sfu.handle_update_permissions(now, room, &identity, new)
                    });
                let _ = reply.send(r.map_err(Into::into));
            }
            RoomCommand::MuteTrack(identity, track, muted, reply) => {
                let r = sfu.handle_mute_track(now, room, &identity, track, muted);
                let _ = reply.send(r.map_err(Into::into));
            }
            RoomCommand::Data(message, reply) => {
                let r = sfu.handle_data(now, room, None, message);
                let _ = reply.send(r.map_err(Into::into));
            }
        }
    }

    /// A join placed on this shard was answered: the room's other shards
    /// are linked to this one for it (again, which changes nothing, if they
    /// were).
    fn joined(&mut self, now: Instant, room: &RoomId, ok: bool) {
        let Some((shard, placement)) = &self.placement else {
            return;
        };
        let peers = {
            let mut p = placement.lock().unwrap_or_else(PoisonError::into_inner);
            p.joined(room, *shard, ok);
            if ok {
                p.peers_of(room, *shard)
            } else {
                Vec::new()
            }
        };
        for peer in peers {
            self.link_room(now, peer, room, true);
        }
        if ok && let Some(r) = &self.remote {
            for link in r.node.links_of_room(room) {
                self.sfu.handle_link_room(now, link, room.clone(), true);
            }
            r.node.announce(room);
        }
    }

    /// Links (or unlinks) `room` between this shard's core and shard
    /// `peer`'s: this core at once, the other when the frame arrives.
    fn link_room(&mut self, now: Instant, peer: usize, room: &RoomId, on: bool) {
        let link = local_link(peer);
        self.sfu.handle_link_room(now, link, room.clone(), on);
        if let Some(l) = &mut self.links
            && l.link_room(peer, room.clone(), on) == Sent::Failed
        {
            self.sfu.handle_link_down(now, link);
        }
    }

    /// Sends a core's relay message on its link.
    fn relay_out(&mut self, link: LinkId, msg: RelayMessage) {
        match link_shard(link) {
            Some(peer) => {
                if let Some(l) = &mut self.links
                    && l.send(peer, msg) == Sent::Failed
                {
                    self.sfu.handle_link_down(Instant::now(), link);
                }
            }
            None => self.remote_out(link, msg),
        }
    }

    /// Sends a core's relay message to another node's core: control on the
    /// link's reliable stream, media as a datagram. A control frame that
    /// cannot be queued closes the node link (the endpoint's doing), which
    /// comes back as link down.
    fn remote_out(&mut self, link: LinkId, msg: RelayMessage) {
        let Some(r) = &mut self.remote else {
            tracing::debug!(link = link.0, "relay message for an unknown link dropped");
            return;
        };
        let peer = match r.peers.get(&link) {
            Some(p) => p,
            None => {
                let Some(p) = r.node.peer_of(link) else {
                    tracing::debug!(link = link.0, "relay message for an unknown link dropped");
                    return;
                };
                r.peers.entry(link).or_insert(p)
            }
        };
        let (node, dst) = (peer.0.clone(), peer.1);
        r.buf.clear();
        vela_media_core::relay::wire::encode(&msg, &mut r.buf);
        let sent = if matches!(msg, RelayMessage::Media(_)) {
            // Dropped datagrams are counted by the endpoint.
            let _ = r.node.endpoint.send_datagram(&node, r.shard, dst, &r.buf);
            Ok(())
        } else {
            r.node.endpoint.send_control(&node, r.shard, dst, &r.buf)
        };
        if let Err(e) = sent {
            tracing::debug!(%node, error = %e, "relay control not sent; the link goes down");
        }
    }

    /// Gives the core what came from another node.
    fn remote_in(&mut self, m: RemoteIn) {
        let now = Instant::now();
        match m {
            RemoteIn::Frame { link, payload } => {
                match vela_media_core::relay::wire::decode(&payload) {
                    Ok(msg) => self.sfu.handle_relay(now, link, msg),
                    Err(e) => {
                        self.sfu.note_relay_malformed();
                        if let Some(r) = &mut self.remote {
                            r.malformed += 1;
                        }
                        tracing::debug!(link = link.0, error = %e, "malformed relay frame dropped");
                    }
                }
            }
            RemoteIn::LinkRoom { link, room, on } => {
                if !on || self.sfu.room_info(&room).is_some() {
                    self.sfu.handle_link_room(now, link, room, on);
                }
            }
            RemoteIn::Down(links) => {
                for link in links {
                    self.sfu.handle_link_down(now, link);
                    if let Some(r) = &mut self.remote {
                        r.peers.remove(&link);
                    }
                }
            }
        }
    }

    /// The core's relay links with the core behind each.
    fn core_link_stats(&self) -> Vec<CoreLinkStats> {
        let shard = self.placement.as_ref().map_or(0, |(k, _)| *k);
        self.sfu
            .relay_link_stats()
            .into_iter()
            .map(|stats| {
                let peer = match link_shard(stats.link) {
                    Some(k) => Some(LinkPeer::Shard(k)),
                    None => self.remote.as_ref().and_then(|r| {
                        let (node, shard) = r.node.peer_of(stats.link)?;
                        Some(LinkPeer::Node {
                            node: node.to_string(),
                            shard,
                        })
                    }),
                };
                CoreLinkStats { shard, peer, stats }
            })
            .collect()
    }

    /// Gives the core up to `n` frames already queued on each kind of link.
    fn relay_batch(&mut self, remote_rx: &mut Option<mpsc::Receiver<RemoteIn>>, n: usize) {
        for _ in 0..n {
            let Some(f) = self.links.as_mut().and_then(LocalLinks::try_recv) else {
                break;
            };
            self.relay_frame(f);
        }
        for _ in 0..n {
            let Some(m) = remote_rx.as_mut().and_then(|r| r.try_recv().ok()) else {
                break;
            };
            self.remote_in(m);
        }
    }

    /// Gives the core a frame from another shard.
    fn relay_frame(&mut self, f: Frame) {
        let now = Instant::now();
        let link = local_link(f.from);
        match f.body {
            Body::Relay(msg) => self.sfu.handle_relay(now, link, msg),
            Body::LinkRoom(room, on) => {
                // A room that closed here meanwhile is not reopened by a
                // link: its closing unlinks it on the other side.
                if !on || self.sfu.room_info(&room).is_some() {
                    self.sfu.handle_link_room(now, link, room, on);
                }
            }
            // The other side reset the link (take it down, then relink),
            // or answered this side's reset (relink).
            Body::Reset | Body::ResetDone => {
                if matches!(f.body, Body::Reset) {
                    self.sfu.handle_link_down(now, link);
                }
                let rooms = match &self.placement {
                    Some((shard, p)) => p
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .shared_rooms(*shard, f.from),
                    None => Vec::new(),
                };
                for room in rooms {
                    self.link_room(now, f.from, &room, true);
                }
            }
        }
    }

    /// Runs one command; true when the driver is to stop.
    async fn command(&mut self, cmd: Command) -> bool {
        let now = Instant::now();
        match cmd {
            Command::Join(req, sink, reply) => {
                let room = req.room().clone();
                let r = self.sfu.handle_join(now, *req);
                if let Ok(j) = &r {
                    self.sinks.insert(j.connection, sink);
                }
                self.joined(now, &room, r.is_ok());
                let _ = reply.send(r.map_err(MediaError::from));
            }
            Command::Handover(from, req, sink, reply) => {
                let r = self.sfu.handle_handover(now, from, *req);
                if let Ok(j) = &r {
                    self.sinks.insert(j.connection, sink);
                }
                let _ = reply.send(r.map_err(MediaError::from));
            }
            Command::Offer(p, offer, sources, reply) => {
                let r = self
                    .sfu
                    .set_track_sources(p, &sources)
                    .and_then(|()| self.sfu.handle_offer(now, p, *offer));
                let _ = reply.send(r.map_err(Into::into));
            }
            Command::Answer(p, answer, reply) => {
                let _ = reply.send(self.sfu.handle_answer(now, p, *answer).map_err(Into::into));
            }
            Command::Candidate(p, c, reply) => {
                let _ = reply.send(self.sfu.handle_candidate(now, p, &c).map_err(Into::into));
            }
            Command::ChannelSend(p, label, data, reply) => {
                let r = self.sfu.handle_channel_send(now, p, &label, true, &data);
                let _ = reply.send(r.map_err(Into::into));
            }
            Command::Mute(p, track, kind, muted, reply) => {
                let r = self
                    .sfu
                    .handle_mute(now, p, track, kind.map(Into::into), muted);
                let _ = reply.send(r.map_err(Into::into));
            }
            Command::TrackSettings(p, track, settings, reply) => {
                let r = self.sfu.handle_track_settings(now, p, track, settings);
                let _ = reply.send(r.map_err(Into::into));
            }
            Command::Leave(p, reason) => self.sfu.handle_leave(now, p, reason),
            Command::Participants(room, reply) => {
                let _ = reply.send(self.sfu.participants(&room));
            }
            Command::Room(room, cmd) => self.room_command(now, &room, cmd),
            Command::DataFrom(from, message, reply) => {
                let r = match self.sfu.room_of(from).cloned() {
                    Some(room) => self.sfu.handle_data(now, &room, Some(from), message),
                    None => Err(SignalError::UnknownParticipant),
                };
                let _ = reply.send(r.map_err(Into::into));
            }
            Command::Rooms(reply) => {
                let _ = reply.send(self.sfu.rooms());
            }
            #[cfg(feature = "test-hooks")]
            Command::With(f) => f(&mut self.sfu, now),
            Command::Stats(reply) => {
                let _ = reply.send(self.sfu.stats());
            }
            Command::CoreLinkStats(reply) => {
                let _ = reply.send(self.core_link_stats());
            }
            Command::LocalLinkStats(reply) => {
                let _ = reply.send(
                    self.links
                        .as_ref()
                        .map(LocalLinks::stats)
                        .unwrap_or_default(),
                );
            }
            Command::Shutdown(reply) => {
                self.sfu.handle_shutdown(now);
                self.drain().await;
                let _ = reply.send(());
                return true;
            }
        }
        false
    }
}
