//! One participant's WebRTC connection: a str0m `Rtc` plus what it publishes
//! and receives.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId};
use str0m::crypto::CryptoProvider;
use str0m::media::{Direction, MediaKind, Mid, Rid};
use str0m::net::{Protocol, TcpType};
use str0m::rtp::Ssrc;
use str0m::{Candidate, IceCreds, Input, Rtc, RtcConfig};

use crate::error::SignalError;
use crate::id::{ConnectionId, ParticipantId, RoomId, TrackId};
use crate::isolation::{PeerRtc, Poisoned, RtcCall};
use crate::pace::PacerModel;
use crate::signal::{LeaveReason, ParticipantInfo, PeerKind, Permissions};
use crate::stats::SfuStats;
use crate::track::{KeyframeThrottle, Publication, Subscription, SubscriptionState};

/// A participant and its connection.
pub(crate) struct Peer {
    /// This connection's key; signals for it go to its own client.
    id: ConnectionId,
    /// The participant others see: `id`, or after a handover the predecessor's.
    public_id: ParticipantId,
    /// The connection this one is taking over (a handover in progress).
    takes_over: Option<ConnectionId>,
    /// Tracks this connection publishes that will replace the predecessor's
    /// tracks of the same kind at their first decodable frame.
    pending_takeover: Vec<(Mid, MediaKind)>,
    /// Throttles keyframe requests for tracks waiting to take over.
    handover_keyframes: KeyframeThrottle,
    /// When ICE and DTLS completed.
    connected_at: Option<Instant>,
    /// When a datagram from the client last arrived; a client silent for
    /// longer than the reconnect timeout is gone.
    last_received: Instant,
    /// When a datagram other than STUN (RTP, RTCP, DTLS) last arrived: the
    /// client sends those on its selected path only, so their silence is an
    /// outage of the path its media takes, even while its connectivity
    /// checks get through on another one (ICE over TCP during a UDP outage).
    last_media: Instant,
    room: RoomId,
    identity: String,
    name: String,
    kind: PeerKind,
    permissions: Permissions,
    /// Its str0m `Rtc`, behind the wall that keeps a panic in it to this peer.
    pub rtc: PeerRtc,
    /// The server's ICE ufrags on this connection (one more per ICE restart);
    /// the router's keys.
    ufrags: Vec<String>,
    /// Source addresses seen from this peer; the router's keys.
    addrs: Vec<(Protocol, SocketAddr)>,
    pub published: Vec<Publication>,
    pub subscriptions: Vec<Subscription>,
    /// The server's offer waiting for an answer.
    pending: Option<SdpPendingOffer>,
    /// The client's first offer was answered: the server may now offer.
    ready: bool,
    connected: bool,
    joined_at: Instant,
    /// When the `Rtc` next wants a timeout.
    rtc_timeout: Instant,
    /// Set when the peer is to be removed on its next drive.
    closing: Option<LeaveReason>,
    /// The latest send bandwidth estimate towards this peer (bits/s).
    bwe_estimate: Option<u64>,
    /// Its `Rtc`'s pacer debt, as modelled from what is written to it.
    pub pace: PacerModel,
    /// When the desired send rate next dips for one allocation round, so
    /// that the round after raises it again: str0m probes on increases only.
    probe_dip_due: Option<Instant>,
    /// Subscriptions changed since the last server offer.
    needs_negotiation: bool,
    /// Queued to be driven (in one of the SFU's queues of peers to drive).
    dirty: bool,
    /// The deadline last put in the SFU's timer heap.
    deadline: Option<Instant>,
    /// Cumulative NACK counts last reported per m-line: (mid, received, sent).
    nack_totals: Vec<(Mid, u64, u64)>,
    /// Its connection quality samples since the SFU last looked (crate::quality).
    pub quality: crate::quality::QualityMeter,
    /// The participants' levels this connection was last told (`connection_quality`).
    pub quality_told: Vec<(ParticipantId, crate::quality::ConnectionQuality)>,
    /// The account and device behind the participant (see `JoinRequest::with_account`).
    account: Option<(String, String)>,
    /// What the client said its m-lines carry (`offer`'s `sources`), by mid:
    /// read when they are published. At most one entry per m-line.
    sources: Vec<(Mid, crate::signal::TrackSource)>,
    /// Incoming m-lines not published for lack of the publish permission;
    /// published if the permission is granted later.
    withheld: Vec<(Mid, MediaKind, Vec<str0m::media::Rid>)>,
    /// Audio packets written to its `Rtc` and not yet seen going out (see
    /// `Peer::set_rtc_timeout`: the pacer's look after a packet waits only
    /// when zero).
    audio_unsent: u32,
    /// Media was written to its `Rtc` since its last timeout.
    written: bool,
    /// The m-line and layer of each incoming stream seen, by SSRC.
    rx_streams: Vec<(Ssrc, Mid, Option<Rid>)>,
    /// A second, receive-only connection of another participant (see
    /// `JoinRequest::receiving_for`): hidden from others, server offers first.
    receiver: bool,
    /// How the msid of its offered m-lines names publisher and track
    /// (`JoinRequest::with_stream_ids`); vela's ids when `None`.
    stream_ids: Option<StreamIds>,
    /// Data channels the server opens in its next offer.
    open_channels: Vec<ChannelConfig>,
    /// Its open data channels, by label.
    channels: Vec<(ChannelId, Arc<str>)>,
}

/// How many open data channels a peer keeps track of (LiveKit's clients
/// open two per connection).
const MAX_CHANNELS: usize = 8;

/// Names an offered m-line's msid: (stream id, track id) for a track of a
/// publisher. A client library that maps received media by its own
/// spelling of the ids (LiveKit's `PA_<n>|TR_<n>`) gets it without the core
/// knowing that library.
pub type StreamIds = fn(ParticipantId, TrackId) -> (String, String);

/// How long str0m's pacer's look at the queues after an audio packet may
/// wait for the next write to an audio-only peer (see
/// `Peer::set_rtc_timeout`): a bit over one 20 ms audio frame, so that even
/// a single source's next packet comes first. The deadlines it may hide for
/// that long are audio's RTCP reports and TWCC feedback, stats and
/// keep-alives: none is that tight.
const PACER_LOOK_DEFER: Duration = Duration::from_millis(25);

/// How soon after releasing a packet str0m's pacer looks at its queues again.
const PACER_NEXT_LOOK: Duration = Duration::from_micros(1);

/// How many m-lines' sources a peer remembers (the oldest go first).
const MAX_SOURCES: usize = 64;

/// How often a subscriber whose estimate is below its demand is probed again.
const PROBE_REPEAT: Duration = Duration::from_secs(1);

/// How many sent packets each video send stream keeps to answer NACKs
/// (str0m's default 1000, kept up to 3 s). A subscriber's NACK comes about a
/// round trip after the loss, and libwebrtc asks again each round trip: 256
/// packets are ~1.3 s of a 1.7 Mbit/s layer in 1.2 kB packets, ~0.6 s of
/// 4 Mbit/s. With 1000 the history alone was ~350 KiB per video subscriber,
/// and growing it left as much again of freed buffers in the heap
/// (BENCHMARKS.md, "Memory per video subscriber").
const VIDEO_RESEND_HISTORY: usize = 256;

/// The `Rtc` settings every peer shares, built once per SFU and cloned per
/// peer.
///
/// One DTLS certificate serves all peers (its fingerprint goes in each SDP
/// answer, which is all DTLS-SRTP needs): generating a key pair and a
/// certificate per join cost CPU at every join and memory for every peer.
/// The crypto provider is resolved once instead of per `Rtc`, and its DTLS
/// configuration is validated once instead of per peer (see `dtls`).
pub(crate) fn rtc_config(bandwidth_estimation: bool) -> RtcConfig {
    let mut provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(str0m::crypto::from_feature_flags);
    provider.dtls_provider = crate::dtls::shared(provider.dtls_provider);
    let cert = provider.dtls_provider.generate_certificate();
    let mut builder = Rtc::builder()
        .set_crypto_provider(Arc::new(provider))
        // The server has public addresses: ICE-lite answers checks and never sends them.
        .set_ice_lite(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .enable_h264(true)
        // Stats feed the NACK counters.
        .set_stats_interval(Some(Duration::from_secs(1)))
        // Media is forwarded per RTP packet, as it arrives: no depacketizing
        // and packetizing again, no reordering wait (the subscriber's
        // jitter buffer orders packets, as it must anyway).
        .set_rtp_mode(true)
        .set_send_buffer_video(VIDEO_RESEND_HISTORY);
    if let Some(cert) = cert {
        builder = builder.set_dtls_cert(cert);
    }
    if bandwidth_estimation {
        // The send estimate (TWCC) picks simulcast layers for this peer.
        builder = builder.enable_bwe(Some(Bitrate::kbps(1_000)));
    }
    builder
}

impl Peer {
    /// Whether it sends or receives any video (video is paced, padded and
    /// NACKed; audio is none of these).
    pub fn has_video(&self) -> bool {
        self.subscriptions
            .iter()
            .any(|s| s.kind == MediaKind::Video)
            || self.published.iter().any(|p| p.kind == MediaKind::Video)
            || self
                .withheld
                .iter()
                .any(|(_, kind, _)| *kind == MediaKind::Video)
    }

    /// A new peer with a fresh `Rtc` from the shared `config`, advertising
    /// `candidates` (UDP) and `tcp_candidates` (passive TCP, RFC 6544).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        now: Instant,
        id: ConnectionId,
        room: RoomId,
        identity: String,
        name: String,
        kind: PeerKind,
        permissions: Permissions,
        candidates: &[SocketAddr],
        tcp_candidates: &[SocketAddr],
        config: &RtcConfig,
    ) -> Self {
        let creds = IceCreds::new();
        let ufrag = creds.ufrag.clone();
        let builder = config.clone().set_local_ice_credentials(creds);
        let mut rtc = PeerRtc::build(|| builder.build(now));
        // A panic here leaves it poisoned: the join is refused (see `Sfu::admit`).
        let _ = rtc.call(RtcCall::Build, |rtc| {
            for addr in candidates {
                match Candidate::host(*addr, "udp") {
                    Ok(c) => {
                        rtc.add_local_candidate(c);
                    }
                    Err(e) => tracing::warn!(%addr, error = %e, "unusable host candidate"),
                }
            }
            // The server only accepts TCP connections (passive); their
            // priority (type preference 90 against UDP's 126, as libwebrtc
            // has it) makes a client keep UDP where both work.
            for addr in tcp_candidates {
                let c = Candidate::builder()
                    .tcp()
                    .host(*addr)
                    .tcptype(TcpType::Passive)
                    .build();
                match c {
                    Ok(c) => {
                        rtc.add_local_candidate(c);
                    }
                    Err(e) => tracing::warn!(%addr, error = %e, "unusable TCP host candidate"),
                }
            }
        });
        Peer {
            id,
            // A new participant takes its first connection's number (a
            // handover's connection is given its predecessor's participant).
            public_id: ParticipantId(id.0),
            takes_over: None,
            pending_takeover: Vec::new(),
            handover_keyframes: KeyframeThrottle::default(),
            connected_at: None,
            last_received: now,
            last_media: now,
            room,
            identity,
            name,
            kind,
            permissions,
            rtc,
            ufrags: vec![ufrag],
            addrs: Vec::new(),
            published: Vec::new(),
            subscriptions: Vec::new(),
            pending: None,
            ready: false,
            connected: false,
            joined_at: now,
            rtc_timeout: now,
            closing: None,
            nack_totals: Vec::new(),
            quality: crate::quality::QualityMeter::default(),
            quality_told: Vec::new(),
            account: None,
            sources: Vec::new(),
            withheld: Vec::new(),
            audio_unsent: 0,
            written: false,
            rx_streams: Vec::new(),
            needs_negotiation: false,
            bwe_estimate: None,
            pace: PacerModel::default(),
            probe_dip_due: None,
            dirty: false,
            deadline: None,
            receiver: false,
            stream_ids: None,
            open_channels: Vec::new(),
            channels: Vec::new(),
        }
    }

    /// Makes this a second, receive-only connection of `of`'s participant:
    /// it is that participant to the room (so never receives its own
    /// tracks), is not listed, and the server offers first (with
    /// `channels`, so there is an offer to make even in an empty room).
    pub fn receive_for(&mut self, of: &Peer, channels: Vec<ChannelConfig>) {
        self.public_id = of.public_id;
        self.identity = of.identity.clone();
        self.name = of.name.clone();
        self.receiver = true;
        self.ready = true;
        self.needs_negotiation |= !channels.is_empty();
        self.open_channels = channels;
    }

    /// Whether it is a second, receive-only connection (see [`Peer::receive_for`]).
    pub fn is_receiver(&self) -> bool {
        self.receiver
    }

    /// A data channel opened (by either side); a channel over the bound
    /// is not tracked (its messages are dropped).
    pub fn channel_opened(&mut self, id: ChannelId, label: String) {
        self.channels.retain(|(c, _)| *c != id);
        if self.channels.len() < MAX_CHANNELS {
            self.channels.push((id, label.into()));
        }
    }

    /// A data channel closed.
    pub fn channel_closed(&mut self, id: ChannelId) {
        self.channels.retain(|(c, _)| *c != id);
    }

    /// The label of open channel `id`.
    pub fn channel_label(&self, id: ChannelId) -> Option<Arc<str>> {
        self.channels
            .iter()
            .find(|(c, _)| *c == id)
            .map(|(_, l)| l.clone())
    }

    /// The open channel labelled `label`.
    pub fn channel_by_label(&self, label: &str) -> Option<ChannelId> {
        self.channels
            .iter()
            .find(|(_, l)| &**l == label)
            .map(|(c, _)| *c)
    }

    /// How its offers' msids name publisher and track.
    pub fn set_stream_ids(&mut self, f: Option<StreamIds>) {
        self.stream_ids = f;
    }

    /// This connection's key; signals for it go to its own client.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The participant others see: its own, or after a handover the
    /// predecessor's.
    pub fn public_id(&self) -> ParticipantId {
        self.public_id
    }

    /// The room it is in.
    pub fn room(&self) -> &RoomId {
        &self.room
    }

    /// Its identity (from its token).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// What kind of client it is (a session, WHIP, WHEP).
    pub fn kind(&self) -> PeerKind {
        self.kind
    }

    /// What it may do.
    pub fn permissions(&self) -> Permissions {
        self.permissions
    }

    /// It may now do `new`; returns what it could do before.
    pub fn set_permissions(&mut self, new: Permissions) -> Permissions {
        std::mem::replace(&mut self.permissions, new)
    }

    /// The account and device behind it, if it joined as one.
    pub fn account(&self) -> Option<&(String, String)> {
        self.account.as_ref()
    }

    /// It joined as this account and device.
    pub fn sign_in(&mut self, account: Option<(String, String)>) {
        self.account = account;
    }

    /// The connection this one is taking over (a handover in progress).
    pub fn takes_over(&self) -> Option<ConnectionId> {
        self.takes_over
    }

    /// Starts taking over `old`'s call: others keep seeing the same
    /// participant (id, identity, name).
    pub fn take_over(&mut self, old: &Peer) {
        self.public_id = old.public_id;
        self.identity = old.identity.clone();
        self.name = old.name.clone();
        self.takes_over = Some(old.id);
    }

    /// Its track on `mid` is to replace the predecessor's track of `kind`
    /// at its first decodable frame.
    pub fn defer_track(&mut self, mid: Mid, kind: MediaKind) {
        self.pending_takeover.push((mid, kind));
    }

    /// Whether frames on `mid` wait to take over a predecessor's track.
    pub fn is_deferred(&self, mid: Mid) -> bool {
        self.pending_takeover.iter().any(|(m, _)| *m == mid)
    }

    /// A frame arrived on a deferred m-line `mid`: the kind of track it
    /// takes over, and `mid` stops waiting, when it can start a picture
    /// (audio always, video at a keyframe); `None` until then.
    pub fn ready_to_take_over(&mut self, mid: Mid, keyframe: bool) -> Option<MediaKind> {
        let pos = self.pending_takeover.iter().position(|(m, _)| *m == mid)?;
        let kind = self.pending_takeover[pos].1;
        if kind == MediaKind::Video && !keyframe {
            return None;
        }
        self.pending_takeover.swap_remove(pos);
        Some(kind)
    }

    /// Whether the new device may be asked for a keyframe now (throttled
    /// to one per `interval`) while its video waits to take over.
    pub fn handover_keyframe_due(&mut self, now: Instant, interval: Duration) -> bool {
        self.handover_keyframes.request(now, interval)
    }

    /// The handover is over (done, or its old connection gone): the tracks
    /// still waiting, to become tracks of their own.
    pub fn end_handover(&mut self) -> Vec<(Mid, MediaKind)> {
        self.takes_over = None;
        std::mem::take(&mut self.pending_takeover)
    }

    /// The server's ICE ufrags on this connection (the router's keys).
    pub fn ufrags(&self) -> &[String] {
        &self.ufrags
    }

    /// The source addresses its client was seen at (the router's keys).
    pub fn addrs(&self) -> &[(Protocol, SocketAddr)] {
        &self.addrs
    }

    /// Its client was proven at `addr` (a STUN check); true if that address
    /// is new, to be routed to it.
    pub fn learn_addr(&mut self, addr: (Protocol, SocketAddr)) -> bool {
        let new = !self.addrs.contains(&addr);
        if new {
            self.addrs.push(addr);
        }
        new
    }

    /// Its subscriptions changed: the server offers again at its next drive.
    pub fn renegotiate(&mut self) {
        self.needs_negotiation = true;
    }

    /// Its timer heap entry is now `d`; true if that changed (a new entry
    /// goes in the heap, older ones are stale).
    pub fn reschedule(&mut self, d: Instant) -> bool {
        let changed = self.deadline != Some(d);
        self.deadline = Some(d);
        changed
    }

    /// Whether a timer heap entry at `t` is its current one.
    pub fn is_deadline(&self, t: Instant) -> bool {
        self.deadline == Some(t)
    }

    /// Its timer heap entry at `t` fired: true if it was the current one
    /// (it then has none until rescheduled).
    pub fn fire_deadline(&mut self, t: Instant) -> bool {
        let current = self.deadline == Some(t);
        if current {
            self.deadline = None;
        }
        current
    }

    /// Its m-line `mid` is not published for lack of the publish permission;
    /// published if it is granted later.
    pub fn withhold(&mut self, mid: Mid, kind: MediaKind, rids: Vec<str0m::media::Rid>) {
        self.withheld.push((mid, kind, rids));
    }

    /// Notes what the client says its m-lines carry; a later word on the
    /// same m-line replaces the earlier one (a transceiver reused for
    /// another source).
    pub fn set_sources(&mut self, sources: &[(Mid, crate::signal::TrackSource)]) {
        for (mid, source) in sources {
            self.sources.retain(|(m, _)| m != mid);
            self.sources.push((*mid, *source));
        }
        // Bounded whatever the client sends: more than a peer can publish.
        let excess = self.sources.len().saturating_sub(MAX_SOURCES);
        self.sources.drain(..excess);
    }

    /// What the client said m-line `mid` carries, if it fits `kind`.
    pub fn declared_source(&self, mid: Mid, kind: MediaKind) -> Option<crate::signal::TrackSource> {
        self.sources
            .iter()
            .find(|(m, _)| *m == mid)
            .map(|(_, s)| *s)
            .filter(|s| s.fits(kind.into()))
    }

    /// Forgets withheld m-lines the client stopped.
    pub fn forget_withheld(&mut self, mids: &[Mid]) {
        self.withheld.retain(|(m, _, _)| !mids.contains(m));
    }

    /// The m-lines withheld, to publish now that it may.
    pub fn take_withheld(&mut self) -> Vec<(Mid, MediaKind, Vec<str0m::media::Rid>)> {
        std::mem::take(&mut self.withheld)
    }

    /// Runs its `Rtc`'s timeout at `now` (which also sends what was written
    /// to it); a failure (or a panic) closes it and returns false.
    pub fn run_timeout(&mut self, now: Instant, stats: &mut SfuStats) -> bool {
        stats.rtc_timeouts += 1;
        self.written = false;
        match self.rtc.call(RtcCall::Timeout, |rtc| {
            rtc.handle_input(Input::Timeout(now))
        }) {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(participant = %self.id, error = %e, "timeout input failed");
                self.close(LeaveReason::ConnectionLost);
                false
            }
            // Removed at its next drive (queued by every caller).
            Err(Poisoned) => false,
        }
    }

    /// Media was written to it (an audio frame when `audio`): true for the
    /// first write since its last timeout (the timeout that sends it is to
    /// run right after the fan-out).
    pub fn on_written(&mut self, audio: bool) -> bool {
        if audio {
            self.audio_unsent += 1;
        }
        !std::mem::replace(&mut self.written, true)
    }

    /// Whether media was written to it since its last timeout.
    pub fn has_written(&self) -> bool {
        self.written
    }

    /// Media was written to it, and nothing else of it is due before its
    /// pacer's next look.
    pub fn only_writes_due(&self, now: Instant) -> bool {
        self.written && self.rtc_timeout > now + PACER_NEXT_LOOK
    }

    /// Whether its `Rtc`'s deadline has come at `now`.
    pub fn rtc_due(&self, now: Instant) -> bool {
        now >= self.rtc_timeout
    }

    /// Whether its `Rtc`'s deadline `t` is to run at once, within the drive:
    /// it is due, or it is the pacer's wake-up right after a packet while
    /// audio written to it still waits (str0m releases one packet per
    /// timeout, and the rest of a burst should not wait for the timer heap).
    pub fn runs_inline(&self, t: Instant, now: Instant) -> bool {
        t <= now || (self.audio_unsent > 0 && t <= now + PACER_NEXT_LOOK)
    }

    /// Its `Rtc`'s next deadline is `t`; `pacer_look` when that is only its
    /// pacer's look at the queues right after a packet it released. With no
    /// video either way nothing is paced or padded, so when no other packet
    /// waits, that look can wait for the next write (which needs a timeout
    /// anyway): half the timeouts per audio packet.
    pub fn set_rtc_timeout(&mut self, t: Instant, now: Instant, pacer_look: bool) {
        self.rtc_timeout = t;
        if pacer_look {
            if self.audio_unsent == 0 && !self.has_video() {
                self.rtc_timeout = t + PACER_LOOK_DEFER;
            }
        } else if t > now {
            // The pacer's last look released nothing: all went out.
            self.audio_unsent = 0;
        }
    }

    /// A datagram left it (`rtp`: a media packet), in a drive for
    /// `write_only` (see [`Peer::only_writes_due`]): true when that was the
    /// last audio packet written to it and the poll may stop. str0m hands
    /// out its feedback before paced media, so nothing else waits, and its
    /// next deadline is its pacer's look right after this packet, deferred
    /// as in [`Peer::set_rtc_timeout`]: the poll that would only say so, a
    /// walk of the whole `Rtc` per packet, is skipped.
    pub fn on_sent(&mut self, rtp: bool, write_only: bool, now: Instant) -> bool {
        if rtp {
            self.audio_unsent = self.audio_unsent.saturating_sub(1);
        }
        if rtp && write_only && self.audio_unsent == 0 && !self.has_video() {
            self.rtc_timeout = now + PACER_NEXT_LOOK + PACER_LOOK_DEFER;
            return true;
        }
        false
    }

    /// ICE and DTLS completed at `now`.
    pub fn on_connected(&mut self, now: Instant) {
        self.connected = true;
        self.connected_at = Some(now);
    }

    /// Whether ICE and DTLS completed (once; an outage does not undo it).
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// When ICE and DTLS completed.
    pub fn connected_at(&self) -> Option<Instant> {
        self.connected_at
    }

    /// When it joined.
    pub fn joined_at(&self) -> Instant {
        self.joined_at
    }

    /// How long its client has sent nothing (accepted) at `now`.
    pub fn silence(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_received)
    }

    /// How long its client has sent nothing but STUN (accepted) at `now`.
    pub fn media_silence(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_media)
    }

    /// A datagram from its client was accepted at `now` (`stun`: a STUN
    /// message, which keeps it present but does not say its media path works).
    pub fn heard_from(&mut self, now: Instant, stun: bool) {
        self.last_received = now;
        if !stun {
            self.last_media = now;
        }
    }

    /// Connected once and silent for longer than `timeout` at `now`: gone.
    pub fn silent_past(&self, now: Instant, timeout: Duration) -> bool {
        self.connected && self.silence(now) > timeout
    }

    /// Never connected within `timeout` of joining.
    pub fn connect_overdue(&self, now: Instant, timeout: Duration) -> bool {
        !self.connected && now >= self.joined_at + timeout
    }

    /// To be removed at its next drive, for `reason` unless it has one already.
    pub fn close(&mut self, reason: LeaveReason) {
        self.closing.get_or_insert(reason);
    }

    /// Why it is to be removed at its next drive, if it is.
    pub fn closing(&self) -> Option<LeaveReason> {
        self.closing
    }

    /// Marks it queued to be driven; false if it was already (it must not
    /// be queued twice).
    pub fn enqueue(&mut self) -> bool {
        !std::mem::replace(&mut self.dirty, true)
    }

    /// Takes it off the queue as it is driven; false if it was not queued
    /// (driven already from the other queue).
    pub fn dequeue(&mut self) -> bool {
        std::mem::replace(&mut self.dirty, false)
    }

    /// The latest send bandwidth estimate towards it arrived (bits/s).
    pub fn on_estimate(&mut self, bps: u64) {
        self.bwe_estimate = Some(bps);
    }

    /// The latest send bandwidth estimate towards it (bits/s).
    pub fn estimate(&self) -> Option<u64> {
        self.bwe_estimate
    }

    /// The desired send rate to give its estimator: `desired`, except that
    /// while the estimate stays below it (a cap that may have been lifted),
    /// one round every [`PROBE_REPEAT`] dips to `min`, so that the round
    /// after raises it again: str0m probes when the desired rate rises.
    pub fn probe_rate(&mut self, now: Instant, min: u64, desired: u64) -> u64 {
        if self.bwe_estimate.is_some_and(|e| e < desired) {
            if self.probe_dip_due.is_none_or(|t| now >= t) {
                self.probe_dip_due = Some(now + PROBE_REPEAT);
                return min.min(desired);
            }
        } else {
            self.probe_dip_due = None;
        }
        desired
    }

    /// Updates the NACK totals of `mid`; returns the increase (received, sent).
    pub fn nack_delta(&mut self, mid: Mid, received: Option<u64>, sent: Option<u64>) -> (u64, u64) {
        let i = match self.nack_totals.iter().position(|(m, _, _)| *m == mid) {
            Some(i) => i,
            None => {
                self.nack_totals.push((mid, 0, 0));
                self.nack_totals.len() - 1
            }
        };
        let e = &mut self.nack_totals[i];
        let mut d = (0, 0);
        if let Some(r) = received {
            d.0 = r.saturating_sub(e.1);
            e.1 = e.1.max(r);
        }
        if let Some(s) = sent {
            d.1 = s.saturating_sub(e.2);
            e.2 = e.2.max(s);
        }
        d
    }

    /// The next instant this peer needs a timeout: its `Rtc`'s, the connect
    /// deadline, or a held-back keyframe request.
    pub fn next_deadline(&self, connect_timeout: Duration, keyframe_interval: Duration) -> Instant {
        let mut t = self.rtc_timeout;
        if !self.connected {
            t = t.min(self.joined_at + connect_timeout);
        }
        for p in &self.published {
            if let Some(d) = p.keyframes.due(keyframe_interval) {
                t = t.min(d);
            }
        }
        t
    }

    /// How others see this participant.
    pub fn info(&self) -> ParticipantInfo {
        ParticipantInfo {
            id: self.public_id,
            identity: self.identity.clone(),
            name: self.name.clone(),
            account: self.account.as_ref().map(|(a, _)| a.clone()),
            device: self.account.as_ref().map(|(_, d)| d.clone()),
            tracks: self.published.iter().map(Publication::info).collect(),
            permissions: self.permissions,
        }
    }

    /// Whether others are told about this participant (WHEP viewers and
    /// second, receive-only connections are not).
    pub fn is_visible(&self) -> bool {
        self.kind != PeerKind::Whep && !self.receiver
    }

    pub fn publication_by_mid(&mut self, mid: Mid) -> Option<&mut Publication> {
        self.published.iter_mut().find(|p| p.mid == mid)
    }

    pub fn publication(&mut self, id: TrackId) -> Option<&mut Publication> {
        self.published.iter_mut().find(|p| p.id == id)
    }

    /// The m-line and simulcast layer of the incoming stream `ssrc` (str0m
    /// knows it from the SDP or the first packets' mid and rid extensions).
    pub fn rx_stream(&mut self, ssrc: Ssrc) -> Option<(Mid, Option<Rid>)> {
        if let Some((_, mid, rid)) = self.rx_streams.iter().find(|(s, _, _)| *s == ssrc) {
            return Some((*mid, *rid));
        }
        let found = self
            .rtc
            .call(RtcCall::Poll, |rtc| {
                rtc.direct_api()
                    .stream_rx(&ssrc)
                    .map(|rx| (rx.mid(), rx.rid()))
            })
            .ok()
            .flatten()?;
        // Bounded: a publisher has a few streams; a flood of SSRCs keeps
        // only the latest.
        if self.rx_streams.len() >= 16 {
            self.rx_streams.remove(0);
        }
        self.rx_streams.push((ssrc, found.0, found.1));
        Some(found)
    }

    /// The source of the subscription on `mid`, if it is open.
    pub fn source_of(&self, mid: Mid) -> Option<TrackId> {
        self.subscriptions
            .iter()
            .find(|s| s.mid() == Some(mid))
            .and_then(|s| s.source)
    }

    /// Accepts a client offer. Any server offer in flight is void: its changes
    /// go back to be offered again.
    pub fn accept_offer(&mut self, offer: SdpOffer) -> Result<SdpAnswer, SignalError> {
        crate::offer_check::check(&offer.to_sdp_string()).map_err(SignalError::Sdp)?;
        let (answer, ufrag) = self
            .rtc
            .call(RtcCall::Sdp, |rtc| {
                let answer = rtc.sdp_api().accept_offer(offer)?;
                Ok((answer, rtc.direct_api().local_ice_credentials().ufrag))
            })?
            .map_err(|e: str0m::RtcError| SignalError::Sdp(e.to_string()))?;
        if self.pending.take().is_some() {
            self.needs_negotiation = true;
            for s in &mut self.subscriptions {
                s.state = match s.state {
                    SubscriptionState::Negotiating(_) => SubscriptionState::ToOpen,
                    SubscriptionState::NegotiatingStop(m) => SubscriptionState::ToStop(m),
                    other => other,
                };
            }
        }
        self.ready = true;
        // An ICE restart by the client gives this side new credentials too.
        if !self.ufrags.contains(&ufrag) {
            tracing::info!(participant = %self.id, "ice restart");
            self.ufrags.push(ufrag);
        }
        // Tracks queued before the first offer can now be offered.
        self.needs_negotiation |= !self.subscriptions.is_empty();
        Ok(answer)
    }

    /// Accepts the client's answer to the server's offer; returns the
    /// subscriptions that opened, as (source, mid).
    pub fn accept_answer(&mut self, answer: SdpAnswer) -> Result<Vec<(TrackId, Mid)>, SignalError> {
        let pending = self.pending.take().ok_or(SignalError::NoPendingOffer)?;
        self.rtc
            .call(RtcCall::Sdp, |rtc| {
                rtc.sdp_api().accept_answer(pending, answer)
            })?
            .map_err(|e| SignalError::Sdp(e.to_string()))?;
        let mut opened = Vec::new();
        for s in &mut self.subscriptions {
            match (s.state, s.source) {
                (SubscriptionState::Negotiating(m), Some(src)) => {
                    s.state = SubscriptionState::Open(m);
                    opened.push((src, m));
                }
                // The source went away while the offer was in flight.
                (SubscriptionState::Negotiating(m), None) => {
                    s.state = SubscriptionState::ToStop(m);
                    self.needs_negotiation = true;
                }
                _ => {}
            }
        }
        self.subscriptions
            .retain(|s| !matches!(s.state, SubscriptionState::NegotiatingStop(_)));
        Ok(opened)
    }

    /// Builds the next server offer if subscriptions changed and no offer is in flight.
    pub fn negotiate(&mut self) -> Option<SdpOffer> {
        // Checked on every drive, so on the per-packet path: keep it a flag test.
        if !self.needs_negotiation
            || self.kind != PeerKind::Session
            || !self.ready
            || self.pending.is_some()
        {
            return None;
        }
        self.needs_negotiation = false;
        // Subscriptions whose source is gone: never offered ones are dropped,
        // open ones are stopped.
        self.subscriptions
            .retain(|s| !(s.source.is_none() && s.state == SubscriptionState::ToOpen));
        for s in &mut self.subscriptions {
            if let (SubscriptionState::Open(m), None) = (s.state, s.source) {
                s.state = SubscriptionState::ToStop(m);
            }
        }
        let subscriptions = &mut self.subscriptions;
        let stream_ids = self.stream_ids;
        let channels = std::mem::take(&mut self.open_channels);
        // A poisoned `Rtc` offers nothing; the peer is on its way out.
        let (offer, pending) = self
            .rtc
            .call(RtcCall::Sdp, |rtc| {
                let mut change = rtc.sdp_api();
                let mut touched = !channels.is_empty();
                for c in channels {
                    change.add_channel_with_config(c);
                }
                for s in subscriptions.iter_mut() {
                    match s.state {
                        SubscriptionState::ToOpen => {
                            // msid carries the publisher's participant id as stream id
                            // and the track id, so clients map media to people.
                            let Some(src) = s.source else { continue };
                            let (stream_id, track_id) = match (stream_ids, s.publisher) {
                                (Some(f), Some(p)) => {
                                    let (stream, track) = f(p, src);
                                    (Some(stream), track)
                                }
                                _ => (s.publisher.map(|p| p.to_string()), src.to_string()),
                            };
                            let mid = change.add_media(
                                s.kind,
                                Direction::SendOnly,
                                stream_id,
                                Some(track_id),
                                None,
                            );
                            s.state = SubscriptionState::Negotiating(mid);
                            touched = true;
                        }
                        SubscriptionState::ToStop(mid) => {
                            change.stop_media(mid);
                            s.state = SubscriptionState::NegotiatingStop(mid);
                            touched = true;
                        }
                        _ => {}
                    }
                }
                if !touched || !change.has_changes() {
                    return None;
                }
                change.apply()
            })
            .ok()
            .flatten()?;
        self.pending = Some(pending);
        Some(offer)
    }

    /// A free outgoing m-line of `kind` (WHEP viewers), if any.
    pub fn free_slot(&mut self, kind: MediaKind) -> Option<&mut Subscription> {
        self.subscriptions.iter_mut().find(|s| {
            s.kind == kind && s.source.is_none() && matches!(s.state, SubscriptionState::Open(_))
        })
    }
}
