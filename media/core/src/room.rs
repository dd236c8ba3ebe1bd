//! A room: who is in it, and how long it stays open.

use std::time::{Duration, Instant};

use crate::id::ConnectionId;
use crate::speaker::SpeakerDetector;

/// How a room created through the server API behaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomOptions {
    /// The participant limit; 0 means the server's default.
    pub max_participants: u32,
    /// How long the room stays open with nobody in it (before the first join
    /// and after the last leave); `None` closes it as the last one leaves.
    pub empty_timeout: Option<Duration>,
    /// Free text for the integration, shown by the API.
    pub metadata: String,
}

/// The connections in one room, in joining order, and who speaks.
#[derive(Debug)]
pub(crate) struct Room {
    pub connections: Vec<ConnectionId>,
    pub speakers: SpeakerDetector,
    pub options: RoomOptions,
    pub created: Instant,
    /// Since when nobody is in the room (only rooms with an empty timeout
    /// stay open empty).
    pub empty_since: Option<Instant>,
}

impl Room {
    pub fn new(speaker_interval: Duration, now: Instant, options: RoomOptions) -> Self {
        Room {
            connections: Vec::new(),
            speakers: SpeakerDetector::new(speaker_interval),
            empty_since: options.empty_timeout.map(|_| now),
            options,
            created: now,
        }
    }

    pub fn remove(&mut self, participant: ConnectionId) {
        self.connections.retain(|p| *p != participant);
    }

    /// When an empty room is to close, if it is empty and has a timeout.
    pub fn closes_at(&self) -> Option<Instant> {
        Some(self.empty_since? + self.options.empty_timeout?)
    }
}
