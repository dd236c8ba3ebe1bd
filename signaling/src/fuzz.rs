//! Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature
//! only): thin wrappers that make the crate's own parsers and checks
//! reachable from outside, unchanged. Nothing here is API.

use std::sync::Arc;

use crate::domain::contact::ContactBody;
use crate::transports::error::ApiError;
use crate::transports::http::{calls, rooms};

pub use crate::domain::call::is_call_room;
pub use crate::transports::room_socket::protocol::{ClientMessage, parse_kind, parse_sources};

/// Decodes a room socket message as the session does.
pub fn decode_client_message(text: &str) -> Result<ClientMessage, serde_json::Error> {
    serde_json::from_str(text)
}

/// A data message's payload: base64, checked for size (the session's and
/// the server API's check).
pub fn decode_payload(payload: &str) -> Result<Arc<[u8]>, ApiError> {
    crate::transports::room_socket::decode_payload(payload)
}

/// The SDP parser's error as the session and WHIP report it.
pub fn sdp_reason(e: &impl std::fmt::Display) -> String {
    crate::transports::whip::sdp_reason(e)
}

/// Parses a device socket message (`GET /api/v1/ws`); the message in its
/// `Debug` form.
pub fn parse_device_message(text: &str) -> Result<String, ApiError> {
    crate::transports::device_socket::parse_message(text).map(|m| format!("{m:?}"))
}

/// The routes of the contacts, calls and room-service APIs that take a JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /api/v1/contacts`.
    ContactCreate,
    /// `PUT /api/v1/contacts/{id}`.
    ContactUpdate,
    /// `POST /api/v1/calls`.
    CallInvite,
    /// `POST /api/v1/calls/{id}/accept`.
    CallAccept,
    /// `POST /api/v1/calls/{id}/invite`.
    CallAdd,
    /// `POST /api/v1/calls/{id}/messages`.
    CallMessage,
    /// `PUT /api/v1/calls/settings`.
    CallSettings,
    /// `POST /api/v1/rooms`.
    RoomCreate,
    /// `PATCH /api/v1/rooms/{room}/participants/{identity}`.
    RoomUpdateParticipant,
    /// `POST /api/v1/rooms/{room}/participants/{identity}/tracks/{track}/mute`.
    RoomMute,
    /// `POST /api/v1/rooms/{room}/data`.
    RoomData,
    /// `POST /api/v1/tokens`.
    Token,
}

impl Route {
    /// Every route, in a fixed order (a fuzz input's first byte picks one).
    pub const ALL: [Route; 12] = [
        Route::ContactCreate,
        Route::ContactUpdate,
        Route::CallInvite,
        Route::CallAccept,
        Route::CallAdd,
        Route::CallMessage,
        Route::CallSettings,
        Route::RoomCreate,
        Route::RoomUpdateParticipant,
        Route::RoomMute,
        Route::RoomData,
        Route::Token,
    ];
}

/// Parses `body` as the route's body type with the API's parser (errors
/// name the field), then runs the checks the body type has of its own (an
/// address book entry's `validate`). The handlers' other checks live in
/// the handlers, beside the store and the media core.
pub fn api_body(route: Route, body: &[u8]) -> Result<(), ApiError> {
    use crate::transports::http::parse;
    match route {
        Route::ContactCreate | Route::ContactUpdate => parse::<ContactBody>(body)?
            .validate()
            .map(|_| ())
            .map_err(ApiError::from),
        Route::CallInvite => parse::<calls::InviteBody>(body).map(|_| ()),
        Route::CallAccept => parse::<calls::AcceptBody>(body).map(|_| ()),
        Route::CallAdd => parse::<calls::AddBody>(body).map(|_| ()),
        Route::CallMessage => parse::<calls::MessageBody>(body).map(|_| ()),
        Route::CallSettings => parse::<calls::SettingsBody>(body).map(|_| ()),
        Route::RoomCreate => parse::<rooms::CreateRoom>(body).map(|_| ()),
        Route::RoomUpdateParticipant => parse::<rooms::UpdateParticipant>(body).map(|_| ()),
        Route::RoomMute => parse::<rooms::MuteBody>(body).map(|_| ()),
        Route::RoomData => parse::<rooms::DataBody>(body).map(|_| ()),
        Route::Token => parse::<rooms::TokenBody>(body).map(|_| ()),
    }
}
