//! Sans-IO core of the vela SFU.
//!
//! The core owns rooms, participants (each wrapping one [`str0m::Rtc`]), the
//! routing of datagrams to peers and the forwarding of media between them. It
//! never touches a socket, never spawns a task and never reads the clock: time
//! is an input. A runtime shell (the `vela-media` crate) owns the socket and
//! the timers.
//!
//! # Run-loop contract
//! Give the [`Sfu`] one input at a time ([`Sfu::handle_receive`],
//! [`Sfu::handle_timeout`], or one of the signaling calls such as
//! [`Sfu::handle_join`]), then drain [`Sfu::poll_output`] until it returns
//! [`Output::Timeout`]. Call [`Sfu::handle_timeout`] no later than that
//! instant.

mod dtls;
mod error;
mod id;
mod isolation;
mod layer_selector;
mod peer;
mod room;
mod router;
mod sfu;
mod signal;
mod speaker;
mod stats;
mod track;

pub use error::{JoinError, SignalError};
pub use id::{ConnectionId, IdParseError, ParticipantId, RoomId, TrackId};
#[cfg(feature = "test-hooks")]
pub use isolation::RtcCall;
pub use room::RoomOptions;
pub use sfu::{DataMessage, JoinRequest, Joined, Output, Sfu, SfuConfig, id_shard};
pub use signal::{
    LeaveReason, ParticipantInfo, PeerKind, Permissions, RoomEvent, RoomInfo, Signal, TrackInfo,
    TrackKind,
};
pub use speaker::Speaker;
pub use stats::SfuStats;
pub use track::TrackSettings;

/// Re-exported str0m types that appear in this crate's API.
pub use str0m::change::{SdpAnswer, SdpOffer};
pub use str0m::net::Transmit;
