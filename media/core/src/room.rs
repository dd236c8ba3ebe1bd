//! A room: who is in it.

use crate::id::ParticipantId;

/// The participants of one room, in joining order.
#[derive(Debug, Default)]
pub(crate) struct Room {
    pub participants: Vec<ParticipantId>,
}

impl Room {
    pub fn remove(&mut self, participant: ParticipantId) {
        self.participants.retain(|p| *p != participant);
    }
}
