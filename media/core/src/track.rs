//! Published tracks, subscriptions to them, and the keyframe-request throttle.

use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use str0m::format::PayloadParams;
use str0m::media::{MediaKind, MediaTime, Mid, Pt, Rid};
use str0m::rtp::Ssrc;

use crate::packet::{GapWatch, Packet};

use crate::id::{ConnectionId, ParticipantId, TrackId};
use crate::signal::{TrackInfo, TrackSource};

/// A track a participant publishes, with everyone who receives it.
#[derive(Debug)]
pub(crate) struct Publication {
    pub id: TrackId,
    /// The m-line on the publisher's connection.
    pub mid: Mid,
    pub kind: MediaKind,
    pub muted: bool,
    /// What it carries, as its publisher said (a camera by default).
    pub source: TrackSource,
    /// Open subscriptions: who receives it, on which of their m-lines.
    pub subscribers: Vec<Subscriber>,
    pub keyframes: KeyframeThrottle,
    /// Simulcast layers, lowest first; empty for a single-layer track.
    pub layers: Vec<Layer>,
    /// Bumped when the media source changes (a handover), so subscribers
    /// re-base their timestamps.
    pub epoch: u32,
    /// Width of the top layer, for mapping rendered sizes to layers.
    pub full_width: u32,
    /// The layers last announced to the publisher as needed (bit per layer).
    pub layers_signalled: Option<u32>,
    /// Holes in the incoming stream of a single-layer track.
    pub gaps: GapWatch,
    /// The codec of the payload type last received, looked up once per
    /// change of payload type, not per packet.
    pub params: Option<PayloadParams>,
}

/// One simulcast layer of a publication.
#[derive(Debug)]
pub(crate) struct Layer {
    pub rid: Rid,
    /// Bits/s over the last measuring window.
    pub bitrate: u64,
    window_start: Option<Instant>,
    window_bytes: u64,
    pub keyframes: KeyframeThrottle,
    /// When the publisher was last asked to resume (or start) this layer.
    pub asked_at: Option<Instant>,
    /// Holes in the layer's incoming stream.
    pub gaps: GapWatch,
}

/// How long a bitrate measuring window is.
const RATE_WINDOW: Duration = Duration::from_millis(500);

impl Layer {
    pub fn new(rid: Rid) -> Self {
        Layer {
            rid,
            bitrate: 0,
            window_start: None,
            window_bytes: 0,
            keyframes: KeyframeThrottle::default(),
            asked_at: None,
            gaps: GapWatch::default(),
        }
    }

    /// Counts a frame's bytes toward the layer's bitrate.
    pub fn measure(&mut self, now: Instant, bytes: usize) {
        let start = *self.window_start.get_or_insert(now);
        self.window_bytes += bytes as u64;
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= RATE_WINDOW {
            let bps = (self.window_bytes * 8) as f64 / elapsed.as_secs_f64();
            // Smooth across windows: keyframes make single windows spiky.
            self.bitrate = if self.bitrate == 0 {
                bps as u64
            } else {
                (self.bitrate as f64 * 0.5 + bps * 0.5) as u64
            };
            self.window_start = Some(now);
            self.window_bytes = 0;
        }
    }
}

/// Rank of a simulcast rid by its conventional name (q/l lowest, f/h highest);
/// unknown names keep their SDP order.
pub(crate) fn rid_rank(rid: &str) -> u8 {
    match rid {
        "q" | "l" | "low" | "0" => 0,
        "h" | "m" | "mid" | "1" => 1,
        "f" | "hi" | "high" | "2" => 2,
        _ => 1,
    }
}

impl Publication {
    pub fn new(id: TrackId, mid: Mid, kind: MediaKind) -> Self {
        Publication {
            id,
            mid,
            kind,
            muted: false,
            source: TrackSource::default_for(kind.into()),
            subscribers: Vec::new(),
            keyframes: KeyframeThrottle::default(),
            layers: Vec::new(),
            epoch: 0,
            full_width: 1280,
            layers_signalled: None,
            gaps: GapWatch::default(),
            params: None,
        }
    }

    /// The layer index of a frame's rid, adding layers not announced in SDP.
    pub fn layer_of(&mut self, rid: Option<Rid>) -> Option<usize> {
        let rid = rid?;
        if let Some(i) = self.layers.iter().position(|l| l.rid == rid) {
            return Some(i);
        }
        let rank = rid_rank(&rid);
        let at = self
            .layers
            .iter()
            .position(|l| rid_rank(&l.rid) > rank)
            .unwrap_or(self.layers.len());
        self.layers.insert(at, Layer::new(rid));
        // Indices shifted: subscribers' choices refer to the old order.
        for s in &mut self.subscribers {
            let shift = |x: Option<u8>| x.map(|v| if usize::from(v) >= at { v + 1 } else { v });
            s.current = shift(s.current);
            s.target = shift(s.target);
        }
        Some(at)
    }

    /// Mutes or unmutes it; true if that changed. Unmuted, its subscribers'
    /// numbering goes on where it stopped: the packets dropped while muted
    /// are no hole for them to NACK.
    pub fn set_muted(&mut self, muted: bool) -> bool {
        let changed = self.muted != muted;
        self.muted = muted;
        if changed && !muted {
            for s in &mut self.subscribers {
                s.rebase();
            }
        }
        changed
    }

    pub fn info(&self) -> TrackInfo {
        TrackInfo {
            id: self.id,
            kind: self.kind.into(),
            muted: self.muted,
            source: self.source,
        }
    }
}

/// One receiver of a publication, with its layer choice and its mapping of
/// the source's numbering (sequence, timestamp, VP8 picture ids) to its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Subscriber {
    /// The subscriber's connection.
    pub connection: ConnectionId,
    /// The m-line on the subscriber's connection.
    pub mid: Mid,
    /// The simulcast layer forwarded now (`None`: waiting for a keyframe).
    pub current: Option<u8>,
    /// The layer to switch to at its next keyframe.
    pub target: Option<u8>,
    /// The subscriber does not want this track now (hidden tile, unsubscribed).
    pub paused: bool,
    /// The mapping of the source's numbering to the subscriber's, fixed at
    /// the first packet after a switch (`None`: set it at the next packet).
    map: Option<Mapping>,
    /// The last timestamp sent, and when.
    last_out: Option<(u64, Instant)>,
    /// The last VP8 picture id and TL0PICIDX sent.
    last_picture: Option<(u16, u8)>,
    /// The publication epoch the mapping was made for.
    epoch: u32,
    /// The publication epoch and payload type last forwarded, and the
    /// subscriber's payload type that matched it: matching codec parameters
    /// per packet cost nearly as much as the audio write itself. The epoch
    /// keys it too, since a handover's new device may number codecs its own way.
    pub pt_map: Option<(u32, Pt, Pt)>,
    /// The SSRC of `mid`'s send stream, cached.
    pub tx_ssrc: Option<Ssrc>,
    /// A keyframe is being written (from its first packet to its marker):
    /// its packets skip the pacer.
    pub in_keyframe: bool,
}

/// How a source's numbering maps to one subscriber's since the last switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mapping {
    /// The first source sequence number of this mapping: anything earlier
    /// (a late or repaired packet from before the switch) is not sent.
    first_seq: u64,
    /// Added (mod 2^64) to the source's sequence numbers.
    seq: u64,
    /// Added (mod 2^64) to the source's timestamps.
    time: u64,
    /// Added (mod 2^15) to the source's VP8 picture ids.
    picture: u16,
    /// Added (mod 2^8) to the source's VP8 TL0PICIDX.
    tl0: u8,
}

/// A source packet as one subscriber receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mapped {
    /// The subscriber's extended sequence number.
    pub seq: u64,
    /// The subscriber's timestamp.
    pub time: MediaTime,
    /// The subscriber's VP8 picture id and TL0PICIDX, when the packet has them.
    pub picture_id: Option<u16>,
    pub tl0_pic_idx: Option<u8>,
}

/// A forward jump in a source's sequence numbers beyond this is not a gap
/// to leave for the subscriber to NACK (a publisher restarted its stream,
/// say): the mapping starts over, continuous.
const MAX_SEQ_JUMP: u64 = 1_000;

impl Subscriber {
    pub fn new(connection: ConnectionId, mid: Mid, epoch: u32, target: Option<u8>) -> Self {
        Subscriber {
            connection,
            mid,
            current: None,
            target,
            paused: false,
            map: None,
            last_out: None,
            last_picture: None,
            epoch,
            pt_map: None,
            tx_ssrc: None,
            in_keyframe: false,
        }
    }

    /// The next packet starts a new mapping (a new layer or source), so the
    /// subscriber's numbering stays continuous across the change.
    pub fn rebase(&mut self) {
        self.map = None;
    }

    /// The subscriber's numbering of source packet `p` (publication epoch
    /// `epoch`), where `next_seq` is the m-line's next free sequence number
    /// (kept per m-line, so a change of source continues it). `None`: the
    /// packet belongs before the current mapping and is not sent.
    ///
    /// Gaps inside one mapping stay gaps, so the subscriber NACKs them and a
    /// repair that arrives later lands on the number it was missing under.
    pub fn map(&mut self, epoch: u32, p: &Packet, next_seq: &mut u64) -> Option<Mapped> {
        let seq_in = *p.seq;
        let freq = p.time.frequency();
        let mut map = match self.map {
            Some(m) if self.epoch == epoch => m,
            _ => self.start_mapping(epoch, p, *next_seq),
        };
        if seq_in < map.first_seq {
            return None;
        }
        // Offsets are differences mod 2^64: nothing a packet carries can
        // overflow them.
        let out = seq_in.wrapping_add(map.seq);
        if out.wrapping_sub(*next_seq) as i64 > MAX_SEQ_JUMP as i64 {
            // Not a loss the subscriber could repair: continue the numbering.
            map.seq = next_seq.wrapping_sub(seq_in);
            map.first_seq = seq_in;
        }
        self.map = Some(map);
        let seq = seq_in.wrapping_add(map.seq);
        if seq.wrapping_sub(*next_seq) as i64 >= 0 {
            *next_seq = seq.wrapping_add(1);
        }
        let time = p.time.numer().wrapping_add(map.time);
        let newer = self
            .last_out
            .is_none_or(|(t, _)| time.wrapping_sub(t) as i64 >= 0);
        if newer {
            self.last_out = Some((time, p.arrival));
        }
        // Mod 2^15; a 7-bit field keeps the low bits, which stay continuous too.
        let picture_id = p
            .picture_id()
            .map(|id| id.wrapping_add(map.picture) & 0x7fff);
        let tl0_pic_idx = p.tl0_pic_idx().map(|t| t.wrapping_add(map.tl0));
        if let Some(pid) = picture_id {
            let tl0 = tl0_pic_idx.unwrap_or(0);
            let newer = self
                .last_picture
                .is_none_or(|(last, _)| pid.wrapping_sub(last) & 0x7fff < 0x4000);
            if newer {
                self.last_picture = Some((pid, tl0));
            }
        }
        Some(Mapped {
            seq,
            time: MediaTime::new(time, freq),
            picture_id,
            tl0_pic_idx,
        })
    }

    /// A mapping that continues the subscriber's numbering at packet `p`.
    fn start_mapping(&mut self, epoch: u32, p: &Packet, next_seq: u64) -> Mapping {
        self.epoch = epoch;
        let freq = f64::from(p.time.frequency().get());
        // The timestamp continues from the last one sent by the time that
        // passed since (at least one tick, so it never repeats).
        let time = match self.last_out {
            Some((last, at)) => {
                let elapsed = p.arrival.saturating_duration_since(at).as_secs_f64();
                let step = ((elapsed * freq) as u64).max(1);
                last.wrapping_add(step).wrapping_sub(p.time.numer())
            }
            None => 0,
        };
        // Picture ids continue from the last one sent (RFC 7741 4.2: a
        // receiver takes a jump for lost pictures).
        let (picture, tl0) = match (self.last_picture, p.picture_id()) {
            (Some((last_id, last_tl0)), Some(id)) => (
                last_id.wrapping_add(1).wrapping_sub(id) & 0x7fff,
                last_tl0
                    .wrapping_add(1)
                    .wrapping_sub(p.tl0_pic_idx().unwrap_or(0)),
            ),
            _ => (0, 0),
        };
        Mapping {
            first_seq: *p.seq,
            seq: next_seq.wrapping_sub(*p.seq),
            time,
            picture,
            tl0,
        }
    }
}

/// A subscriber's outgoing m-line and the negotiation state it is in.
#[derive(Debug)]
pub(crate) struct Subscription {
    /// The publication feeding it; `None` once that is gone (or, for WHEP, not yet bound).
    pub source: Option<TrackId>,
    /// The participant publishing the source.
    pub publisher: Option<ParticipantId>,
    pub kind: MediaKind,
    pub state: SubscriptionState,
    /// What the subscriber asked for this track.
    pub settings: TrackSettings,
    /// The next free RTP sequence number on this m-line's stream; kept
    /// here, not per source, so the sequence stays continuous when the
    /// source changes.
    pub next_seq: u64,
}

/// A subscriber's wishes for one remote track (adaptive stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackSettings {
    /// Receive it at all (a hidden tile or an unsubscribed track says no).
    pub enabled: bool,
    /// The size it is rendered at, if known; picks the simulcast layer.
    pub width: Option<u32>,
    /// See `width`.
    pub height: Option<u32>,
}

impl Default for TrackSettings {
    fn default() -> Self {
        TrackSettings {
            enabled: true,
            width: None,
            height: None,
        }
    }
}

/// Where an outgoing m-line is in its offer/answer life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubscriptionState {
    /// To be added in the next server offer.
    ToOpen,
    /// Offered, waiting for the answer.
    Negotiating(Mid),
    /// Negotiated; media flows.
    Open(Mid),
    /// To be stopped in the next server offer.
    ToStop(Mid),
    /// Stop offered, waiting for the answer.
    NegotiatingStop(Mid),
}

impl Subscription {
    /// A subscription in `state`, fed by `source` once there is one.
    pub fn new(
        source: Option<TrackId>,
        publisher: Option<ParticipantId>,
        kind: MediaKind,
        state: SubscriptionState,
    ) -> Self {
        // A random start (RFC 3550 5.1), low enough that the SRTP rollover
        // counter starts at 0 as the receiver assumes.
        let next_seq = RandomState::new().hash_one(source) & 0x7fff;
        Subscription {
            source,
            publisher,
            kind,
            state,
            settings: TrackSettings::default(),
            next_seq,
        }
    }

    /// The m-line, once there is one.
    pub fn mid(&self) -> Option<Mid> {
        match self.state {
            SubscriptionState::ToOpen => None,
            SubscriptionState::Negotiating(m)
            | SubscriptionState::Open(m)
            | SubscriptionState::ToStop(m)
            | SubscriptionState::NegotiatingStop(m) => Some(m),
        }
    }
}

/// Limits keyframe requests to one publisher track to one per interval.
///
/// A request inside the interval is not lost: it is sent when the interval
/// ends, so a storm of new subscribers costs the publisher one keyframe.
#[derive(Debug, Default)]
pub(crate) struct KeyframeThrottle {
    last_sent: Option<Instant>,
    wanted: bool,
}

impl KeyframeThrottle {
    /// Notes a request; true when it should be sent now.
    pub fn request(&mut self, now: Instant, interval: Duration) -> bool {
        self.wanted = true;
        self.poll(now, interval)
    }

    /// True when a held-back request is due now (and marks it sent).
    pub fn poll(&mut self, now: Instant, interval: Duration) -> bool {
        if !self.wanted {
            return false;
        }
        let open = self.last_sent.is_none_or(|t| now >= t + interval);
        if open {
            self.wanted = false;
            self.last_sent = Some(now);
        }
        open
    }

    /// Forgets the last request sent: the next is sent at once (the
    /// publisher was away, so the last one was lost).
    pub fn forget(&mut self) {
        self.last_sent = None;
    }

    /// When a held-back request becomes due, if one is waiting.
    pub fn due(&self, interval: Duration) -> Option<Instant> {
        if self.wanted {
            self.last_sent.map(|t| t + interval)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use str0m::format::{Codec, CodecSpec, FormatParams, PayloadParams};
    use str0m::media::Frequency;

    fn vp8() -> PayloadParams {
        let spec = CodecSpec {
            codec: Codec::Vp8,
            clock_rate: Frequency::NINETY_KHZ,
            channels: None,
            format: FormatParams::default(),
        };
        PayloadParams::new(96.into(), Some(97.into()), spec)
    }

    /// A VP8 packet with a 15-bit picture id and a TL0PICIDX; a keyframe
    /// start if `key`.
    fn packet(seq: u64, time: u64, pic: u16, tl0: u8, key: bool, at: Instant) -> Packet {
        let payload: Arc<[u8]> = Arc::from(vec![
            0x90,
            0xe0,
            0x80 | (pic >> 8) as u8,
            pic as u8,
            tl0,
            0x20,
            if key { 0x10 } else { 0x11 },
            0,
            0,
        ]);
        let t = MediaTime::new(time, Frequency::NINETY_KHZ);
        Packet::new(seq.into(), t, false, 96.into(), vp8(), payload, at).expect("valid VP8")
    }

    #[test]
    fn numbering_is_continuous_across_switches_and_gaps_stay_gaps() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut s = Subscriber::new(ConnectionId(1), Mid::from("1"), 0, Some(0));
        let mut next = 500u64;
        // Layer A: source seqs 1000.., picture ids 7000.., tl0 10.
        let a = |seq, pic, at| packet(seq, 90_000 + (seq - 1000) * 3000, pic, 10, false, at);
        let m = s.map(0, &packet(1000, 90_000, 7000, 10, true, ms(0)), &mut next);
        let m = m.expect("mapped");
        assert_eq!(
            (m.seq, m.time.numer(), m.picture_id, m.tl0_pic_idx),
            (500, 90_000, Some(7000), Some(10))
        );
        assert_eq!(
            s.map(0, &a(1001, 7001, ms(33)), &mut next)
                .expect("mapped")
                .seq,
            501
        );
        // 1002 lost: the gap is left for the subscriber to NACK ...
        let m = s
            .map(0, &a(1003, 7003, ms(100)), &mut next)
            .expect("mapped");
        assert_eq!((m.seq, m.time.numer()), (503, 99_000));
        // ... and the repair lands where it was missing.
        let m = s
            .map(0, &a(1002, 7002, ms(120)), &mut next)
            .expect("mapped");
        assert_eq!(
            (m.seq, m.time.numer(), m.picture_id),
            (502, 96_000, Some(7002))
        );
        assert_eq!(next, 504);

        // Switch to layer B at its keyframe: its own seqs, times and picture ids.
        s.rebase();
        let b = packet(40_000, 5_000_000, 300, 200, true, ms(133));
        let m = s.map(0, &b, &mut next).expect("mapped");
        assert_eq!(m.seq, 504, "continues the m-line's sequence");
        // 33 ms after the last packet sent, at 90 kHz.
        assert_eq!(m.time.numer(), 99_000 + 2970);
        assert_eq!(m.picture_id, Some(7004), "one after the last picture sent");
        assert_eq!(m.tl0_pic_idx, Some(11));
        // A late packet of B from before the switch is not sent.
        assert!(
            s.map(
                0,
                &packet(39_999, 4_997_000, 299, 200, false, ms(134)),
                &mut next
            )
            .is_none()
        );
        let m = s.map(
            0,
            &packet(40_001, 5_003_000, 301, 200, false, ms(166)),
            &mut next,
        );
        let m = m.expect("mapped");
        assert_eq!(
            (m.seq, m.time.numer(), m.picture_id),
            (505, 101_970 + 3000, Some(7005))
        );

        // A handover (new epoch): the new source's numbering is re-based too.
        let c = packet(7, 123, 0x7ffe, 0, true, ms(200));
        let m = s.map(1, &c, &mut next).expect("mapped");
        assert_eq!(m.seq, 506);
        assert_eq!(m.picture_id, Some(7006));
        // Picture ids wrap at 2^15 on the subscriber's side as on the source's.
        let m = s.map(1, &packet(8, 3123, 0x7fff, 0, false, ms(233)), &mut next);
        assert_eq!(m.expect("mapped").picture_id, Some(7007));
        let m = s.map(1, &packet(9, 6123, 0, 1, false, ms(266)), &mut next);
        assert_eq!(m.expect("mapped").picture_id, Some(7008));

        // A jump far ahead (a restarted stream) continues the numbering.
        let m = s.map(1, &packet(50_000, 9123, 1, 1, false, ms(300)), &mut next);
        assert_eq!(m.expect("mapped").seq, 509);

        // Extended numbers near the top of the range map without overflow.
        s.rebase();
        let far = packet(u64::MAX - 1, u64::MAX - 5, 9, 2, true, ms(330));
        assert_eq!(s.map(1, &far, &mut next).expect("mapped").seq, 510);
        let m = s.map(1, &packet(u64::MAX, 2, 10, 2, false, ms(360)), &mut next);
        assert_eq!(m.expect("mapped").seq, 511);
    }

    #[test]
    fn throttle_sends_first_and_coalesces_the_rest() {
        let t0 = Instant::now();
        let iv = Duration::from_millis(500);
        let mut k = KeyframeThrottle::default();
        assert!(k.request(t0, iv));
        assert_eq!(k.due(iv), None);
        // A storm inside the interval: nothing is sent, one request waits.
        for i in 1..10 {
            assert!(!k.request(t0 + Duration::from_millis(i * 10), iv));
        }
        assert_eq!(k.due(iv), Some(t0 + iv));
        assert!(!k.poll(t0 + Duration::from_millis(499), iv));
        assert!(k.poll(t0 + iv, iv));
        // Sent once; nothing more waits.
        assert!(!k.poll(t0 + iv * 3, iv));
        assert_eq!(k.due(iv), None);
    }
}
