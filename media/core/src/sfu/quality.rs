//! Connection quality told to rooms: every [`QUALITY_INTERVAL`] each
//! participant's samples become a level (crate::quality), and each session
//! in the room is sent the levels that changed since it was last told.

use super::Sfu;
use crate::quality::{ParticipantQuality, changes};
use crate::signal::{PeerKind, Signal};

impl Sfu {
    /// One look at every participant's samples; `connection_quality` where
    /// something changed.
    pub(super) fn tell_quality(&mut self) {
        let mut levels: Vec<ParticipantQuality> = Vec::new();
        for room in self.rooms.values() {
            levels.clear();
            for c in &room.connections {
                let Some(p) = self.peers.get_mut(c) else {
                    continue;
                };
                // Taken from every peer, so a window's samples never spill
                // into the next.
                let level = p.quality.take();
                let id = p.public_id();
                // Hidden viewers are nobody's business; during a handover
                // both connections carry one participant: the first counts.
                if !p.is_visible() || levels.iter().any(|q| q.participant == id) {
                    continue;
                }
                if let Some((quality, score)) = level {
                    levels.push(ParticipantQuality {
                        participant: id,
                        quality,
                        score,
                    });
                }
            }
            if levels.is_empty() {
                continue;
            }
            for c in &room.connections {
                let Some(p) = self.peers.get_mut(c) else {
                    continue;
                };
                if p.kind() != PeerKind::Session {
                    continue; // WHIP and WHEP have no signaling to tell
                }
                let told = changes(&mut p.quality_told, &levels);
                if !told.is_empty() {
                    self.signals
                        .push_back((*c, Signal::ConnectionQuality(told)));
                }
            }
        }
    }
}
