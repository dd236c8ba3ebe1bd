//! Errors of the signaling operations on the core.

/// Why a join was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The SDP offer could not be accepted.
    #[error("offer refused: {0}")]
    Offer(String),
    /// The room has reached its participant limit.
    #[error("room {0} is full")]
    RoomFull(String),
    /// The request is not allowed by the participant's permissions.
    #[error("not permitted: {0}")]
    NotPermitted(&'static str),
    /// A WHIP or WHEP join must carry an offer.
    #[error("an SDP offer is required")]
    OfferRequired,
    /// The new connection's WebRTC stack failed (panicked: a bug) while
    /// taking the offer; nothing of the join remains.
    #[error("the connection failed")]
    ConnectionFailed,
}

/// Why an offer, answer, candidate or other signal was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// No such participant (it left, or never existed).
    #[error("unknown participant")]
    UnknownParticipant,
    /// An answer arrived while no offer from the server was outstanding.
    #[error("no offer is pending")]
    NoPendingOffer,
    /// The SDP could not be accepted.
    #[error("sdp refused: {0}")]
    Sdp(String),
    /// The ICE candidate could not be parsed.
    #[error("bad candidate: {0}")]
    Candidate(String),
    /// No published track of this participant matches.
    #[error("unknown track")]
    UnknownTrack,
    /// No such room.
    #[error("unknown room")]
    UnknownRoom,
    /// The participant's permissions do not allow it.
    #[error("not permitted: {0}")]
    NotPermitted(&'static str),
    /// The offer sends more tracks than a participant may publish.
    #[error("too many tracks: the offer sends {offered}, at most {limit} allowed")]
    TooManyTracks {
        /// Audio and video m-lines the offer sends on.
        offered: usize,
        /// `limits.max_tracks_per_participant`.
        limit: u32,
    },
    /// The participant's WebRTC stack failed (panicked: a bug); the
    /// participant is being removed as one whose connection was lost.
    #[error("the connection failed")]
    ConnectionFailed,
}

impl From<crate::isolation::Poisoned> for SignalError {
    fn from(_: crate::isolation::Poisoned) -> Self {
        SignalError::ConnectionFailed
    }
}
