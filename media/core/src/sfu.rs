//! The SFU: rooms of peers, datagram routing and media forwarding.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{KeyframeRequestKind, MediaData, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::{ExtensionValues, RtpWrite};
use str0m::{
    Candidate, Event, IceConnectionState, Input, PacerReason, Reason, Rtc, RtcConfig, RtcError,
};

use crate::error::{JoinError, SignalError};
use crate::id::{ParticipantId, RoomId, TrackId};
use crate::isolation::{Poisoned, RtcCall};
use crate::layer_selector::{Demand, allocate, layer_for_size};
use crate::peer::Peer;
use crate::room::{Room, RoomOptions};
use crate::router::{Route, Router};
use crate::signal::{LeaveReason, ParticipantInfo, PeerKind, Permissions, RoomEvent, Signal};
use crate::stats::SfuStats;
mod room_service;

pub use room_service::DataMessage;

use crate::track::{
    Layer, Publication, Subscriber, Subscription, SubscriptionState, TrackSettings, rid_rank,
};

/// Settings of the core.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    candidates: Vec<SocketAddr>,
    connect_timeout: Duration,
    keyframe_interval: Duration,
    max_participants_per_room: u32,
    max_tracks_per_participant: u32,
    speaker_interval: Duration,
    bandwidth_estimation: bool,
    reconnect_timeout: Duration,
    /// First participant and track number, and the step between numbers.
    id_space: (u64, u64),
}

impl SfuConfig {
    /// A configuration advertising these host candidates (address and UDP port).
    pub fn new(candidates: Vec<SocketAddr>) -> Self {
        SfuConfig {
            candidates,
            connect_timeout: Duration::from_secs(30),
            keyframe_interval: Duration::from_millis(500),
            max_participants_per_room: 0,
            max_tracks_per_participant: 0,
            speaker_interval: Duration::from_millis(200),
            bandwidth_estimation: true,
            reconnect_timeout: Duration::from_secs(15),
            id_space: (1, 1),
        }
    }

    /// Numbers participants and tracks `first`, `first + step`, ...: cores
    /// sharing a node (one per CPU core) take `1..=n` and step `n`, so their
    /// ids never collide and an id names its core (see [`id_shard`]).
    pub fn set_id_space(mut self, first: u64, step: u64) -> Self {
        self.id_space = (first.max(1), step.max(1));
        self
    }

    /// How long a participant whose connection dropped is kept for it to
    /// come back (same participant, same subscriptions) before it is removed.
    pub fn set_reconnect_timeout(mut self, d: Duration) -> Self {
        self.reconnect_timeout = d;
        self
    }

    /// Whether subscribers' send bandwidth is estimated (TWCC) and caps their
    /// simulcast layers; without it every subscriber gets a fixed budget.
    pub fn set_bandwidth_estimation(mut self, on: bool) -> Self {
        self.bandwidth_estimation = on;
        self
    }

    /// How often at most the speaking list is sent to a room.
    pub fn set_speaker_interval(mut self, d: Duration) -> Self {
        self.speaker_interval = d;
        self
    }

    /// A peer that has not connected (ICE and DTLS) by then is removed.
    pub fn set_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// The minimum interval between keyframe requests to one publisher track.
    pub fn set_keyframe_interval(mut self, d: Duration) -> Self {
        self.keyframe_interval = d;
        self
    }

    /// The most participants a room takes; 0 for no limit.
    pub fn set_max_participants_per_room(mut self, n: u32) -> Self {
        self.max_participants_per_room = n;
        self
    }

    /// The most tracks (sending audio and video m-lines) one participant's
    /// offer may carry; an offer with more is refused. 0 for no limit.
    pub fn set_max_tracks_per_participant(mut self, n: u32) -> Self {
        self.max_tracks_per_participant = n;
        self
    }

    /// The host candidates advertised to clients.
    pub fn candidates(&self) -> &[SocketAddr] {
        &self.candidates
    }
}

/// A request to put a participant in a room.
#[derive(Debug)]
pub struct JoinRequest {
    room: RoomId,
    identity: String,
    name: Option<String>,
    kind: PeerKind,
    permissions: Permissions,
    offer: Option<SdpOffer>,
    account: Option<(String, String)>,
}

impl JoinRequest {
    /// A join of `identity` to `room` over `kind`, with all permissions and no offer.
    pub fn new(room: RoomId, identity: impl Into<String>, kind: PeerKind) -> Self {
        JoinRequest {
            room,
            identity: identity.into(),
            name: None,
            kind,
            permissions: Permissions::default(),
            offer: None,
            account: None,
        }
    }

    /// The account and device the participant joined as; others see them
    /// in [`ParticipantInfo`].
    pub fn with_account(mut self, account: impl Into<String>, device: impl Into<String>) -> Self {
        self.account = Some((account.into(), device.into()));
        self
    }

    /// The display name (the identity when not set).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// What the participant may do.
    pub fn with_permissions(mut self, p: Permissions) -> Self {
        self.permissions = p;
        self
    }

    /// The room to join.
    pub fn room(&self) -> &RoomId {
        &self.room
    }

    /// The client's SDP offer (required for WHIP and WHEP).
    pub fn with_offer(mut self, offer: SdpOffer) -> Self {
        self.offer = Some(offer);
        self
    }
}

/// A successful join.
#[derive(Debug)]
pub struct Joined {
    /// The key of this connection for later calls ([`Sfu::handle_offer`] and
    /// the like) and for its signals; the participant's id except after a handover.
    pub connection: ParticipantId,
    /// The new participant, as others see it.
    pub participant: ParticipantInfo,
    /// The visible participants already in the room.
    pub others: Vec<ParticipantInfo>,
    /// The answer to the join's offer, if it had one.
    pub answer: Option<SdpAnswer>,
    /// An older session of the same identity that this join closed.
    pub replaced: Option<ParticipantId>,
}

/// What the core asks of its shell.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// Send this datagram.
    Transmit(Transmit),
    /// Deliver this to a participant's signaling connection.
    Signal(ParticipantId, Signal),
    /// Something happened in a room.
    Event(RoomEvent),
    /// Nothing more to do until this instant (or until the next input).
    Timeout(Instant),
}

/// Cross-peer work found while driving one peer, done after its borrow ends.
// Boxing the frame would allocate per packet; the actions Vec is reused instead.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Action {
    Publish(Mid, MediaKind, Vec<str0m::media::Rid>),
    Bind(MediaKind),
    Forward(MediaData),
    Keyframe(TrackId),
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

/// Which of `shards` cores numbered with [`SfuConfig::set_id_space`]`(k + 1,
/// shards)` made participant or track number `id`: `k`.
pub fn id_shard(id: u64, shards: usize) -> usize {
    let n = shards.max(1) as u64;
    (id.saturating_sub(1) % n) as usize
}

/// How long after a handover's new connection is up the old one may keep
/// tracks the new one has not replaced.
const HANDOVER_GRACE: Duration = Duration::from_secs(3);

/// A connected client silent this long that sends again is treated as back
/// from an outage (its pictures are restarted with keyframes).
const RETURN_AFTER: Duration = Duration::from_millis(1000);

/// Due `Rtc` timeouts run inside one drive of a peer before it goes back to
/// the timer heap.
const INLINE_TIMEOUTS: u32 = 16;

/// How long str0m's pacer's look at the queues after an audio packet may
/// wait for the next write to an audio-only peer (see `Sfu::drive`): a bit
/// over one 20 ms audio frame, so that even a single source's next packet
/// comes first. The deadlines it may hide for that long are audio's RTCP
/// reports and TWCC feedback, stats and keep-alives: none is that tight.
const PACER_LOOK_DEFER: Duration = Duration::from_millis(25);

/// How soon after releasing a packet str0m's pacer looks at its queues again.
const PACER_NEXT_LOOK: Duration = Duration::from_micros(1);

/// How often a subscriber whose estimate is below its demand is probed again.
const PROBE_REPEAT: Duration = Duration::from_secs(1);

/// How often simulcast layers are re-allocated to subscribers.
const LAYER_INTERVAL: Duration = Duration::from_millis(500);
/// A subscriber's budget before its bandwidth estimate arrives.
const DEFAULT_BUDGET: u64 = 2_500_000;
/// What one audio track is assumed to take of a budget.
const AUDIO_BITRATE: u64 = 48_000;

/// How long a layer just asked for may take to arrive before it counts as
/// one the publisher cannot send. A browser starts a layer when its own send
/// estimate allows, which took Firefox up to several seconds here; judged
/// absent sooner, the layer was paused again at the next allocation and
/// never started (layers_needed flipping every 500 ms).
const LAYER_START_GRACE: Duration = Duration::from_secs(5);

/// What each simulcast layer of `p` costs, lowest first: its measured
/// bitrate, or for a layer never measured because the publisher was told to
/// pause it, or was asked for it less than [`LAYER_START_GRACE`] ago, a
/// nominal one, so that a subscriber can still ask for it (which resumes it)
/// and keep asking while it starts. A layer never seen though it may be sent
/// for longer stays at 0 (absent).
fn layer_costs(p: &Publication, now: Instant) -> Vec<u64> {
    let top = p.layers.len().saturating_sub(1);
    p.layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let paused = p.layers_signalled.is_some_and(|m| m & (1 << i) == 0);
            let starting = l
                .asked_at
                .is_some_and(|t| now.saturating_duration_since(t) < LAYER_START_GRACE);
            if l.bitrate > 0 || !(paused || starting) {
                l.bitrate
            } else {
                match top - i {
                    0 => 1_200_000,
                    1 => 500_000,
                    _ => 150_000,
                }
            }
        })
        .collect()
}

/// The layers (rids) to ask a keyframe of: for a simulcast track the layers
/// its subscribers receive or switch to, every layer if none is in use yet
/// (str0m needs the rid: a request without one reaches no simulcast layer);
/// `[None]` for a single-layer track.
fn keyframe_rids(p: &Publication) -> Vec<Option<str0m::media::Rid>> {
    if p.layers.is_empty() {
        return vec![None];
    }
    let used: Vec<Option<str0m::media::Rid>> = p
        .layers
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            p.subscribers.iter().any(|s| {
                s.current.map(usize::from) == Some(*i) || s.target.map(usize::from) == Some(*i)
            })
        })
        .map(|(_, l)| Some(l.rid))
        .collect();
    if used.is_empty() {
        p.layers.iter().map(|l| Some(l.rid)).collect()
    } else {
        used
    }
}

/// Writes one audio frame to a subscriber's m-line (its `rtc` and
/// `subscriptions`) as one RTP packet with the m-line's own sequence
/// numbers, carrying the publisher's audio level.
fn write_audio(
    rtc: &mut Rtc,
    subscriptions: &mut [Subscription],
    s: &mut Subscriber,
    pt: Pt,
    time: MediaTime,
    data: &MediaData,
) -> Result<(), RtcError> {
    let mid = s.mid;
    let seq = subscriptions
        .iter_mut()
        .find(|s| s.mid() == Some(mid))
        .ok_or(RtcError::NoSenderSource)?
        .take_seq();
    let ext = ExtensionValues {
        audio_level: data.ext_vals.audio_level,
        voice_activity: data.ext_vals.voice_activity,
        ..Default::default()
    };
    let rtp = RtpWrite::new(
        pt,
        seq,
        time.numer() as u32,
        data.network_time,
        data.data.clone(),
    )
    .marker(data.audio_start_of_talk_spurt)
    .ext_vals(ext);
    let mut api = rtc.direct_api();
    // By SSRC, one hash lookup, while the cached stream still serves the
    // m-line; str0m finds one by m-line only by walking all send streams.
    let cached = s
        .tx_ssrc
        .and_then(|ssrc| api.stream_tx(&ssrc))
        .filter(|tx| tx.mid() == mid && tx.rid().is_none());
    if let Some(tx) = cached {
        tx.write_rtp(rtp);
    } else {
        let tx = api
            .stream_tx_by_mid(mid, None)
            .ok_or(RtcError::NoSenderSource)?;
        s.tx_ssrc = Some(tx.ssrc());
        tx.write_rtp(rtp);
    }
    Ok(())
}

/// Refuses an offer that sends on more audio and video m-lines than
/// `limit` (0: no limit): each would be a track every subscriber gets an
/// m-line for.
fn check_tracks(offer: &SdpOffer, limit: u32) -> Result<(), SignalError> {
    if limit == 0 {
        return Ok(());
    }
    let offered = offer
        .media_lines
        .iter()
        .filter(|m| m.typ.is_media() && !m.disabled && m.direction().is_sending())
        .count();
    if offered > limit as usize {
        return Err(SignalError::TooManyTracks { offered, limit });
    }
    Ok(())
}

/// Runs a due timeout on a peer's `Rtc`; a failure (or a panic) closes the
/// peer and returns false.
fn run_rtc_timeout(peer: &mut Peer, now: Instant, stats: &mut SfuStats) -> bool {
    stats.rtc_timeouts += 1;
    peer.written = false;
    match peer.rtc.call(RtcCall::Timeout, |rtc| {
        rtc.handle_input(Input::Timeout(now))
    }) {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(participant = %peer.id, error = %e, "timeout input failed");
            peer.closing.get_or_insert(LeaveReason::ConnectionLost);
            false
        }
        // Removed at its next drive (queued by every caller).
        Err(Poisoned) => false,
    }
}

/// Queues a peer to be driven (after a call into it found it poisoned: its
/// drive removes it), where the SFU's `mark_dirty` cannot be called because
/// the peer is borrowed.
fn requeue(queue: &mut VecDeque<ParticipantId>, peer: &mut Peer) {
    if !peer.dirty {
        peer.dirty = true;
        queue.push_back(peer.id);
    }
}

/// Logs and counts a peer whose `Rtc` panicked, as it is closed.
fn report_panic(stats: &mut SfuStats, peer: &Peer) {
    if let Some(p) = peer.rtc.panic() {
        stats.peers_panicked += 1;
        tracing::error!(
            room = %peer.room,
            participant = %peer.id,
            call = p.call.as_str(),
            panic = %p.message,
            "participant's WebRTC stack panicked: closed alone, the room goes on"
        );
    }
}

/// Whether an outgoing datagram is RTP (not RTCP, STUN or DTLS): version 2
/// and a payload type outside RTCP's 64-95 (RFC 5761 section 4).
fn is_rtp(datagram: &[u8]) -> bool {
    match datagram {
        [b0, b1, ..] => b0 >> 6 == 2 && !(64..96).contains(&(b1 & 0x7f)),
        _ => false,
    }
}

/// How many RTP packets carried a frame.
fn packets_of(d: &MediaData) -> u64 {
    (**d.seq_range.end())
        .saturating_sub(**d.seq_range.start())
        .saturating_add(1)
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
    peers: FxHashMap<ParticipantId, Box<Peer>>,
    rooms: FxHashMap<RoomId, Room>,
    /// Which participant publishes each track.
    tracks: FxHashMap<TrackId, ParticipantId>,
    router: Router,
    /// Peers input arrived for, oldest first: a burst of datagrams is fanned
    /// out in arrival order, so the first to arrive waits least.
    dirty: VecDeque<ParticipantId>,
    /// Peers the last fan-out wrote media to: driven before the next input,
    /// so a packet leaves for all its subscribers before the next one is
    /// worked on.
    written: Vec<ParticipantId>,
    /// Peer deadlines, earliest first; entries a peer has since moved are skipped.
    timers: BinaryHeap<Reverse<(Instant, ParticipantId)>>,
    /// When the rooms' speaker detectors next want a poll.
    speaker_due: Option<Instant>,
    /// When simulcast layers are next allocated.
    layers_due: Instant,
    /// The earliest moment an empty room with a timeout closes.
    rooms_due: Option<Instant>,
    transmits: VecDeque<Transmit>,
    signals: VecDeque<(ParticipantId, Signal)>,
    events: VecDeque<RoomEvent>,
    actions: Vec<Action>,
    stats: SfuStats,
}

impl Sfu {
    /// An empty SFU; `now` starts its clock.
    pub fn new(config: SfuConfig, now: Instant) -> Self {
        let first_id = config.id_space.0;
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
            rooms_due: None,
            transmits: VecDeque::new(),
            signals: VecDeque::new(),
            events: VecDeque::new(),
            actions: Vec::new(),
            stats: SfuStats::default(),
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

    /// The visible participants of a room, in joining order.
    pub fn participants(&self, room: &RoomId) -> Vec<ParticipantInfo> {
        self.rooms
            .get(room)
            .map(|r| {
                r.participants
                    .iter()
                    .filter_map(|p| self.peers.get(p))
                    .filter(|p| p.is_visible())
                    .map(|p| p.info())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Test only: the next call of kind `on` into the WebRTC stack of
    /// connection `participant` panics inside it, as a bug in str0m would.
    /// False when there is no such connection.
    #[cfg(feature = "test-hooks")]
    pub fn inject_panic(&mut self, participant: ParticipantId, on: RtcCall) -> bool {
        let Some(peer) = self.peers.get_mut(&participant) else {
            return false;
        };
        peer.rtc.inject_panic(on);
        true
    }

    /// The room a participant is in.
    pub fn room_of(&self, participant: ParticipantId) -> Option<&RoomId> {
        self.peers.get(&participant).map(|p| &p.room)
    }

    fn advance(&mut self, now: Instant) {
        // Time never runs backwards for the peers, whatever the caller passes.
        if now > self.now {
            self.now = now;
        }
    }

    fn mark_dirty(&mut self, p: ParticipantId) {
        if let Some(peer) = self.peers.get_mut(&p)
            && !peer.dirty
        {
            peer.dirty = true;
            self.dirty.push_back(p);
        }
    }

    /// Puts a participant in a room.
    pub fn handle_join(&mut self, now: Instant, req: JoinRequest) -> Result<Joined, JoinError> {
        self.advance(now);
        self.admit(req, None)
    }

    /// Moves a participant's call to a new connection (another device of the
    /// same identity) without the others seeing a leave and a join.
    ///
    /// The new connection receives everyone else's tracks. Each track it
    /// publishes replaces the old connection's track of the same kind at its
    /// first decodable frame (audio at once, video at a keyframe), keeping the
    /// track id and the others' m-lines; then the old connection is closed
    /// with [`LeaveReason::HandedOver`].
    pub fn handle_handover(
        &mut self,
        now: Instant,
        from: ParticipantId,
        req: JoinRequest,
    ) -> Result<Joined, JoinError> {
        self.advance(now);
        let Some(old) = self.peers.get(&from) else {
            return Err(JoinError::NotPermitted("no such participant to take over"));
        };
        // The same person: the same account (from another device), or for
        // participants without accounts, the same identity.
        let same = match (&old.account, &req.account) {
            (Some((a, _)), Some((b, _))) => a == b,
            (None, None) => old.identity == req.identity,
            _ => false,
        };
        if !same || old.room != req.room || !old.is_visible() {
            return Err(JoinError::NotPermitted(
                "a handover needs the same account (or identity) in the same room",
            ));
        }
        if req.kind != PeerKind::Session {
            return Err(JoinError::NotPermitted(
                "a handover needs a signaling session",
            ));
        }
        self.admit(req, Some(from))
    }

    fn admit(
        &mut self,
        req: JoinRequest,
        takes_over: Option<ParticipantId>,
    ) -> Result<Joined, JoinError> {
        let JoinRequest {
            room,
            identity,
            name,
            kind,
            permissions,
            offer,
            account,
        } = req;
        match kind {
            PeerKind::Whip if !permissions.publish => {
                return Err(JoinError::NotPermitted("publishing needs canPublish"));
            }
            PeerKind::Whep if !permissions.subscribe => {
                return Err(JoinError::NotPermitted("viewing needs canSubscribe"));
            }
            PeerKind::Whip | PeerKind::Whep if offer.is_none() => {
                return Err(JoinError::OfferRequired);
            }
            _ => {}
        }
        // The same identity joining again replaces its older session (not for
        // viewers, nor during a handover).
        let replaced = if kind == PeerKind::Whep || takes_over.is_some() {
            None
        } else {
            self.rooms.get(&room).and_then(|r| {
                r.participants.iter().copied().find(|p| {
                    self.peers
                        .get(p)
                        .is_some_and(|p| p.identity == identity && p.is_visible())
                })
            })
        };
        // An account's device is replaced by that device only: a room token's
        // identity is whatever its minter chose, and may spell an account's.
        if let Some(old) = replaced.and_then(|p| self.peers.get(&p))
            && old.account.is_some()
            && old.account != account
        {
            return Err(JoinError::NotPermitted(
                "the identity belongs to a signed-in device in this room",
            ));
        }
        let limit = self
            .rooms
            .get(&room)
            .map(|r| r.options.max_participants)
            .filter(|n| *n > 0)
            .unwrap_or(self.config.max_participants_per_room) as usize;
        if let Some(r) = self.rooms.get(&room)
            && limit > 0
            && takes_over.is_none()
            && r.participants.len() - usize::from(replaced.is_some()) >= limit
        {
            return Err(JoinError::RoomFull(room.to_string()));
        }

        let id = ParticipantId(self.next_participant);
        self.next_participant += self.config.id_space.1;
        let name = name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| identity.clone());
        let mut peer = Peer::new(
            self.now,
            id,
            room.clone(),
            identity,
            name,
            kind,
            permissions,
            &self.config.candidates,
            &self.rtc_config,
        );
        peer.account = account;
        let answer = match offer {
            Some(o) => Some(
                check_tracks(&o, self.config.max_tracks_per_participant)
                    .and_then(|()| peer.accept_offer(o))
                    .map_err(|e| match e {
                        SignalError::ConnectionFailed => JoinError::ConnectionFailed,
                        e => JoinError::Offer(e.to_string()),
                    }),
            ),
            None => None,
        };
        // Its `Rtc` panicked (building it, or on the offer): it never joins.
        if peer.rtc.is_poisoned() {
            report_panic(&mut self.stats, &peer);
            return Err(JoinError::ConnectionFailed);
        }
        let answer = answer.transpose()?;
        if let Some(old) = takes_over.and_then(|o| self.peers.get(&o)) {
            // Others keep seeing the same participant: id, identity, name.
            peer.public_id = old.public_id;
            peer.identity = old.identity.clone();
            peer.name = old.name.clone();
            peer.takes_over = takes_over;
        }
        let public_id = peer.public_id;
        let _span = tracing::info_span!("join", room = %room, participant = %id).entered();
        if let Some(old) = replaced {
            self.remove_participant(old, LeaveReason::DuplicateIdentity);
        }

        let now = self.now;
        let room_entry = self.rooms.entry(room.clone()).or_insert_with(|| {
            self.events
                .push_back(RoomEvent::RoomStarted { room: room.clone() });
            Room::new(self.config.speaker_interval, now, RoomOptions::default())
        });
        room_entry.empty_since = None;
        let existing: Vec<ParticipantId> = room_entry.participants.clone();
        room_entry.participants.push(id);

        let info = peer.info();
        for u in &peer.ufrags {
            self.router.add_ufrag(u.clone(), id);
        }
        let visible = peer.is_visible();
        tracing::info!(identity = %info.identity, ?kind, "participant joined");
        self.peers.insert(id, Box::new(peer));
        // A session subscribes to every track already in the room (but its own).
        if permissions.subscribe {
            self.subscribe_to_room(id);
        }
        self.mark_dirty(id);

        let others: Vec<ParticipantInfo> = existing
            .iter()
            .filter_map(|p| self.peers.get(p))
            .filter(|p| p.is_visible() && p.public_id != public_id)
            .map(|p| p.info())
            .collect();
        if let Some(from) = takes_over {
            tracing::info!(%from, "handover started");
        } else if visible {
            for other in &existing {
                self.signals
                    .push_back((*other, Signal::ParticipantJoined(info.clone())));
            }
            self.events.push_back(RoomEvent::ParticipantJoined {
                room,
                participant: info.clone(),
            });
        }
        Ok(Joined {
            connection: id,
            participant: info,
            others,
            answer,
            replaced,
        })
    }

    /// Accepts a client's SDP offer and returns the answer.
    pub fn handle_offer(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        offer: SdpOffer,
    ) -> Result<SdpAnswer, SignalError> {
        self.advance(now);
        let peer = self
            .peers
            .get_mut(&participant)
            .ok_or(SignalError::UnknownParticipant)?;
        check_tracks(&offer, self.config.max_tracks_per_participant)?;
        let answer = match peer.accept_offer(offer) {
            Ok(a) => a,
            Err(e) => {
                if peer.rtc.is_poisoned() {
                    self.mark_dirty(participant);
                }
                return Err(e);
            }
        };
        if let Some(u) = peer.ufrags.last() {
            self.router.add_ufrag(u.clone(), participant);
        }
        self.mark_dirty(participant);
        Ok(answer)
    }

    /// Accepts a client's answer to the server's offer.
    pub fn handle_answer(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        answer: SdpAnswer,
    ) -> Result<(), SignalError> {
        self.advance(now);
        let peer = self
            .peers
            .get_mut(&participant)
            .ok_or(SignalError::UnknownParticipant)?;
        let opened = match peer.accept_answer(answer) {
            Ok(o) => o,
            Err(e) => {
                if peer.rtc.is_poisoned() {
                    self.mark_dirty(participant);
                }
                return Err(e);
            }
        };
        for (source, mid) in opened {
            self.add_subscriber(source, participant, mid);
        }
        self.mark_dirty(participant);
        Ok(())
    }

    /// Adds a trickled ICE candidate of the client (`candidate:...`, no `a=`).
    pub fn handle_candidate(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        candidate: &str,
    ) -> Result<(), SignalError> {
        self.advance(now);
        let peer = self
            .peers
            .get_mut(&participant)
            .ok_or(SignalError::UnknownParticipant)?;
        let line = candidate.trim();
        let line = line.strip_prefix("a=").unwrap_or(line);
        if line.is_empty() {
            // End of candidates.
            return Ok(());
        }
        // A host address hidden behind an mDNS name (`<uuid>.local`, as
        // browsers send): nothing to resolve it with, and nothing lost, since
        // the server is ICE-lite and learns the address from the client's
        // checks. Accepted and ignored rather than refused.
        if line
            .split_whitespace()
            .nth(4)
            .is_some_and(|addr| addr.to_ascii_lowercase().ends_with(".local"))
        {
            return Ok(());
        }
        let c =
            Candidate::from_sdp_string(line).map_err(|e| SignalError::Candidate(e.to_string()))?;
        let added = peer
            .rtc
            .call(RtcCall::Candidate, |rtc| rtc.add_remote_candidate(c));
        // Driven either way: a poisoned peer is removed by its drive.
        self.mark_dirty(participant);
        Ok(added?)
    }

    /// A publisher muted or unmuted one of its tracks (by id, or the first of `kind`).
    pub fn handle_mute(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        track: Option<TrackId>,
        kind: Option<MediaKind>,
        muted: bool,
    ) -> Result<TrackId, SignalError> {
        self.advance(now);
        let peer = self
            .peers
            .get_mut(&participant)
            .ok_or(SignalError::UnknownParticipant)?;
        let p = peer
            .published
            .iter_mut()
            .find(|p| Some(p.id) == track || (track.is_none() && Some(p.kind) == kind))
            .ok_or(SignalError::UnknownTrack)?;
        let changed = p.muted != muted;
        p.muted = muted;
        let id = p.id;
        let video = p.kind == MediaKind::Video;
        let kind = p.kind.into();
        let room = peer.room.clone();
        let public_id = peer.public_id;
        self.signal_room(&room, Some(participant), |_| Signal::TrackMuted {
            participant: public_id,
            track: id,
            kind,
            muted,
        });
        if changed {
            self.events.push_back(RoomEvent::TrackMuted {
                room,
                participant: public_id,
                track: id,
                muted,
            });
            // Subscribers dropped its frames while muted: start a picture.
            if !muted && video {
                self.request_keyframe(id);
            }
        }
        Ok(id)
    }

    /// A subscriber's wishes for one remote track: on or off (a hidden tile,
    /// an unsubscribed track) and the size it renders it at (adaptive stream).
    pub fn handle_track_settings(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        track: TrackId,
        settings: TrackSettings,
    ) -> Result<(), SignalError> {
        self.advance(now);
        let peer = self
            .peers
            .get_mut(&participant)
            .ok_or(SignalError::UnknownParticipant)?;
        let sub = peer
            .subscriptions
            .iter_mut()
            .find(|s| s.source == Some(track))
            .ok_or(SignalError::UnknownTrack)?;
        let was_enabled = sub.settings.enabled;
        sub.settings = settings;
        let mid = sub.mid();
        let publisher = self.tracks.get(&track).copied();
        if let (Some(mid), Some(publisher)) = (mid, publisher)
            && let Some(p) = self
                .peers
                .get_mut(&publisher)
                .and_then(|p| p.publication(track))
            && let Some(s) = p
                .subscribers
                .iter_mut()
                .find(|s| s.participant == participant && s.mid == mid)
        {
            s.paused = !settings.enabled;
            if settings.enabled && !was_enabled {
                // Resume where a picture can start.
                s.current = None;
                if !p.layers.is_empty() {
                    s.target = Some(0);
                }
                self.request_keyframe(track);
            }
        }
        self.allocate_layers(participant);
        self.update_layer_needs();
        Ok(())
    }

    /// Removes connected clients that have sent nothing for the reconnect
    /// timeout. Shorter outages (a network change, a blip) are survived: the
    /// client comes back as the same participant and nobody sees a leave.
    fn sweep_silent(&mut self, now: Instant) {
        let timeout = self.config.reconnect_timeout;
        let mut gone = Vec::new();
        for peer in self.peers.values_mut() {
            if peer.connected && now.saturating_duration_since(peer.last_received) > timeout {
                tracing::info!(participant = %peer.id, "silent past the reconnect timeout; removing");
                peer.closing.get_or_insert(LeaveReason::ConnectionLost);
                gone.push(peer.id);
            }
        }
        for p in gone {
            self.mark_dirty(p);
        }
    }

    fn allocate_all_layers(&mut self) {
        let all: Vec<ParticipantId> = self.peers.keys().copied().collect();
        for p in all {
            self.allocate_layers(p);
        }
        self.update_layer_needs();
    }

    /// Chooses the simulcast layer of each video `subscriber` receives.
    fn allocate_layers(&mut self, subscriber: ParticipantId) {
        struct Item {
            track: TrackId,
            publisher: ParticipantId,
            mid: Mid,
            bitrates: Vec<u64>,
            max_layer: Option<usize>,
            current: Option<usize>,
        }
        let Some(peer) = self.peers.get(&subscriber) else {
            return;
        };
        let mut items: Vec<Item> = Vec::new();
        let mut audio = 0u64;
        for s in &peer.subscriptions {
            let (Some(track), SubscriptionState::Open(mid)) = (s.source, s.state) else {
                continue;
            };
            if s.kind == MediaKind::Audio {
                audio += 1;
                continue;
            }
            let Some(publisher) = self.tracks.get(&track).copied() else {
                continue;
            };
            let Some(p) = self
                .peers
                .get(&publisher)
                .and_then(|p| p.published.iter().find(|p| p.id == track))
            else {
                continue;
            };
            if p.layers.len() < 2 {
                continue;
            }
            let n = p.layers.len();
            let max_layer = match (s.settings.enabled, s.settings.width, s.settings.height) {
                (false, _, _) => None,
                (true, Some(w), Some(h)) => Some(layer_for_size(w, h, p.full_width, n)),
                (true, _, _) => Some(n - 1),
            };
            let current = p
                .subscribers
                .iter()
                .find(|x| x.participant == subscriber && x.mid == mid)
                .and_then(|x| x.current.map(usize::from));
            items.push(Item {
                track,
                publisher,
                mid,
                bitrates: layer_costs(p, self.now),
                max_layer,
                current,
            });
        }
        if items.is_empty() {
            return;
        }
        let budget = peer
            .bwe_estimate
            .unwrap_or(DEFAULT_BUDGET)
            .saturating_sub(audio * AUDIO_BITRATE);
        let demands: Vec<Demand<'_>> = items
            .iter()
            .map(|i| Demand {
                bitrates: &i.bitrates,
                max_layer: i.max_layer,
                current: i.current,
            })
            .collect();
        let choice = allocate(budget, &demands);
        // Ask the estimator to probe up to what the sizes would use.
        let (mut min, mut desired) = (audio * AUDIO_BITRATE, audio * AUDIO_BITRATE);
        for i in &items {
            if let Some(m) = i.max_layer {
                min += i.bitrates.first().copied().unwrap_or(0);
                desired += i.bitrates.get(m).copied().unwrap_or(0);
            }
        }
        let now = self.now;
        if let Some(peer) = self.peers.get_mut(&subscriber) {
            let min = min.max(100_000);
            let mut desired = desired.max(300_000);
            // While the estimate stays below what the sizes would use (a cap
            // that may have been lifted), probe again every few seconds:
            // str0m probes when the desired rate rises, so it dips for one
            // round and rises at the next.
            if peer.bwe_estimate.is_some_and(|e| e < desired) {
                if peer.probe_dip_due.is_none_or(|t| now >= t) {
                    peer.probe_dip_due = Some(now + PROBE_REPEAT);
                    desired = min.min(desired);
                }
            } else {
                peer.probe_dip_due = None;
            }
            let set = peer.rtc.call(RtcCall::Bandwidth, |rtc| {
                rtc.bwe()
                    .set_bitrate(Bitrate::bps(min), Bitrate::bps(desired))
            });
            if set.is_err() {
                requeue(&mut self.dirty, peer);
            }
        }
        for (i, c) in items.iter().zip(choice) {
            let Some(p) = self
                .peers
                .get_mut(&i.publisher)
                .and_then(|p| p.publication(i.track))
            else {
                continue;
            };
            if let Some(s) = p
                .subscribers
                .iter_mut()
                .find(|x| x.participant == subscriber && x.mid == i.mid)
            {
                let target = c.map(|c| c as u8);
                if s.target != target {
                    tracing::debug!(participant = %subscriber, track = %i.track, from = ?s.target, to = ?target, "layer target");
                    self.stats.layer_switches += 1;
                }
                s.target = target;
            }
        }
    }

    /// Tells publishers which simulcast layers anyone needs, when that changed.
    fn update_layer_needs(&mut self) {
        for peer in self.peers.values_mut() {
            for p in &mut peer.published {
                if p.layers.len() < 2 {
                    continue;
                }
                // Layers up to the highest one in use stay on, so a switch
                // down finds its layer running.
                let top = p
                    .subscribers
                    .iter()
                    .filter(|s| !s.paused)
                    .filter_map(|s| s.target.max(s.current))
                    .max();
                let mask: u32 = match top {
                    Some(t) => (1u32 << (u32::from(t) + 1)) - 1,
                    None => 0,
                };
                if p.layers_signalled == Some(mask) {
                    continue;
                }
                let before = p.layers_signalled.unwrap_or(0);
                for (i, l) in p.layers.iter_mut().enumerate() {
                    if mask & !before & (1 << i) != 0 {
                        l.asked_at = Some(self.now);
                    }
                }
                p.layers_signalled = Some(mask);
                let rids = p
                    .layers
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, l)| l.rid.to_string())
                    .collect();
                self.signals
                    .push_back((peer.id, Signal::LayersNeeded { track: p.id, rids }));
            }
        }
    }

    /// A participant leaves (client request, WebSocket closed, DELETE).
    pub fn handle_leave(&mut self, now: Instant, participant: ParticipantId, reason: LeaveReason) {
        self.advance(now);
        self.remove_participant(participant, reason);
    }

    /// Closes every peer (server shutdown); drain [`Sfu::poll_output`] afterwards
    /// to send their goodbyes.
    pub fn handle_shutdown(&mut self, now: Instant) {
        self.advance(now);
        let all: Vec<ParticipantId> = self.peers.keys().copied().collect();
        for p in all {
            self.remove_participant(p, LeaveReason::ServerShutdown);
        }
    }

    /// A datagram arrived on the media port.
    pub fn handle_receive(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        datagram: &[u8],
    ) {
        self.advance(now);
        self.stats.datagrams_received += 1;
        let route = self.router.route(source, datagram);
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
            let Ok(receive) = Receive::new(Protocol::Udp, source, destination, datagram) else {
                return Taken::Malformed;
            };
            let input = Input::Receive(now, receive);
            // A new address: str0m checks the message integrity before we trust it.
            if stun && !rtc.accepts(&input) {
                return Taken::Refused;
            }
            Taken::Handled(rtc.handle_input(input))
        });
        let silent_for = self.now.saturating_duration_since(peer.last_received);
        let mut returned: Vec<TrackId> = Vec::new();
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
                peer.last_received = self.now;
                if peer.connected && silent_for >= RETURN_AFTER {
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
                }
                if stun && !peer.addrs.contains(&source) {
                    peer.addrs.push(source);
                    self.router.add_addr(source, pid);
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
        self.mark_dirty(pid);
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
            self.sweep_silent(now);
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
            if peer.deadline != Some(t) {
                continue; // superseded by a later entry
            }
            peer.deadline = None;
            if now >= peer.rtc_timeout {
                run_rtc_timeout(peer, now, &mut self.stats);
            }
            if !peer.connected && now >= peer.joined_at + connect_timeout {
                tracing::info!(participant = %pid, "never connected; removing");
                peer.closing.get_or_insert(LeaveReason::ConnectionLost);
            }

            let stats = &mut self.stats;
            for p in &mut peer.published {
                if p.keyframes.poll(now, interval) {
                    // A poisoned peer is removed by its drive, queued below.
                    let _ = peer.rtc.call(RtcCall::Keyframe, |rtc| {
                        if let Some(mut w) = rtc.writer(p.mid) {
                            for rid in keyframe_rids(p) {
                                let _ = w.request_keyframe(rid, KeyframeRequestKind::Pli);
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
            if let Some((p, s)) = self.signals.pop_front() {
                return Output::Signal(p, s);
            }
            if let Some(e) = self.events.pop_front() {
                return Output::Event(e);
            }
            if let Some(p) = self.written.pop().or_else(|| self.dirty.pop_front()) {
                match self.peers.get_mut(&p) {
                    Some(peer) if peer.dirty => peer.dirty = false,
                    // Gone, or driven already from the other queue.
                    _ => continue,
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
            if self.peers.get(&pid).is_some_and(|p| p.deadline == Some(t)) {
                next = t;
                break;
            }
            self.timers.pop(); // stale
        }
        if let Some(t) = self.speaker_due {
            next = next.min(t);
        }
        if !self.peers.is_empty() {
            next = next.min(self.layers_due);
        }
        if let Some(t) = self.rooms_due {
            next = next.min(t);
        }
        next.max(self.now)
    }

    /// Sends each room's speaking list where it changed.
    fn poll_speakers(&mut self, now: Instant) {
        let mut due: Option<Instant> = None;
        for room in self.rooms.values_mut() {
            if let Some(list) = room.speakers.poll(now) {
                for p in &room.participants {
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

    /// Puts a peer's next deadline in the timer heap if it changed.
    fn schedule(&mut self, pid: ParticipantId) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        // It panicked after its drive looked (during the cross-peer work):
        // driven again, it goes.
        if peer.rtc.is_poisoned() {
            requeue(&mut self.dirty, peer);
            return;
        }
        let d = peer.next_deadline(self.config.connect_timeout, self.config.keyframe_interval);
        if peer.deadline != Some(d) {
            peer.deadline = Some(d);
            self.timers.push(Reverse((d, pid)));
        }
    }

    /// Polls one peer until its `Rtc` has nothing more, then does the
    /// cross-peer work that turned up.
    fn drive(&mut self, pid: ParticipantId) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        // Its `Rtc` panicked (wherever it was called from): it goes, as a
        // connection lost, without another call into it.
        if peer.rtc.is_poisoned() {
            self.remove_participant(pid, LeaveReason::ConnectionLost);
            return;
        }
        if let Some(offer) = peer.negotiate() {
            self.signals.push_back((pid, Signal::Offer(offer)));
        }
        let mut connected_now = false;
        let mut inline_timeouts = 0u32;
        // Nothing of this peer is due but the media written to it.
        let write_only = peer.written && peer.rtc_timeout > self.now + PACER_NEXT_LOOK;
        // Media written to it goes out only after a timeout (str0m queues
        // it for its pacer): run that now instead of learning it from a
        // `poll_output`, one fewer per forwarded packet.
        if peer.written {
            inline_timeouts += 1;
            run_rtc_timeout(peer, self.now, &mut self.stats);
        }
        loop {
            self.stats.rtc_polls += 1;
            let Ok(output) = peer.rtc.call(RtcCall::Poll, |rtc| rtc.poll_output()) else {
                break; // poisoned: removed below
            };
            match output {
                // Already due: str0m packetizes written media on a timeout.
                // Run it here instead of a round trip through the timer heap
                // and the shell's loop; bounded, in case a deadline stays due
                // without progress. So is the pacer's wake-up 1 µs after a
                // packet it released while audio written to this peer still
                // waits: str0m releases one packet per timeout, and the rest
                // of a burst's packets should not wait for the timer heap.
                Ok(str0m::Output::Timeout(t))
                    if inline_timeouts < INLINE_TIMEOUTS
                        && (t <= self.now
                            || (peer.audio_unsent > 0 && t <= self.now + PACER_NEXT_LOOK)) =>
                {
                    inline_timeouts += 1;
                    if !run_rtc_timeout(peer, t.max(self.now), &mut self.stats) {
                        break;
                    }
                }
                Ok(str0m::Output::Timeout(t)) => {
                    peer.rtc_timeout = t;
                    // str0m's pacer asks for a timeout right after each packet
                    // it releases, only to take a fresh look at the queues. With
                    // no video either way nothing is paced or padded, so when
                    // no other packet waits, that look can wait for the next
                    // write (which needs a timeout anyway): half the timeouts
                    // per audio packet.
                    let reason = peer
                        .rtc
                        .call(RtcCall::Poll, |rtc| rtc.last_timeout_reason());
                    if reason == Ok(Reason::Pacer(PacerReason::Immediate)) {
                        if peer.audio_unsent == 0 && !peer.has_video() {
                            peer.rtc_timeout = t + PACER_LOOK_DEFER;
                        }
                    } else if t > self.now {
                        // The pacer's last look released nothing: all went out.
                        peer.audio_unsent = 0;
                    }
                    break;
                }
                Ok(str0m::Output::Transmit(t)) => {
                    let rtp = is_rtp(&t.contents);
                    if rtp {
                        peer.audio_unsent = peer.audio_unsent.saturating_sub(1);
                    }
                    self.transmits.push_back(t);
                    // The last audio packet written to it went out on timeouts
                    // run only for the writes. str0m hands out its feedback
                    // before paced media, so nothing else waits, and its next
                    // deadline is its pacer's look right after this packet,
                    // deferred as below: the poll that would only say so, a
                    // walk of the whole `Rtc` per packet, is skipped.
                    if rtp && write_only && peer.audio_unsent == 0 && !peer.has_video() {
                        peer.rtc_timeout = self.now + PACER_NEXT_LOOK + PACER_LOOK_DEFER;
                        break;
                    }
                }
                Ok(str0m::Output::Event(e)) => match e {
                    Event::Connected => {
                        peer.connected = true;
                        peer.connected_at = Some(self.now);
                        connected_now = true;
                    }
                    Event::IceConnectionStateChange(state) => match state {
                        // Not gone yet: a short outage or a new network may bring
                        // it back (the client restarts ICE).
                        // The reconnect timeout, not this, decides removal.
                        IceConnectionState::Disconnected => {
                            tracing::info!(participant = %pid, "ice disconnected; waiting for the client to return");
                        }
                        other => tracing::debug!(participant = %pid, state = ?other, "ice state"),
                    },
                    Event::MediaAdded(m) => {
                        let ours = peer.subscriptions.iter().any(|s| s.mid() == Some(m.mid));
                        if ours {
                            continue;
                        }
                        if m.direction.is_receiving() {
                            let rids = m
                                .simulcast
                                .map(|s| s.send.into_iter().chain(s.recv).map(|l| l.rid).collect())
                                .unwrap_or_default();
                            self.actions.push(Action::Publish(m.mid, m.kind, rids));
                        } else if m.direction.is_sending() && peer.kind == PeerKind::Whep {
                            peer.subscriptions.push(Subscription::new(
                                None,
                                None,
                                m.kind,
                                SubscriptionState::Open(m.mid),
                            ));
                            self.actions.push(Action::Bind(m.kind));
                        }
                    }
                    Event::MediaData(d) => {
                        self.stats.media_received += 1;
                        self.stats.packets_received += packets_of(&d);
                        if let Some(level) = d.ext_vals.audio_level
                            && let Some(room) = self.rooms.get_mut(&peer.room)
                        {
                            room.speakers.observe(peer.public_id, level, self.now);
                            let due = self.now + self.config.speaker_interval;
                            if self.speaker_due.is_none_or(|t| t > due) {
                                self.speaker_due = Some(due);
                            }
                        }
                        if !d.contiguous
                            && let Some(p) = peer.publication_by_mid(d.mid)
                        {
                            self.actions.push(Action::Keyframe(p.id));
                        }
                        self.actions.push(Action::Forward(d));
                    }
                    Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                        tracing::debug!(participant = %pid, estimate = estimate.as_u64(), "bandwidth estimate");
                        peer.bwe_estimate = Some(estimate.as_u64());
                    }
                    Event::MediaEgressStats(st) => {
                        // NACKs from this subscriber, answered from the send buffer.
                        self.stats.nacks_received +=
                            peer.nack_delta(st.mid, Some(st.nacks), None).0;
                    }
                    Event::MediaIngressStats(st) => {
                        // NACKs to this publisher for packets lost on its way in.
                        self.stats.nacks_sent += peer.nack_delta(st.mid, None, Some(st.nacks)).1;
                    }
                    Event::KeyframeRequest(r) => {
                        if let Some(src) = peer.source_of(r.mid) {
                            self.actions.push(Action::Keyframe(src));
                        }
                    }
                    _ => {}
                },
                // A frame whose payload its codec does not allow (str0m's
                // depacketizer refused it, and dropped it): that frame is
                // lost, not the connection. A video decoder then needs a
                // keyframe.
                Err(RtcError::Packet(mid, pt, e)) => {
                    self.stats.media_undecodable += 1;
                    tracing::debug!(participant = %pid, %mid, %pt, error = %e, "undecodable frame dropped");
                    if let Some(p) = peer.publication_by_mid(mid)
                        && p.kind == MediaKind::Video
                    {
                        self.actions.push(Action::Keyframe(p.id));
                    }
                }
                Err(e) => {
                    tracing::info!(participant = %pid, error = %e, "connection failed");
                    peer.closing.get_or_insert(LeaveReason::ConnectionLost);
                    break;
                }
            }
        }
        // Not alive includes poisoned.
        let alive = peer.rtc.call(RtcCall::Poll, |rtc| rtc.is_alive());
        let closing = peer.closing.or(if alive == Ok(true) {
            None
        } else {
            Some(LeaveReason::ConnectionLost)
        });
        let poisoned = alive.is_err();
        if connected_now {
            tracing::info!(participant = %pid, room = %peer.room, "media connected");
            self.events.push_back(RoomEvent::ParticipantConnected {
                room: peer.room.clone(),
                participant: peer.public_id,
                join_time: self.now.saturating_duration_since(peer.joined_at),
            });
        }

        let mut actions = std::mem::take(&mut self.actions);
        if poisoned {
            // Nothing more comes of a peer that panicked.
            actions.clear();
        }
        for a in actions.drain(..) {
            match a {
                Action::Publish(mid, kind, rids) => self.publish(pid, mid, kind, &rids),
                Action::Bind(kind) => self.bind_viewer(pid, kind),
                Action::Forward(d) => self.forward(pid, d),
                Action::Keyframe(track) => self.request_keyframe(track),
            }
        }
        self.actions = actions;
        if let Some(reason) = closing {
            self.remove_participant(pid, reason);
        } else {
            self.check_handover(pid);
            self.schedule(pid);
        }
    }

    fn publish(
        &mut self,
        pid: ParticipantId,
        mid: Mid,
        kind: MediaKind,
        rids: &[str0m::media::Rid],
    ) {
        let id = TrackId(self.next_track);
        self.next_track += self.config.id_space.1;
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        if !peer.permissions.publish {
            tracing::info!(participant = %pid, %mid, "track withheld: no publish permission");
            peer.withheld.push((mid, kind, rids.to_vec()));
            return;
        }
        if let Some(old) = peer.takes_over
            && self
                .peers
                .get(&old)
                .is_some_and(|o| o.published.iter().any(|p| p.kind == kind))
        {
            // Replaces the old connection's track once media flows.
            if let Some(peer) = self.peers.get_mut(&pid) {
                peer.pending_takeover.push((mid, kind));
            }
            return;
        }
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        let public_id = peer.public_id;
        let mut publication = Publication::new(id, mid, kind);
        let mut rids = rids.to_vec();
        rids.dedup();
        rids.sort_by_key(|r| rid_rank(r));
        publication.layers = rids.into_iter().map(Layer::new).collect();
        let info = publication.info();
        peer.published.push(publication);
        let room = peer.room.clone();
        self.tracks.insert(id, pid);
        tracing::info!(participant = %pid, track = %id, ?kind, "track published");
        self.events.push_back(RoomEvent::TrackPublished {
            room: room.clone(),
            participant: public_id,
            track: id,
            kind: kind.into(),
        });
        let members = self
            .rooms
            .get(&room)
            .map(|r| r.participants.clone())
            .unwrap_or_default();
        for m in members {
            let Some(other) = self.peers.get_mut(&m) else {
                continue;
            };
            if other.public_id == public_id {
                continue;
            }
            if other.is_visible() || other.kind == PeerKind::Whep {
                self.signals.push_back((
                    m,
                    Signal::TrackPublished {
                        participant: public_id,
                        track: info.clone(),
                    },
                ));
            }
            if !other.permissions.subscribe {
                continue;
            }
            match other.kind {
                PeerKind::Session => {
                    other.subscriptions.push(Subscription::new(
                        Some(id),
                        Some(public_id),
                        kind,
                        SubscriptionState::ToOpen,
                    ));
                    other.needs_negotiation = true;
                    self.mark_dirty(m);
                }
                PeerKind::Whep => self.bind_viewer(m, kind),
                PeerKind::Whip => {}
            }
        }
    }

    /// Feeds free m-lines of a WHEP viewer from the room's tracks of `kind`.
    fn bind_viewer(&mut self, viewer: ParticipantId, kind: MediaKind) {
        let Some(room) = self.peers.get(&viewer).map(|p| p.room.clone()) else {
            return;
        };
        let members = self
            .rooms
            .get(&room)
            .map(|r| r.participants.clone())
            .unwrap_or_default();
        // The first published track of this kind feeds the viewer.
        let candidate = members.iter().filter(|m| **m != viewer).find_map(|m| {
            self.peers.get(m).and_then(|p| {
                p.published
                    .iter()
                    .find(|t| t.kind == kind)
                    .map(|t| (p.id, t.id))
            })
        });
        let Some((publisher, track)) = candidate else {
            return;
        };
        let Some(v) = self.peers.get_mut(&viewer) else {
            return;
        };
        let Some(slot) = v.free_slot(kind) else {
            return;
        };
        slot.source = Some(track);
        slot.publisher = Some(publisher);
        let Some(mid) = slot.mid() else {
            return;
        };
        self.add_subscriber(track, viewer, mid);
    }

    /// Starts forwarding `track` to `subscriber` on its m-line `mid`.
    fn add_subscriber(&mut self, track: TrackId, subscriber: ParticipantId, mid: Mid) {
        let Some(publisher) = self.tracks.get(&track).copied() else {
            return;
        };
        let Some(p) = self
            .peers
            .get_mut(&publisher)
            .and_then(|p| p.publication(track))
        else {
            return;
        };
        // Simulcast starts on the lowest layer, for a quick first picture;
        // the allocation raises it as bandwidth and size allow.
        let target = if p.layers.is_empty() { None } else { Some(0) };
        p.subscribers
            .push(Subscriber::new(subscriber, mid, p.epoch, target));
        // A new subscriber can only start decoding on a keyframe.
        if p.kind == MediaKind::Video {
            self.request_keyframe(track);
        }
    }

    fn request_keyframe(&mut self, track: TrackId) {
        let Some(publisher) = self.tracks.get(&track).copied() else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&publisher) else {
            return;
        };
        let now = self.now;
        let interval = self.config.keyframe_interval;
        let Some(p) = peer.published.iter_mut().find(|p| p.id == track) else {
            return;
        };
        if p.kind != MediaKind::Video {
            return;
        }
        if !p.keyframes.request(now, interval) {
            self.stats.keyframe_requests_throttled += 1;
            return;
        }
        let mid = p.mid;
        let rids = keyframe_rids(p);
        let stats = &mut self.stats;
        // Driven below either way: a poisoned peer is removed by its drive.
        let _ = peer.rtc.call(RtcCall::Keyframe, |rtc| {
            if let Some(mut w) = rtc.writer(mid) {
                for rid in rids {
                    match w.request_keyframe(rid, KeyframeRequestKind::Pli) {
                        Ok(()) => stats.keyframe_requests += 1,
                        Err(e) => {
                            tracing::debug!(track = %track, error = %e, "keyframe request failed")
                        }
                    }
                }
            }
        });
        self.mark_dirty(publisher);
    }

    /// Writes one media frame of `publisher` to all its subscribers.
    fn forward(&mut self, publisher: ParticipantId, data: MediaData) {
        if self
            .peers
            .get(&publisher)
            .is_some_and(|p| p.pending_takeover.iter().any(|(m, _)| *m == data.mid))
            && !self.take_over_track(publisher, &data)
        {
            return;
        }
        let now = self.now;
        let Some(p) = self
            .peers
            .get_mut(&publisher)
            .and_then(|p| p.publication_by_mid(data.mid))
        else {
            return;
        };
        // A muted track is not forwarded, whether or not its publisher
        // still sends (the server API's mute does not rely on the client).
        if p.muted {
            return;
        }
        let layer = p.layer_of(data.rid);
        if let Some(l) = layer {
            p.layers[l].measure(now, data.data.len());
        }
        let epoch = p.epoch;
        let direct = p.kind == MediaKind::Audio;
        let keyframe = data.is_keyframe();
        // Taken out so subscribers' choices can be updated while writing to
        // other peers; put back below. No allocation: the Vec moves.
        let mut subscribers = std::mem::take(&mut p.subscribers);
        let packets = packets_of(&data);
        // Layers some subscriber waits to switch to (bit per layer).
        let mut want_keyframe: u32 = 0;
        for s in &mut subscribers {
            if s.paused {
                continue;
            }
            if let Some(l) = layer {
                let l = l as u8;
                if s.target != s.current {
                    // Switch only where the new layer's picture can start.
                    if s.target == Some(l) && keyframe {
                        s.current = s.target;
                        s.rebase();
                    } else if let Some(t) = s.target {
                        want_keyframe |= 1 << t.min(31);
                    }
                }
                if s.current != Some(l) {
                    continue;
                }
            }
            let Some(sub) = self.peers.get_mut(&s.participant) else {
                continue;
            };
            let Peer {
                rtc, subscriptions, ..
            } = &mut **sub;
            // A panic in the subscriber's `Rtc` is the subscriber's: it is
            // closed, the publisher and the other subscribers go on.
            let written = rtc.call(RtcCall::Forward, |rtc| {
                // The subscriber may have negotiated other payload types, or not
                // this codec. An m-line's payload types stay fixed once
                // negotiated, so the match is kept per source payload type.
                let pt = match s.pt_map {
                    Some((e, from, to)) if e == epoch && from == data.pt => to,
                    _ => {
                        let to = rtc
                            .writer(s.mid)
                            .and_then(|w| w.match_params(data.params))?;
                        s.pt_map = Some((epoch, data.pt, to));
                        to
                    }
                };
                let time = s.map_time(epoch, data.time, data.network_time);
                Some(if direct {
                    // An audio frame is one RTP packet: written straight to the
                    // send stream, it skips str0m's payloader and its copy.
                    write_audio(rtc, subscriptions, s, pt, time, &data)
                } else {
                    rtc.writer(s.mid)?
                        .write(pt, data.network_time, time, data.data.clone())
                })
            });
            let written = match written {
                Ok(Some(w)) => w,
                Ok(None) => continue,
                Err(Poisoned) => {
                    // Its drive removes it, right after this fan-out.
                    if !sub.dirty {
                        sub.dirty = true;
                        self.written.push(s.participant);
                    }
                    continue;
                }
            };
            match written {
                Ok(()) => {
                    if direct {
                        sub.audio_unsent += 1;
                    }
                    // Driven right after this fan-out even when input for it
                    // waits further back in the queue: str0m's pacer would
                    // release two packets written before one drive in its
                    // own order, not theirs.
                    if !sub.written {
                        sub.written = true;
                        sub.dirty = true;
                        self.written.push(s.participant);
                    }
                    self.stats.media_forwarded += 1;
                    self.stats.packets_forwarded += packets;
                    self.stats.bytes_forwarded += data.data.len() as u64;
                }
                Err(e) => {
                    tracing::debug!(participant = %s.participant, error = %e, "write failed");
                }
            }
        }
        let Some(peer) = self.peers.get_mut(&publisher) else {
            return;
        };
        let interval = self.config.keyframe_interval;
        let Some(p) = peer.published.iter_mut().find(|p| p.mid == data.mid) else {
            return;
        };
        p.subscribers = subscribers;
        if want_keyframe != 0 {
            let mid = p.mid;
            for (i, l) in p.layers.iter_mut().enumerate() {
                if want_keyframe & (1 << i.min(31)) != 0 && l.keyframes.request(now, interval) {
                    let stats = &mut self.stats;
                    // Driven below either way: poisoned, its drive removes it.
                    let _ = peer.rtc.call(RtcCall::Keyframe, |rtc| {
                        if let Some(mut w) = rtc.writer(mid) {
                            let _ = w.request_keyframe(Some(l.rid), KeyframeRequestKind::Pli);
                            stats.keyframe_requests += 1;
                        }
                    });
                    if !peer.dirty {
                        peer.dirty = true;
                        self.written.push(publisher);
                    }
                }
            }
        }
    }

    /// Moves the old connection's track of this frame's kind to the new
    /// connection, if the frame can start a picture (audio always, video at a
    /// keyframe). True when the frame is to be forwarded.
    fn take_over_track(&mut self, new: ParticipantId, data: &MediaData) -> bool {
        let Some(peer) = self.peers.get_mut(&new) else {
            return false;
        };
        let Some(pos) = peer
            .pending_takeover
            .iter()
            .position(|(m, _)| *m == data.mid)
        else {
            return false;
        };
        let kind = peer.pending_takeover[pos].1;
        if kind == MediaKind::Video && !data.is_keyframe() {
            // Keep the old picture until the new device sends a keyframe.
            let now = self.now;
            let interval = self.config.keyframe_interval;
            if peer.handover_keyframes.request(now, interval) {
                let stats = &mut self.stats;
                let asked = peer.rtc.call(RtcCall::Keyframe, |rtc| {
                    if let Some(mut w) = rtc.writer(data.mid) {
                        let _ = w.request_keyframe(None, KeyframeRequestKind::Pli);
                        stats.keyframe_requests += 1;
                    }
                });
                if asked.is_err() {
                    requeue(&mut self.dirty, peer);
                }
            }
            return false;
        }
        peer.pending_takeover.swap_remove(pos);
        let Some(old) = peer.takes_over else {
            return false;
        };
        let Some(o) = self.peers.get_mut(&old) else {
            return false;
        };
        let Some(i) = o.published.iter().position(|p| p.kind == kind) else {
            return false;
        };
        let mut publication = o.published.remove(i);
        publication.mid = data.mid;
        publication.keyframes = Default::default();
        // Subscribers re-base their timestamps on the new source.
        publication.epoch = publication.epoch.wrapping_add(1);
        let track = publication.id;
        self.tracks.insert(track, new);
        if let Some(peer) = self.peers.get_mut(&new) {
            peer.published.push(publication);
        }
        tracing::info!(%track, from = %old, to = %new, "track handed over");
        self.check_handover(new);
        true
    }

    /// Ends a handover once the new connection carries everything it will:
    /// all the old connection's tracks, or a grace period after connecting.
    fn check_handover(&mut self, new: ParticipantId) {
        let Some(peer) = self.peers.get(&new) else {
            return;
        };
        let Some(old) = peer.takes_over else {
            return;
        };
        let Some(connected_at) = peer.connected_at else {
            return;
        };
        let old_done = self.peers.get(&old).is_none_or(|o| o.published.is_empty());
        let grace_over = self.now >= connected_at + HANDOVER_GRACE;
        if !old_done && !grace_over {
            return;
        }
        let public = peer.public_id;
        let room = peer.room.clone();
        if let Some(peer) = self.peers.get_mut(&new) {
            peer.takes_over = None;
        }
        tracing::info!(from = %old, to = %new, "handover complete");
        self.events.push_back(RoomEvent::ParticipantHandedOver {
            room,
            participant: public,
            to: new,
        });
        self.remove_participant(old, LeaveReason::HandedOver);
        // Tracks of kinds the old connection did not have, or that never
        // produced a frame in time, become tracks of their own.
        let pending = self
            .peers
            .get_mut(&new)
            .map(|p| std::mem::take(&mut p.pending_takeover))
            .unwrap_or_default();
        for (mid, kind) in pending {
            self.publish(new, mid, kind, &[]);
        }
    }

    fn signal_room(
        &mut self,
        room: &RoomId,
        except: Option<ParticipantId>,
        mut f: impl FnMut(ParticipantId) -> Signal,
    ) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        for p in &r.participants {
            if Some(*p) != except {
                self.signals.push_back((*p, f(*p)));
            }
        }
    }

    fn remove_participant(&mut self, pid: ParticipantId, reason: LeaveReason) {
        let Some(mut peer) = self.peers.remove(&pid) else {
            return;
        };
        let _span = tracing::info_span!("leave", room = %peer.room, participant = %pid).entered();
        tracing::info!(reason = reason.as_str(), "participant left");
        self.router.remove(&peer.ufrags, &peer.addrs, pid);
        self.dirty.retain(|p| *p != pid);
        self.written.retain(|p| *p != pid);
        // Send DTLS close_notify and RTCP BYE so the client learns at once;
        // not if its `Rtc` panicked (it is dropped, never called again). A
        // client that gets no goodbye learns from its signaling's `left`.
        let transmits = &mut self.transmits;
        let _ = peer.rtc.call(RtcCall::Close, |rtc| {
            if rtc.close().is_ok() {
                for _ in 0..32 {
                    match rtc.poll_output() {
                        Ok(str0m::Output::Transmit(t)) => transmits.push_back(t),
                        Ok(str0m::Output::Event(_)) => {}
                        Ok(str0m::Output::Timeout(_)) | Err(_) => break,
                    }
                }
            }
        });
        report_panic(&mut self.stats, &peer);
        let room = peer.room.clone();
        if let Some(r) = self.rooms.get_mut(&room) {
            r.remove(pid);
        }
        let public = peer.public_id;
        // Another connection of the same participant (a handover) stays: the
        // others see no leave.
        let successor = self.rooms.get(&room).and_then(|r| {
            r.participants
                .iter()
                .copied()
                .find(|m| self.peers.get(m).is_some_and(|p| p.public_id == public))
        });
        if successor.is_none()
            && let Some(r) = self.rooms.get_mut(&room)
        {
            r.speakers.remove(public);
        }
        // What it received: stop feeding it.
        for s in &peer.subscriptions {
            if let (Some(src), Some(mid)) = (s.source, s.mid()) {
                self.stop_feeding(src, pid, mid);
            }
        }
        // What it published: everyone's subscriptions lose their source.
        let tracks: Vec<TrackId> = peer.published.iter().map(|p| p.id).collect();
        self.drop_publications(&room, public, peer.is_visible(), &tracks);
        let members = self
            .rooms
            .get(&room)
            .map(|r| r.participants.clone())
            .unwrap_or_default();
        if peer.is_visible() && successor.is_none() {
            for m in &members {
                if self.peers.get(m).is_some_and(|o| o.public_id != public) {
                    self.signals.push_back((
                        *m,
                        Signal::ParticipantLeft {
                            participant: public,
                            reason,
                        },
                    ));
                }
            }
        }
        self.signals.push_back((pid, Signal::Left { reason }));
        if peer.is_visible() && successor.is_none() {
            self.events.push_back(RoomEvent::ParticipantLeft {
                room: room.clone(),
                participant: public,
                reason,
            });
        }
        // The old connection of a handover died first: the new one's tracks
        // become tracks of their own.
        if let Some(next) = successor
            && self.peers.get(&next).and_then(|p| p.takes_over) == Some(pid)
        {
            let pending = self
                .peers
                .get_mut(&next)
                .map(|p| {
                    p.takes_over = None;
                    std::mem::take(&mut p.pending_takeover)
                })
                .unwrap_or_default();
            for (mid, kind) in pending {
                self.publish(next, mid, kind, &[]);
            }
        }
        if members.is_empty() {
            self.room_emptied(room);
        }
    }

    /// Track `src` stops being written to `subscriber`'s m-line `mid`.
    fn stop_feeding(&mut self, src: TrackId, subscriber: ParticipantId, mid: Mid) {
        if let Some(publisher) = self.tracks.get(&src).copied()
            && let Some(p) = self
                .peers
                .get_mut(&publisher)
                .and_then(|p| p.publication(src))
        {
            p.subscribers
                .retain(|x| !(x.participant == subscriber && x.mid == mid));
        }
    }

    /// Tracks of `public` are gone (its connection left, or it may no longer
    /// publish): subscribers stop receiving them and are told.
    fn drop_publications(
        &mut self,
        room: &RoomId,
        public: ParticipantId,
        visible: bool,
        tracks: &[TrackId],
    ) {
        if tracks.is_empty() {
            return;
        }
        for t in tracks {
            self.tracks.remove(t);
            self.events.push_back(RoomEvent::TrackUnpublished {
                room: room.clone(),
                participant: public,
                track: *t,
            });
        }
        let members = self
            .rooms
            .get(room)
            .map(|r| r.participants.clone())
            .unwrap_or_default();
        for m in &members {
            let Some(other) = self.peers.get_mut(m) else {
                continue;
            };
            if other.public_id == public {
                continue;
            }
            let mut rebind = Vec::new();
            for s in &mut other.subscriptions {
                if let Some(src) = s.source
                    && tracks.contains(&src)
                {
                    s.source = None;
                    s.publisher = None;
                    other.needs_negotiation = true;
                    rebind.push(s.kind);
                }
            }
            if visible {
                for t in tracks {
                    self.signals.push_back((
                        *m,
                        Signal::TrackUnpublished {
                            participant: public,
                            track: *t,
                        },
                    ));
                }
            }
            let whep = other.kind == PeerKind::Whep;
            self.mark_dirty(*m);
            if whep {
                for kind in rebind {
                    self.bind_viewer(*m, kind);
                }
            }
        }
    }

    /// The last participant left: the room closes now, or after its empty timeout.
    fn room_emptied(&mut self, room: RoomId) {
        let now = self.now;
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        if r.options.empty_timeout.is_some() {
            r.empty_since = Some(now);
            if let Some(t) = r.closes_at() {
                self.rooms_due = Some(self.rooms_due.map_or(t, |d| d.min(t)));
            }
            return;
        }
        self.rooms.remove(&room);
        self.events.push_back(RoomEvent::RoomFinished { room });
    }
}

#[cfg(test)]
mod tests {
    use super::{LAYER_START_GRACE, is_rtp, layer_costs};
    use crate::id::TrackId;
    use crate::track::{Layer, Publication};
    use std::time::{Duration, Instant};
    use str0m::media::{MediaKind, Mid};

    #[test]
    fn a_layer_asked_for_keeps_a_nominal_cost_while_it_starts() {
        let t0 = Instant::now();
        let mut p = Publication::new(TrackId(1), Mid::from("1"), MediaKind::Video);
        p.layers = ["q", "h", "f"].map(|r| Layer::new(r.into())).into();
        // Only q was ever sent (Firefox starts with one layer) and only q is asked for.
        p.layers[0].bitrate = 150_000;
        p.layers_signalled = Some(0b001);
        assert_eq!(layer_costs(&p, t0), [150_000, 500_000, 1_200_000]);
        // Now all three are asked for: h and f are not there yet, but may come.
        p.layers_signalled = Some(0b111);
        for l in &mut p.layers[1..] {
            l.asked_at = Some(t0);
        }
        let soon = t0 + LAYER_START_GRACE - Duration::from_millis(1);
        assert_eq!(layer_costs(&p, soon), [150_000, 500_000, 1_200_000]);
        // h arrived; f never did: the publisher cannot send it.
        p.layers[1].bitrate = 450_000;
        assert_eq!(
            layer_costs(&p, t0 + LAYER_START_GRACE),
            [150_000, 450_000, 0]
        );
    }

    #[test]
    fn rtp_is_told_from_rtcp_stun_and_dtls() {
        // Opus (PT 111) with and without the marker bit.
        assert!(is_rtp(&[0x80, 111, 0, 1]));
        assert!(is_rtp(&[0x80, 0x80 | 111, 0, 1]));
        // RTCP receiver report (201) and transport feedback (205).
        assert!(!is_rtp(&[0x81, 201, 0, 7]));
        assert!(!is_rtp(&[0x8f, 205, 0, 4]));
        // A STUN binding response and a DTLS record.
        assert!(!is_rtp(&[0x01, 0x01, 0, 0]));
        assert!(!is_rtp(&[22, 0xfe, 0xfd]));
        assert!(!is_rtp(&[0x80]));
    }
}
