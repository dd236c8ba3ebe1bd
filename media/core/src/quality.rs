//! Connection quality per participant, as the server measures it: loss of
//! what the participant publishes (its ingress) and of what it receives
//! (its egress, from transport-wide feedback), the round-trip time and the
//! jitter of its published audio (a video frame's packets share a
//! timestamp and leave paced, so video's jitter measures the sender's
//! pacing more than the network). Folded into a mean opinion score (a
//! simplified ITU-T G.107 E-model) and three levels, as meeting products
//! show them: good, fair, poor.
//!
//! Pure arithmetic on samples; the SFU feeds it str0m's stats events and
//! asks for a verdict every [`QUALITY_INTERVAL`].

use std::time::Duration;

use serde::Serialize;

use crate::id::ParticipantId;

/// How often the SFU looks at the samples and tells rooms of changes.
pub const QUALITY_INTERVAL: Duration = Duration::from_secs(2);

/// A participant's connection as the server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionQuality {
    /// Something is badly wrong: audio breaks up, video stalls.
    Poor,
    /// Noticeable: some loss or delay.
    Fair,
    /// Nothing to notice.
    Good,
}

impl ConnectionQuality {
    /// The level of a mean opinion score (1 to 4.5). The thresholds are
    /// LiveKit's for "excellent" and "good" (its three levels map to ours).
    pub fn from_score(mos: f32) -> Self {
        if mos > 4.1 {
            ConnectionQuality::Good
        } else if mos > 3.6 {
            ConnectionQuality::Fair
        } else {
            ConnectionQuality::Poor
        }
    }

    /// The protocol's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionQuality::Good => "good",
            ConnectionQuality::Fair => "fair",
            ConnectionQuality::Poor => "poor",
        }
    }
}

/// One participant's quality, as a room is told it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParticipantQuality {
    /// Who.
    pub participant: ParticipantId,
    /// Its level.
    pub quality: ConnectionQuality,
    /// The mean opinion score it came from (1 to 4.5), rounded to 0.1.
    pub score: f32,
}

/// What one look at a connection measured; `None`: not measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QualitySample {
    /// Fraction of packets lost (0 to 1), the worse direction.
    pub loss: Option<f32>,
    /// Round-trip time.
    pub rtt: Option<Duration>,
    /// Interarrival jitter.
    pub jitter: Option<Duration>,
}

/// How much loss hurts: the E-model's packet-loss robustness `Bpl`, for a
/// codec with concealment (Opus; video is repaired by NACKs). At this
/// value, about 3 % loss still scores good and about 8 % is poor.
const LOSS_ROBUSTNESS: f32 = 25.0;

/// The mean opinion score (1 to 4.5) of a sample; a sample that measured
/// nothing scores as a perfect connection.
pub fn score(s: &QualitySample) -> f32 {
    let loss_pct = (s.loss.unwrap_or(0.0).clamp(0.0, 1.0)) * 100.0;
    let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f32() * 1000.0);
    // One-way delay: half the round trip, the jitter buffer (twice the
    // jitter) and a fixed allowance for packetization and decoding.
    let delay = ms(s.rtt) / 2.0 + 2.0 * ms(s.jitter) + 10.0;
    let delay_impairment = 0.024 * delay
        + if delay > 177.3 {
            0.11 * (delay - 177.3)
        } else {
            0.0
        };
    let loss_impairment = 95.0 * loss_pct / (loss_pct + LOSS_ROBUSTNESS);
    let r = (93.2 - delay_impairment - loss_impairment).clamp(0.0, 100.0);
    let mos = 1.0 + 0.035 * r + 7.0e-6 * r * (r - 60.0) * (100.0 - r);
    mos.clamp(1.0, 4.5)
}

/// How far above a level's threshold a score must be for the level to rise.
const RISE_MARGIN: f32 = 0.1;

/// Samples of one connection gathered between two looks.
#[derive(Debug, Default)]
pub(crate) struct QualityMeter {
    loss_sum: f32,
    loss_n: u32,
    rtt_sum: Duration,
    rtt_n: u32,
    /// The worst jitter of its published audio since the last look.
    jitter: Option<Duration>,
    /// The level last found, kept through a window without samples.
    last: Option<(ConnectionQuality, f32)>,
}

impl QualityMeter {
    /// A connection-wide sample (str0m's peer stats, once a second): loss
    /// of what it sends us and of what we send it, and the round trip.
    pub fn observe(
        &mut self,
        ingress_loss: Option<f32>,
        egress_loss: Option<f32>,
        rtt: Option<Duration>,
    ) {
        let loss = match (ingress_loss, egress_loss) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(l) = loss.filter(|l| l.is_finite()) {
            self.loss_sum += l.clamp(0.0, 1.0);
            self.loss_n += 1;
        }
        if let Some(r) = rtt {
            self.rtt_sum += r;
            self.rtt_n += 1;
        }
    }

    /// The jitter of one of its published streams, in RTP timestamp units
    /// of a clock of `clock_rate` Hz (as RTCP reports it).
    pub fn observe_jitter(&mut self, units: u32, clock_rate: u32) {
        if clock_rate == 0 {
            return;
        }
        let j = Duration::from_secs_f64(f64::from(units) / f64::from(clock_rate));
        self.jitter = Some(self.jitter.map_or(j, |old| old.max(j)));
    }

    /// The level of the samples since the last call (they are dropped), or
    /// the last level when none came; `None` before the first sample.
    pub fn take(&mut self) -> Option<(ConnectionQuality, f32)> {
        let sample = QualitySample {
            loss: (self.loss_n > 0).then(|| self.loss_sum / self.loss_n as f32),
            rtt: (self.rtt_n > 0).then(|| self.rtt_sum / self.rtt_n),
            jitter: self.jitter,
        };
        let measured = sample.loss.is_some() || sample.rtt.is_some() || sample.jitter.is_some();
        *self = QualityMeter {
            last: self.last,
            ..QualityMeter::default()
        };
        if measured {
            let mos = score(&sample);
            let rounded = (mos * 10.0).round() / 10.0;
            let mut level = ConnectionQuality::from_score(mos);
            // A level goes down at once but up only with a margin, so a
            // score on a line does not flip the level (and a message to the
            // whole room) every look.
            if let Some((last, _)) = self.last
                && level > last
                && ConnectionQuality::from_score(mos - RISE_MARGIN) <= last
            {
                level = last;
            }
            self.last = Some((level, rounded));
        }
        self.last
    }
}

/// The entries of `now` that differ from what a connection was told last
/// (`told`), which becomes `now`: a newcomer (told nothing) gets them all.
pub(crate) fn changes(
    told: &mut Vec<(ParticipantId, ConnectionQuality)>,
    now: &[ParticipantQuality],
) -> Vec<ParticipantQuality> {
    let out: Vec<ParticipantQuality> = now
        .iter()
        .filter(|q| {
            !told
                .iter()
                .any(|(p, l)| *p == q.participant && *l == q.quality)
        })
        .copied()
        .collect();
    told.clear();
    told.extend(now.iter().map(|q| (q.participant, q.quality)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(loss: f32, rtt_ms: u64, jitter_ms: u64) -> ConnectionQuality {
        ConnectionQuality::from_score(score(&QualitySample {
            loss: Some(loss),
            rtt: Some(Duration::from_millis(rtt_ms)),
            jitter: Some(Duration::from_millis(jitter_ms)),
        }))
    }

    #[test]
    fn a_clean_link_is_good_and_loss_makes_it_fair_then_poor() {
        assert_eq!(level(0.0, 20, 2), ConnectionQuality::Good);
        assert_eq!(level(0.01, 60, 5), ConnectionQuality::Good);
        assert_eq!(level(0.05, 20, 2), ConnectionQuality::Fair);
        assert_eq!(level(0.12, 20, 2), ConnectionQuality::Poor);
        assert_eq!(level(0.30, 20, 2), ConnectionQuality::Poor);
    }

    #[test]
    fn delay_and_jitter_count_too() {
        // A long round trip alone: fair, then poor.
        assert_eq!(level(0.0, 500, 5), ConnectionQuality::Fair);
        assert_eq!(level(0.0, 800, 5), ConnectionQuality::Poor);
        // Heavy jitter on a short path.
        assert_eq!(level(0.0, 20, 200), ConnectionQuality::Poor);
        // Nothing measured: nothing wrong.
        assert!(score(&QualitySample::default()) > 4.1);
    }

    #[test]
    fn the_meter_averages_a_window_and_keeps_its_level_through_a_silent_one() {
        let mut m = QualityMeter::default();
        assert_eq!(m.take(), None, "no sample, no level");
        // Ingress clean, egress lossy: the worse direction counts.
        m.observe(Some(0.0), Some(0.10), Some(Duration::from_millis(20)));
        m.observe(Some(0.0), Some(0.14), None);
        let (q, s) = m.take().unwrap();
        assert_eq!(q, ConnectionQuality::Poor, "score {s}");
        // A window without samples keeps the last level.
        assert_eq!(m.take().map(|x| x.0), Some(ConnectionQuality::Poor));
        // The next window is clean again.
        m.observe(Some(0.0), None, Some(Duration::from_millis(20)));
        m.observe_jitter(480, 48_000); // 10 ms
        assert_eq!(m.take().map(|x| x.0), Some(ConnectionQuality::Good));
        // Nonsense in a sample is ignored, not propagated.
        m.observe(Some(f32::NAN), None, None);
        m.observe_jitter(1, 0);
        assert_eq!(m.take().map(|x| x.0), Some(ConnectionQuality::Good));
    }

    #[test]
    fn a_level_rises_only_clear_of_the_line() {
        // Loss that scores just above the good line (about 4.17), then
        // well above it.
        let just_good = 0.025;
        let mut m = QualityMeter::default();
        m.observe(Some(0.06), None, None);
        assert_eq!(m.take().map(|x| x.0), Some(ConnectionQuality::Fair));
        m.observe(Some(just_good), None, None);
        let (q, s) = m.take().unwrap();
        assert!((4.1..=4.2).contains(&s), "score {s}");
        assert_eq!(q, ConnectionQuality::Fair, "stays fair on the line");
        m.observe(Some(0.0), None, None);
        assert_eq!(m.take().map(|x| x.0), Some(ConnectionQuality::Good));
        // Down at once.
        m.observe(Some(0.06), None, None);
        assert_eq!(m.take().map(|x| x.0), Some(ConnectionQuality::Fair));
        // A fresh meter takes the score as it is.
        let mut fresh = QualityMeter::default();
        fresh.observe(Some(just_good), None, None);
        assert_eq!(fresh.take().map(|x| x.0), Some(ConnectionQuality::Good));
    }

    #[test]
    fn only_changes_are_told_and_a_newcomer_hears_everything() {
        let a = ParticipantId(1);
        let b = ParticipantId(2);
        let q = |participant, quality| ParticipantQuality {
            participant,
            quality,
            score: 4.0,
        };
        let mut told = Vec::new();
        let first = [q(a, ConnectionQuality::Good), q(b, ConnectionQuality::Good)];
        assert_eq!(changes(&mut told, &first).len(), 2);
        assert!(
            changes(&mut told, &first).is_empty(),
            "no change, nothing told"
        );
        let later = [q(a, ConnectionQuality::Good), q(b, ConnectionQuality::Poor)];
        assert_eq!(
            changes(&mut told, &later),
            vec![q(b, ConnectionQuality::Poor)]
        );
        let mut newcomer = Vec::new();
        assert_eq!(changes(&mut newcomer, &later).len(), 2);
    }
}
