//! The SFU: rooms of peers, datagram routing and media forwarding.
//!
//! [`Sfu`] and its run loop (`handle_receive`, `handle_timeout`,
//! `poll_output`) are here; the rest is split by concern into child modules,
//! which share the SFU's private state:
//! - `config`: the settings;
//! - `join`: joining a room, and handovers between connections;
//! - `negotiation`: SDP offers and answers, ICE candidates;
//! - `lifecycle`: publishing, muting, leaving and removal;
//! - `layers`: simulcast layer allocation;
//! - `drive`: polling one peer's `Rtc` and the cross-peer work it yields;
//! - `forward`: the per-packet fan-out and keyframe requests;
//! - `room_service`: the server API (rooms, participants, permissions, data).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use str0m::media::MediaKind;
use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Input, RtcConfig, RtcError};

use crate::id::{ConnectionId, RoomId, TrackId};
use crate::isolation::{Poisoned, RtcCall};
use crate::peer::Peer;
use crate::relay::link::RelayState;
use crate::relay::{LinkId, RelayMessage};
use crate::room::Room;
use crate::router::{Route, Router};
use crate::signal::{LeaveReason, ParticipantInfo, RoomEvent, Signal};
use crate::stats::SfuStats;

mod config;
mod drive;
mod forward;
mod join;
mod layers;
mod lifecycle;
mod negotiation;
mod quality;
mod relay;
mod room_service;

pub use config::{ID_NODE_SHIFT, SfuConfig, id_base_of, id_shard};
pub use join::{JoinRequest, Joined};
pub use relay::MAX_RELAY_PAYLOAD;
pub use room_service::DataMessage;

use drive::Action;
use forward::{ask_keyframe, keyframe_rids};
use layers::LAYER_INTERVAL;

/// What the core asks of its shell.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// Send this datagram.
    Transmit(Transmit),
    /// Deliver this to the signaling channel of this connection's client.
    Signal(ConnectionId, Signal),
    /// Something happened in a room.
    Event(RoomEvent),
    /// Send this over the link to another core holding the room:
    /// [`RelayMessage::Control`] reliably and in order,
    /// [`RelayMessage::Media`] as a datagram (see [`crate::relay`]).
    Relay(LinkId, RelayMessage),
    /// Nothing more to do until this instant (or until the next input).
    Timeout(Instant),
}

/// What a peer's `Rtc` made of a datagram.
enum Taken {
    /// Not STUN, DTLS, RTP or RTCP, or failed to parse.
    Malformed,
    /// From a new address, and not a STUN request that proves the peer.
    Refused,
    /// Given to the `Rtc`, with its verdict.
    Handled(Result<(), RtcError>),
}

/// A connected client that sent no media or RTCP this long and sends some
/// again is treated as back from an outage (its pictures are restarted with
/// keyframes). STUN does not count: during a UDP outage a browser's checks
/// may reach the node over ICE-TCP while its media path is still down, and a
/// keyframe then would be lost with the rest.
const RETURN_AFTER: Duration = Duration::from_millis(1000);

/// Queues a peer to be driven (after a call into it found it poisoned: its
/// drive removes it), where the SFU's `mark_dirty` cannot be called because
/// the peer is borrowed.
fn requeue(queue: &mut VecDeque<ConnectionId>, peer: &mut Peer) {
    if peer.enqueue() {
        queue.push_back(peer.id());
    }
}

/// Logs and counts a peer whose `Rtc` panicked, as it is closed.
fn report_panic(stats: &mut SfuStats, peer: &Peer) {
    if let Some(p) = peer.rtc.panic() {
        stats.peers_panicked += 1;
        tracing::error!(
            room = %peer.room(),
            participant = %peer.id(),
            call = p.call.as_str(),
            panic = %p.message,
            "participant's WebRTC stack panicked: closed alone, the room goes on"
        );
    }
}

/// The selective forwarding unit.
pub struct Sfu {
    config: SfuConfig,
    /// What every peer's `Rtc` is built from (shared certificate and settings).
    rtc_config: RtcConfig,
    now: Instant,
    next_participant: u64,
    next_track: u64,
    // Looked up several times per packet: FxHash, not SipHash. Boxed: a
    // peer (its `Rtc` inline) is ~10 KB, and a table's free buckets and the
    // old table during a resize would cost that much each.
    peers: FxHashMap<ConnectionId, Box<Peer>>,
    rooms: FxHashMap<RoomId, Room>,
    /// Which connection publishes each track.
    tracks: FxHashMap<TrackId, ConnectionId>,
    router: Router,
    /// Peers input arrived for, oldest first: a burst of datagrams is fanned
    /// out in arrival order, so the first to arrive waits least.
    dirty: VecDeque<ConnectionId>,
    /// Peers the last fan-out wrote media to: driven before the next input,
    /// so a packet leaves for all its subscribers before the next one is
    /// worked on.
    written: Vec<ConnectionId>,
    /// Peer deadlines, earliest first; entries a peer has since moved are skipped.
    timers: BinaryHeap<Reverse<(Instant, ConnectionId)>>,
    /// When the rooms' speaker detectors next want a poll.
    speaker_due: Option<Instant>,
    /// When simulcast layers are next allocated.
    layers_due: Instant,
    /// When connection quality is next looked at (crate::quality).
    quality_due: Instant,
    /// The earliest moment an empty room with a timeout closes.
    rooms_due: Option<Instant>,
    transmits: VecDeque<Transmit>,
    signals: VecDeque<(ConnectionId, Signal)>,
    events: VecDeque<RoomEvent>,
    actions: Vec<Action>,
    stats: SfuStats,
    /// Links to other cores: remote participants and tracks, demand, history.
    relay: RelayState,
    /// When held relayed packets and NACKs are next looked at.
    relay_due: Instant,
}

impl Sfu {
    /// An empty SFU; `now` starts its clock.
    pub fn new(config: SfuConfig, now: Instant) -> Self {
        let first_id = config.id_base + config.id_space.0;
        Sfu {
            rtc_config: crate::peer::rtc_config(config.bandwidth_estimation),
            config,
            now,
            next_participant: first_id,
            next_track: first_id,
            peers: FxHashMap::default(),
            rooms: FxHashMap::default(),
            tracks: FxHashMap::default(),
            router: Router::default(),
            dirty: VecDeque::new(),
            written: Vec::new(),
            timers: BinaryHeap::new(),
            speaker_due: None,
            layers_due: now,
            quality_due: now + crate::quality::QUALITY_INTERVAL,
            rooms_due: None,
            transmits: VecDeque::new(),
            signals: VecDeque::new(),
            events: VecDeque::new(),
            actions: Vec::new(),
            stats: SfuStats::default(),
            relay: RelayState::default(),
            relay_due: now,
        }
    }

    /// The running counters.
    pub fn stats(&self) -> SfuStats {
        SfuStats {
            participants: self.peers.len() as u64,
            rooms: self.rooms.len() as u64,
            tracks: self.tracks.len() as u64,
            ..self.stats
        }
    }

    /// The visible participants of a room: this core's in joining order,
    /// then those of other cores holding the room (see
    /// [`Sfu::is_remote`]), by id.
    pub fn participants(&self, room: &RoomId) -> Vec<ParticipantInfo> {
        let mut v: Vec<ParticipantInfo> = self
            .rooms
            .get(room)
            .map(|r| {
                r.connections
                    .iter()
                    .filter_map(|p| self.peers.get(p))
                    .filter(|p| p.is_visible())
                    .map(|p| p.info())
                    .collect()
            })
            .unwrap_or_default();
        v.extend(self.remote_participants(room));
        v
    }

    /// Test only: the next call of kind `on` into the WebRTC stack of
    /// `connection` panics inside it, as a bug in str0m would.
    /// False when there is no such connection.
    #[cfg(feature = "test-hooks")]
    pub fn inject_panic(&mut self, connection: ConnectionId, on: RtcCall) -> bool {
        let Some(peer) = self.peers.get_mut(&connection) else {
            return false;
        };
        peer.rtc.inject_panic(on);
        true
    }

    /// Test only: the local tracks `subscriber` is subscribed to, each with
    /// whether it is forwarded now (false: paused by `track_settings`).
    #[cfg(feature = "test-hooks")]
    pub fn subscriptions_of(&self, subscriber: ConnectionId) -> Vec<(TrackId, bool)> {
        self.peers
            .values()
            .flat_map(|p| p.published.iter())
            .filter_map(|publication| {
                publication
                    .subscribers
                    .iter()
                    .find(|s| s.connection == subscriber)
                    .map(|s| (publication.id, !s.paused))
            })
            .collect()
    }

    /// The room a connection is in.
    pub fn room_of(&self, connection: ConnectionId) -> Option<&RoomId> {
        self.peers.get(&connection).map(|p| p.room())
    }

    /// A datagram arrived on the media port.
    pub fn handle_receive(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        datagram: &[u8],
    ) {
        self.receive(now, Protocol::Udp, source, destination, datagram);
    }

    /// A frame (RFC 4571: one datagram's worth, its length prefix removed)
    /// arrived on the TCP connection from `source` to the passive candidate
    /// `destination` (one of [`SfuConfig::set_tcp_candidates`]). Routed as
    /// a datagram is: a STUN request by the ufrag it names, then by the
    /// connection's remote address once it proved its peer. The core's
    /// answers come out as [`Output::Transmit`] with [`Protocol::Tcp`],
    /// for the shell to write to that connection.
    pub fn handle_receive_tcp(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        frame: &[u8],
    ) {
        self.receive(now, Protocol::Tcp, source, destination, frame);
    }

    /// Whether `frame`, the first of a new TCP connection from `source`, is
    /// for one of this core's participants (a STUN request naming its
    /// ufrag): the shell asks each shard before it gives a connection to one.
    pub fn routes_tcp(&self, source: SocketAddr, frame: &[u8]) -> bool {
        !matches!(
            self.router.route(Protocol::Tcp, source, frame),
            Route::Unknown
        )
    }

    /// The participant that proved it owns the TCP connection from `source`
    /// (its STUN check was accepted), while it is here: a connection
    /// without one, or no longer, is the shell's to close.
    pub fn tcp_owner(&self, source: SocketAddr) -> Option<ConnectionId> {
        self.router.owner((Protocol::Tcp, source))
    }

    fn receive(
        &mut self,
        now: Instant,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        datagram: &[u8],
    ) {
        self.advance(now);
        self.stats.datagrams_received += 1;
        let route = self.router.route(proto, source, datagram);
        let (Route::Known(pid) | Route::Stun(pid)) = route else {
            self.stats.datagrams_unrouted += 1;
            return;
        };
        let Some(peer) = self.peers.get_mut(&pid) else {
            self.stats.datagrams_unrouted += 1;
            return;
        };
        let stun = matches!(route, Route::Stun(_));
        let now = self.now;
        // Parsed inside the wall too: str0m's parsing is the peer's input.
        // (And the input, 400 bytes, is built where it is used, not moved in.)
        let handled = peer.rtc.call(RtcCall::Input, |rtc| {
            let Ok(receive) = Receive::new(proto, source, destination, datagram) else {
                return Taken::Malformed;
            };
            let input = Input::Receive(now, receive);
            // A new address: str0m checks the message integrity before we trust it.
            if stun && !rtc.accepts(&input) {
                return Taken::Refused;
            }
            Taken::Handled(rtc.handle_input(input))
        });
        let silent_for = peer.media_silence(self.now);
        // RFC 7983: a first byte of 0..=3 is STUN.
        let is_stun = datagram.first().is_some_and(|b| *b < 4);
        let mut returned: Vec<TrackId> = Vec::new();
        let mut accepted = false;
        match handled {
            Ok(Taken::Malformed) => {
                self.stats.datagrams_malformed += 1;
                return;
            }
            Ok(Taken::Refused) => {
                self.stats.datagrams_rejected += 1;
                return;
            }
            Ok(Taken::Handled(Ok(()))) => {
                accepted = true;
                peer.heard_from(self.now, is_stun);
                if peer.is_connected() && !is_stun && silent_for >= RETURN_AFTER {
                    // Back from an outage: what it received meanwhile is lost;
                    // a keyframe of each video it receives restarts its pictures
                    // at once, instead of after repairing seconds of gap.
                    tracing::info!(participant = %pid, silent_ms = silent_for.as_millis() as u64, "client back after silence");
                    returned = peer
                        .subscriptions
                        .iter()
                        .filter(|s| s.kind == MediaKind::Video && s.settings.enabled)
                        .filter_map(|s| s.source)
                        .collect();
                    // Its own video too: its subscribers' last pictures are
                    // seconds old, and a request made while it was away
                    // (theirs, or ours at its gap) was lost, so the
                    // throttle does not hold this one back.
                    for p in &mut peer.published {
                        if p.kind == MediaKind::Video {
                            p.keyframes.forget();
                            returned.push(p.id);
                        }
                    }
                }
                if stun && peer.learn_addr((proto, source)) {
                    self.router.add_addr((proto, source), pid);
                }
            }
            Ok(Taken::Handled(Err(e))) => {
                self.stats.datagrams_rejected += 1;
                tracing::debug!(participant = %pid, error = %e, "datagram refused");
            }
            // Its drive, queued below, removes it.
            Err(Poisoned) => {}
        }
        for t in returned {
            self.request_keyframe(t);
        }
        // str0m (RTP mode) holds one received packet until its next poll:
        // the peer is driven now, before the next datagram could replace it,
        // and so are the subscribers the packet was written to, as
        // `poll_output` would before the next input: str0m's pacer would
        // release two packets written before one drive in its own order,
        // not in their arrival order.
        if accepted && drive::is_rtp(datagram) {
            // Its entry in a queue, if any, is skipped (as driven already).
            if let Some(p) = self.peers.get_mut(&pid) {
                p.dequeue();
            }
            self.drive(pid);
            while let Some(p) = self.written.pop() {
                if self.peers.get_mut(&p).is_some_and(|peer| peer.dequeue()) {
                    self.drive(p);
                }
            }
        } else {
            self.mark_dirty(pid);
        }
    }

    /// Time passed; call no later than the last [`Output::Timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        let now = self.now;
        if self.speaker_due.is_some_and(|t| t <= now) {
            self.poll_speakers(now);
        }
        if self.rooms_due.is_some_and(|t| t <= now) {
            self.close_empty_rooms(now);
        }
        if now >= self.layers_due {
            self.layers_due = now + LAYER_INTERVAL;
            self.allocate_all_layers();
            self.relay_layer_tick();
            self.sweep_silent(now);
        }
        if now >= self.quality_due {
            self.quality_due = now + crate::quality::QUALITY_INTERVAL;
            self.tell_quality();
        }
        if now >= self.relay_due {
            self.relay_due = now + relay::RELAY_TICK;
            self.relay_tick();
        }
        if !self.relay.rooms.is_empty() && self.relay.speakers_due.is_none_or(|t| t <= now) {
            self.relay.speakers_due = Some(now + self.config.speaker_interval);
            self.relay_speakers();
        }
        let interval = self.config.keyframe_interval;
        let connect_timeout = self.config.connect_timeout;
        // Only peers whose deadline passed are touched, not every peer.
        while let Some(Reverse((t, pid))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(peer) = self.peers.get_mut(&pid) else {
                continue;
            };
            if !peer.fire_deadline(t) {
                continue; // superseded by a later entry
            }
            if peer.rtc_due(now) {
                peer.run_timeout(now, &mut self.stats);
            }
            if peer.connect_overdue(now, connect_timeout) {
                tracing::info!(participant = %pid, "never connected; removing");
                peer.close(LeaveReason::ConnectionLost);
            }

            let stats = &mut self.stats;
            for p in &mut peer.published {
                if p.keyframes.poll(now, interval) {
                    // A poisoned peer is removed by its drive, queued below.
                    let _ = peer.rtc.call(RtcCall::Keyframe, |rtc| {
                        for rid in keyframe_rids(p) {
                            if ask_keyframe(rtc, p.mid, rid) {
                                stats.keyframe_requests += 1;
                            }
                        }
                    });
                }
            }
            self.mark_dirty(pid);
        }
    }

    /// The next thing to do. Drain until [`Output::Timeout`].
    pub fn poll_output(&mut self) -> Output {
        loop {
            if let Some(t) = self.transmits.pop_front() {
                return Output::Transmit(t);
            }
            if let Some((l, m)) = self.relay.outputs.pop_front() {
                return Output::Relay(l, m);
            }
            if let Some((p, s)) = self.signals.pop_front() {
                return Output::Signal(p, s);
            }
            if let Some(e) = self.events.pop_front() {
                return Output::Event(e);
            }
            if let Some(p) = self.written.pop().or_else(|| self.dirty.pop_front()) {
                // Gone, or driven already from the other queue.
                if !self.peers.get_mut(&p).is_some_and(|peer| peer.dequeue()) {
                    continue;
                }
                self.drive(p);
                continue;
            }
            return Output::Timeout(self.next_timeout());
        }
    }

    fn next_timeout(&mut self) -> Instant {
        let mut next = self.now + Duration::from_secs(1);
        while let Some(Reverse((t, pid))) = self.timers.peek().copied() {
            if self.peers.get(&pid).is_some_and(|p| p.is_deadline(t)) {
                next = t;
                break;
            }
            self.timers.pop(); // stale
        }
        if let Some(t) = self.speaker_due {
            next = next.min(t);
        }
        if !self.peers.is_empty() {
            next = next.min(self.layers_due).min(self.quality_due);
        }
        if let Some(t) = self.rooms_due {
            next = next.min(t);
        }
        if !self.relay.tracks.is_empty() {
            next = next.min(self.layers_due);
        }
        if self.relay_waiting() {
            next = next.min(self.relay_due);
        }
        if !self.relay.rooms.is_empty() {
            next = next.min(self.relay.speakers_due.unwrap_or(self.now));
        }
        next.max(self.now)
    }

    /// Sends each room's speaking list where it changed.
    fn poll_speakers(&mut self, now: Instant) {
        let mut due: Option<Instant> = None;
        for room in self.rooms.values_mut() {
            if let Some(list) = room.speakers.poll(now) {
                for p in &room.connections {
                    self.signals
                        .push_back((*p, Signal::ActiveSpeakers(list.clone())));
                }
            }
            if let Some(t) = room.speakers.next_poll() {
                due = Some(due.map_or(t, |d| d.min(t)));
            }
        }
        self.speaker_due = due;
    }

    fn advance(&mut self, now: Instant) {
        // Time never runs backwards for the peers, whatever the caller passes.
        if now > self.now {
            self.now = now;
        }
    }

    fn mark_dirty(&mut self, p: ConnectionId) {
        if let Some(peer) = self.peers.get_mut(&p)
            && peer.enqueue()
        {
            self.dirty.push_back(p);
        }
    }
}
