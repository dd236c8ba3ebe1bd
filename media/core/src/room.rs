//! A room: who is in it.

use std::time::Duration;

use crate::id::ParticipantId;
use crate::speaker::SpeakerDetector;

/// The participants of one room, in joining order, and who speaks.
#[derive(Debug)]
pub(crate) struct Room {
    pub participants: Vec<ParticipantId>,
    pub speakers: SpeakerDetector,
}

impl Room {
    pub fn new(speaker_interval: Duration) -> Self {
        Room {
            participants: Vec::new(),
            speakers: SpeakerDetector::new(speaker_interval),
        }
    }

    pub fn remove(&mut self, participant: ParticipantId) {
        self.participants.retain(|p| *p != participant);
    }
}
