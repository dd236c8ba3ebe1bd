//! Per-link state of the relay: remote participants and tracks, the demand
//! of each link, the origin's history of relayed packets and the receiving
//! side's gap tracking. Plain data; the `Sfu` (sfu/relay.rs) drives it.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::{LinkId, MAX_NACKS_PER_MESSAGE, RelayMessage, RelayPacket};
use crate::id::{ParticipantId, RoomId, TrackId};
use crate::signal::ParticipantInfo;
use crate::track::Publication;

/// Relayed packets the origin keeps per (track, layer) to answer NACKs:
/// about 2 s of a 500 kbit/s layer, or 20 s of audio.
pub(crate) const HISTORY: usize = 1024;

/// Missing packets a receiving core keeps asking for per (track, layer);
/// a larger gap at once (an outage) is not repaired.
const MAX_MISSING: usize = 128;

/// How long a NACKed packet is waited for before it is asked again.
const RENACK_AFTER: Duration = Duration::from_millis(40);

/// How often a missing packet is asked for.
const NACK_TRIES: u8 = 3;

/// Everything the core keeps about its links.
#[derive(Default)]
pub(crate) struct RelayState {
    /// The links of each room (the cores that also hold it).
    pub rooms: FxHashMap<RoomId, Vec<LinkId>>,
    /// Participants of other cores, in rooms linked here.
    pub participants: FxHashMap<ParticipantId, RemoteParticipant>,
    /// Tracks of other cores' participants.
    pub tracks: FxHashMap<TrackId, RemoteTrack>,
    /// Local tracks demanded over links: which layers each link wants.
    pub demand: FxHashMap<TrackId, Vec<(LinkId, u32)>>,
    /// Local tracks' relayed packets, per layer (index 0 for one layer).
    pub history: FxHashMap<TrackId, Vec<History>>,
    /// Messages for the shell to send.
    pub outputs: VecDeque<(LinkId, RelayMessage)>,
    /// Counters per link (its gauges are computed when asked).
    pub counters: FxHashMap<LinkId, super::RelayLinkStats>,
    /// When local speakers' levels are next sent to the links.
    pub speakers_due: Option<std::time::Instant>,
    /// Tracks relayed here though unknown, and when their origin was last
    /// told they are not wanted.
    pub unwanted: FxHashMap<(LinkId, TrackId), std::time::Instant>,
}

impl RelayState {
    /// The links of `room`.
    pub fn links(&self, room: &RoomId) -> &[LinkId] {
        self.rooms.get(room).map_or(&[], Vec::as_slice)
    }

    /// Queues `c` on every link of `room`.
    pub fn send_room(&mut self, room: &RoomId, c: &super::Control) {
        let Some(links) = self.rooms.get(room) else {
            return;
        };
        for l in links {
            self.outputs
                .push_back((*l, RelayMessage::Control(c.clone())));
        }
    }

    /// The counters of `link`.
    pub fn count(&mut self, link: LinkId) -> &mut super::RelayLinkStats {
        self.counters
            .entry(link)
            .or_insert_with(|| super::RelayLinkStats {
                link,
                ..Default::default()
            })
    }

    /// Participants from `link`.
    pub fn participants_of_link(&self, link: LinkId) -> usize {
        self.participants
            .values()
            .filter(|p| p.link == link)
            .count()
    }

    /// Tracks from `link`.
    pub fn tracks_of_link(&self, link: LinkId) -> usize {
        self.tracks.values().filter(|t| t.link == link).count()
    }
}

/// A participant of another core.
pub(crate) struct RemoteParticipant {
    pub link: LinkId,
    pub room: RoomId,
    pub info: ParticipantInfo,
}

/// A track of another core's participant, fed to local subscribers.
pub(crate) struct RemoteTrack {
    pub link: LinkId,
    pub room: RoomId,
    pub participant: ParticipantId,
    /// Its local subscribers, layers and keyframe throttles, as for a local
    /// track (its `mid` means nothing here).
    pub publication: Publication,
    /// The publisher's codecs, to map a packet's payload type.
    pub codecs: Vec<str0m::format::PayloadParams>,
    /// Received packets per layer (index 0 for one layer).
    pub incoming: Vec<Incoming>,
    /// The demand last sent to the origin.
    pub demand_sent: u32,
    /// The origin's publication epoch last seen (see `RelayPacket::epoch`).
    pub origin_epoch: Option<u16>,
    /// Layers a keyframe request held back by the throttle is for (sent
    /// when the throttle opens).
    pub keyframe_mask: u32,
}

/// The origin's relayed packets of one (track, layer), newest last.
#[derive(Default)]
pub(crate) struct History {
    ring: VecDeque<RelayPacket>,
}

impl History {
    /// Keeps `p` (dropping the oldest past [`HISTORY`]).
    pub fn push(&mut self, p: RelayPacket) {
        if self.ring.len() == HISTORY {
            self.ring.pop_front();
        }
        self.ring.push_back(p);
    }

    /// Packet `seq`, if still kept. Packets arrive nearly in order, so the
    /// search from the newest end is short for the NACKs that matter.
    pub fn get(&self, seq: u64) -> Option<&RelayPacket> {
        self.ring.iter().rev().find(|p| p.seq == seq)
    }
}

/// A receiving core's view of one relayed (track, layer): which packets
/// went missing on the link, to NACK. Packets themselves are forwarded as
/// they come (a repair arrives late and fills its subscribers' holes).
#[derive(Default)]
pub(crate) struct Incoming {
    /// The highest sequence number seen.
    highest: Option<u64>,
    /// Which of the 128 sequence numbers up to `highest` arrived (bit `i`:
    /// `highest - i`), to drop duplicates (a repair racing a late original).
    window: u128,
    /// Missing packets asked for: when last, how often.
    nacked: BTreeMap<u64, (Instant, u8)>,
}

impl Incoming {
    /// Notes packet `seq`; returns the sequence numbers newly missing, to
    /// NACK now (at most [`MAX_NACKS_PER_MESSAGE`]), or `None` for a
    /// duplicate, not to be forwarded again.
    pub fn receive(&mut self, now: Instant, seq: u64) -> Option<Vec<u64>> {
        let mut ask = Vec::new();
        match self.highest {
            None => {
                self.highest = Some(seq);
                self.window = 1;
            }
            Some(h) if seq > h => {
                let shift = seq - h;
                self.window = if shift >= 128 {
                    1
                } else {
                    (self.window << shift) | 1
                };
                let gap = seq - h - 1;
                if gap as usize <= MAX_MISSING {
                    let from = (h + 1).max(seq.saturating_sub(MAX_NACKS_PER_MESSAGE as u64));
                    for s in from..seq {
                        self.nacked.insert(s, (now, 1));
                        ask.push(s);
                    }
                }
                self.highest = Some(seq);
            }
            Some(h) => {
                let back = h - seq;
                if back < 128 {
                    if self.window & (1 << back) != 0 {
                        return None;
                    }
                    self.window |= 1 << back;
                }
                self.nacked.remove(&seq);
            }
        }
        while self.nacked.len() > MAX_MISSING {
            self.nacked.pop_first();
        }
        Some(ask)
    }

    /// Missing packets to ask for again; those asked for too often are
    /// given up.
    pub fn renack(&mut self, now: Instant) -> Vec<u64> {
        let mut ask = Vec::new();
        self.nacked.retain(|_, (at, tries)| {
            *tries < NACK_TRIES || now.saturating_duration_since(*at) < RENACK_AFTER
        });
        for (seq, (at, tries)) in &mut self.nacked {
            if *tries < NACK_TRIES && now.saturating_duration_since(*at) >= RENACK_AFTER {
                *tries += 1;
                *at = now;
                ask.push(*seq);
                if ask.len() == MAX_NACKS_PER_MESSAGE {
                    break;
                }
            }
        }
        ask
    }

    /// Whether a missing packet is still asked for.
    pub fn waiting(&self) -> bool {
        !self.nacked.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn pkt(seq: u64) -> RelayPacket {
        RelayPacket {
            track: TrackId(1),
            layer: None,
            seq,
            time: seq * 10,
            pt: 96,
            marker: false,
            audio_level: None,
            voice_activity: None,
            epoch: 0,
            payload: Arc::from(&[seq as u8][..]),
        }
    }

    #[test]
    fn history_keeps_the_newest_and_finds_by_seq() {
        let mut h = History::default();
        for i in 0..(HISTORY as u64 + 10) {
            h.push(pkt(i));
        }
        assert!(h.get(9).is_none(), "pushed out");
        assert_eq!(h.get(10).map(|p| p.seq), Some(10));
        assert_eq!(
            h.get(HISTORY as u64 + 9).map(|p| p.seq),
            Some(HISTORY as u64 + 9)
        );
        assert!(h.get(HISTORY as u64 + 10).is_none(), "not yet sent");
    }

    #[test]
    fn a_gap_is_nacked_then_asked_again_then_given_up() {
        let t0 = Instant::now();
        let mut r = Incoming::default();
        assert_eq!(r.receive(t0, 10), Some(vec![]));
        assert_eq!(r.receive(t0, 11), Some(vec![]));
        // 12 and 13 lost; 14 arrives.
        assert_eq!(r.receive(t0, 14), Some(vec![12, 13]));
        assert!(r.renack(t0 + Duration::from_millis(10)).is_empty());
        // 13 is repaired; 12 is asked again. A second 13 is a duplicate.
        assert_eq!(r.receive(t0, 13), Some(vec![]));
        assert_eq!(r.receive(t0, 13), None);
        assert_eq!(r.receive(t0, 14), None);
        assert_eq!(r.renack(t0 + RENACK_AFTER), vec![12]);
        let mut t = t0 + RENACK_AFTER;
        let mut asked = 2;
        for _ in 0..10 {
            t += RENACK_AFTER;
            asked += r.renack(t).len();
        }
        assert_eq!(
            asked,
            usize::from(NACK_TRIES),
            "asked {NACK_TRIES} times in all"
        );
        assert!(!r.waiting(), "given up");
        // An outage's gap is not asked for.
        assert_eq!(r.receive(t, 14 + MAX_MISSING as u64 + 2), Some(vec![]));
    }
}
