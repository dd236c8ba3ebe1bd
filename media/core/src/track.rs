//! Published tracks, subscriptions to them, and the keyframe-request throttle.

use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use str0m::media::{MediaKind, MediaTime, Mid, Pt, Rid};
use str0m::rtp::{SeqNo, Ssrc};

use crate::id::{ConnectionId, ParticipantId, TrackId};
use crate::signal::TrackInfo;

/// A track a participant publishes, with everyone who receives it.
#[derive(Debug)]
pub(crate) struct Publication {
    pub id: TrackId,
    /// The m-line on the publisher's connection.
    pub mid: Mid,
    pub kind: MediaKind,
    pub muted: bool,
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
            subscribers: Vec::new(),
            keyframes: KeyframeThrottle::default(),
            layers: Vec::new(),
            epoch: 0,
            full_width: 1280,
            layers_signalled: None,
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

    pub fn info(&self) -> TrackInfo {
        TrackInfo {
            id: self.id,
            kind: self.kind.into(),
            muted: self.muted,
        }
    }
}

/// One receiver of a publication, with its layer choice and timestamp mapping.
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
    /// Added to the source's timestamps, so they stay continuous across
    /// layer switches and handovers.
    offset: i64,
    /// The last timestamp sent, and when.
    last_out: Option<(u64, Instant)>,
    /// The publication epoch the offset was computed for.
    epoch: u32,
    /// The publication epoch and payload type last forwarded, and the
    /// subscriber's payload type that matched it: matching codec parameters
    /// per packet cost nearly as much as the audio write itself. The epoch
    /// keys it too, since a handover's new device may number codecs its own way.
    pub pt_map: Option<(u32, Pt, Pt)>,
    /// The SSRC of `mid`'s send stream (audio, written directly).
    pub tx_ssrc: Option<Ssrc>,
}

impl Subscriber {
    pub fn new(connection: ConnectionId, mid: Mid, epoch: u32, target: Option<u8>) -> Self {
        Subscriber {
            connection,
            mid,
            current: None,
            target,
            paused: false,
            offset: 0,
            last_out: None,
            epoch,
            pt_map: None,
            tx_ssrc: None,
        }
    }

    /// Forces the next frame to re-base its timestamp (a new layer or source).
    pub fn rebase(&mut self) {
        self.epoch = self.epoch.wrapping_add(0x8000_0000);
    }

    /// The subscriber-side timestamp of a frame; continuous across source changes.
    pub fn map_time(&mut self, epoch: u32, t: MediaTime, wallclock: Instant) -> MediaTime {
        let ticks = t.numer() as i64;
        let freq = t.frequency();
        if self.epoch != epoch {
            if let Some((last, at)) = self.last_out {
                let elapsed = wallclock.saturating_duration_since(at).as_secs_f64();
                let step = ((elapsed * f64::from(freq.get())) as i64).max(1);
                self.offset = last as i64 + step - ticks;
            }
            self.epoch = epoch;
        }
        let out = (ticks + self.offset).max(0) as u64;
        self.last_out = Some((out, wallclock));
        MediaTime::new(out, freq)
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
    /// The next RTP sequence number of audio written straight to this
    /// m-line's stream (see `Sfu::forward`); kept here, not per source, so
    /// the sequence stays continuous when the source changes.
    next_seq: u64,
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

    /// Takes the next sequence number for a packet written to this m-line.
    pub fn take_seq(&mut self) -> SeqNo {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq.into()
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
