//! Active-speaker detection from RFC 6464 audio levels.
//!
//! Sans-IO: levels and time go in, a speaking list comes out at most once per
//! interval and only when it changed.

use std::time::{Duration, Instant};

use crate::id::ParticipantId;

/// Smoothed level above which a participant counts as speaking (dBov).
const SPEAKING_DB: f32 = -50.0;
/// A participant drops below by this much before it stops speaking (hysteresis).
const HYSTERESIS_DB: f32 = 6.0;
/// How fast the smoothed level follows the packets' levels (per packet).
const ALPHA: f32 = 0.25;
/// A participant whose audio stopped arriving is silent after this long.
const STALE: Duration = Duration::from_millis(600);

/// One participant's smoothed level.
#[derive(Debug, Clone, Copy)]
struct Level {
    participant: ParticipantId,
    db: f32,
    last_at: Instant,
    speaking: bool,
}

/// A speaker as reported: who, and how loud (0.0 silent to 1.0 full scale).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Speaker {
    /// The participant.
    pub participant: ParticipantId,
    /// Linear level, 0.0 to 1.0.
    pub level: f32,
}

/// The detector of one room.
#[derive(Debug)]
pub(crate) struct SpeakerDetector {
    levels: Vec<Level>,
    interval: Duration,
    last_check: Option<Instant>,
    last_list: Vec<ParticipantId>,
}

impl SpeakerDetector {
    pub fn new(interval: Duration) -> Self {
        SpeakerDetector {
            levels: Vec::new(),
            interval,
            last_check: None,
            last_list: Vec::new(),
        }
    }

    /// One audio packet's level in -dBov (0 loudest, -127 silence).
    pub fn observe(&mut self, participant: ParticipantId, dbov: i8, now: Instant) {
        let db = f32::from(dbov.clamp(-127, 0));
        match self
            .levels
            .iter_mut()
            .find(|l| l.participant == participant)
        {
            Some(l) => {
                // After a silence gap, start from the new level, not the stale one.
                if now.saturating_duration_since(l.last_at) > STALE {
                    l.db = db;
                } else {
                    l.db += ALPHA * (db - l.db);
                }
                l.last_at = now;
            }
            None => self.levels.push(Level {
                participant,
                db,
                last_at: now,
                speaking: false,
            }),
        }
    }

    /// A level smoothed elsewhere (another core's detector, relayed):
    /// taken as it is, not smoothed again.
    pub fn set_level(&mut self, participant: ParticipantId, dbov: i8, now: Instant) {
        let db = f32::from(dbov.clamp(-127, 0));
        match self
            .levels
            .iter_mut()
            .find(|l| l.participant == participant)
        {
            Some(l) => {
                l.db = db;
                l.last_at = now;
            }
            None => self.levels.push(Level {
                participant,
                db,
                last_at: now,
                speaking: false,
            }),
        }
    }

    /// The smoothed levels of participants heard within the last
    /// [`STALE`], in -dBov.
    pub fn fresh_levels(&self, now: Instant) -> impl Iterator<Item = (ParticipantId, i8)> + '_ {
        self.levels
            .iter()
            .filter(move |l| now.saturating_duration_since(l.last_at) <= STALE)
            .map(|l| (l.participant, l.db.round().clamp(-127.0, 0.0) as i8))
    }

    /// Forgets a participant that left.
    pub fn remove(&mut self, participant: ParticipantId) {
        self.levels.retain(|l| l.participant != participant);
    }

    /// When [`SpeakerDetector::poll`] wants to run next, if at all.
    pub fn next_poll(&self) -> Option<Instant> {
        if self.levels.is_empty() && self.last_list.is_empty() {
            return None;
        }
        match self.last_check {
            Some(t) => Some(t + self.interval),
            None => self.levels.iter().map(|l| l.last_at).min(),
        }
    }

    /// The speaking list, loudest first, when it changed and the interval has passed.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<Speaker>> {
        // Checked at most once per interval, so emitted at most once too.
        if let Some(t) = self.last_check
            && now < t + self.interval
        {
            return None;
        }
        self.last_check = Some(now);
        // Participants long silent no longer need checking.
        self.levels
            .retain(|l| now.saturating_duration_since(l.last_at) < STALE * 8);
        for l in &mut self.levels {
            let fresh = now.saturating_duration_since(l.last_at) <= STALE;
            l.speaking = fresh
                && if l.speaking {
                    l.db > SPEAKING_DB - HYSTERESIS_DB
                } else {
                    l.db > SPEAKING_DB
                };
        }
        let mut speaking: Vec<&Level> = self.levels.iter().filter(|l| l.speaking).collect();
        speaking.sort_by(|a, b| b.db.total_cmp(&a.db));
        let list: Vec<ParticipantId> = speaking.iter().map(|l| l.participant).collect();
        if list == self.last_list {
            return None;
        }
        self.last_list = list;
        Some(
            speaking
                .iter()
                .map(|l| Speaker {
                    participant: l.participant,
                    level: 10f32.powf(l.db / 20.0).clamp(0.0, 1.0),
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS20: Duration = Duration::from_millis(20);

    fn feed(
        d: &mut SpeakerDetector,
        t: &mut Instant,
        secs_x50: u32,
        levels: &[(u64, i8)],
    ) -> Vec<Vec<u64>> {
        let mut out = Vec::new();
        for _ in 0..secs_x50 {
            *t += MS20;
            for (p, db) in levels {
                d.observe(ParticipantId(*p), *db, *t);
            }
            if let Some(list) = d.poll(*t) {
                out.push(list.iter().map(|s| s.participant.0).collect());
            }
        }
        out
    }

    #[test]
    fn follows_who_speaks_loudest_first() {
        let mut d = SpeakerDetector::new(Duration::from_millis(200));
        let mut t = Instant::now();
        // 1 speaks, 2 is silent.
        let out = feed(&mut d, &mut t, 50, &[(1, -20), (2, -127)]);
        assert_eq!(out, vec![vec![1]]);
        // Both speak, 2 louder.
        let out = feed(&mut d, &mut t, 50, &[(1, -30), (2, -10)]);
        assert_eq!(out.last(), Some(&vec![2, 1]));
        // 1 goes quiet.
        let out = feed(&mut d, &mut t, 50, &[(1, -127), (2, -10)]);
        assert_eq!(out.last(), Some(&vec![2]));
    }

    #[test]
    fn emits_at_most_five_times_a_second_and_only_on_change() {
        let mut d = SpeakerDetector::new(Duration::from_millis(200));
        let mut t = Instant::now();
        let mut emits = 0;
        // Alternate speakers every packet: the list would flap without the limit.
        for i in 0..250u32 {
            t += MS20;
            let (a, b) = if i % 2 == 0 { (-10, -127) } else { (-127, -10) };
            d.observe(ParticipantId(1), a, t);
            d.observe(ParticipantId(2), b, t);
            if d.poll(t).is_some() {
                emits += 1;
            }
        }
        assert!(emits <= 26, "5 s at most 5/s: {emits}");
        // Steady state: no repeats.
        let out = feed(&mut d, &mut t, 100, &[(1, -10), (2, -127)]);
        assert!(out.len() <= 2, "{out:?}");
    }

    #[test]
    fn a_participant_whose_audio_stops_is_dropped() {
        let mut d = SpeakerDetector::new(Duration::from_millis(200));
        let mut t = Instant::now();
        feed(&mut d, &mut t, 20, &[(1, -10)]);
        let out = feed(&mut d, &mut t, 50, &[]);
        assert_eq!(out, vec![Vec::<u64>::new()]);
    }

    #[test]
    fn hysteresis_keeps_a_speaker_through_a_dip() {
        let mut d = SpeakerDetector::new(Duration::from_millis(200));
        let mut t = Instant::now();
        assert_eq!(feed(&mut d, &mut t, 25, &[(1, -40)]), vec![vec![1]]);
        // A dip just under the threshold does not end the turn.
        assert!(feed(&mut d, &mut t, 25, &[(1, -53)]).is_empty());
    }
}
