//! Published tracks, subscriptions to them, and the keyframe-request throttle.

use std::time::{Duration, Instant};

use str0m::media::{MediaKind, Mid};

use crate::id::{ParticipantId, TrackId};
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
        }
    }

    pub fn info(&self) -> TrackInfo {
        TrackInfo {
            id: self.id,
            kind: self.kind.into(),
            muted: self.muted,
        }
    }
}

/// One receiver of a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Subscriber {
    pub participant: ParticipantId,
    /// The m-line on the subscriber's connection.
    pub mid: Mid,
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
