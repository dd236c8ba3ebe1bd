//! The room socket's `join`: the token checked for the room, call rooms'
//! members and take-overs, then the media join or handover.

use super::*;
use crate::services::room_directory::RoomHome;

/// A join carried out: what the session serves.
pub(super) struct Join {
    /// The room joined.
    pub room: RoomId,
    /// The media core's answer.
    pub joined: Joined,
    /// The participant's signals from the media core.
    pub signals: SignalReceiver,
    /// The account and device, for an account access token.
    pub account: Option<(AccountId, DeviceId)>,
    /// May moderate the room (roomAdmin).
    pub admin: bool,
}

/// What a `join` leads to.
pub(super) enum Joining {
    /// Joined here.
    Here(Box<Join>),
    /// The room is served by another node: the socket goes there.
    Elsewhere {
        room: RoomId,
        node: String,
        public_url: String,
    },
}

/// `proxied`: another node placed the join here and proxied the socket.
pub(super) async fn join(state: &AppState, text: &str, proxied: bool) -> Result<Joining, ApiError> {
    let msg: ClientMessage = serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("malformed message: {e}")))?;
    let ClientMessage::Join {
        token,
        name,
        room,
        take_over,
        resume_token,
    } = msg
    else {
        return Err(ApiError::bad_request("the first message must be join"));
    };
    // The room: the message's `room`, else the room token's.
    let room = match (room, state.keys.verify_credential(&token)?) {
        (Some(r), _) => r,
        (None, Credential::Room(claims)) => claims
            .video
            .room
            .ok_or_else(|| ApiError::forbidden("token names no room"))?,
        (None, Credential::Access(_)) => {
            return Err(ApiError::invalid(
                "room",
                "is required when joining with an account access token",
            ));
        }
    };
    let room = RoomId::new(&room).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let grant = state.authorize_room(&token, &room).await?;
    // Served here only where the directory places the join; that node
    // makes every other check. A join another node placed here stays.
    let home = if proxied {
        state.rooms.home_placed(&room).await?
    } else {
        state.rooms.home(&room).await?
    };
    if let RoomHome::Elsewhere { node, public_url } = home {
        return Ok(Joining::Elsewhere {
            room,
            node,
            public_url,
        });
    }
    // Call rooms admit the call's members only; `take_over` hands a call over.
    let from = crate::transports::auth::room_access(
        state,
        room.as_str(),
        grant.account,
        take_over.as_deref(),
    )
    .await?;
    if let Some(from) = from
        && !crate::domain::call::is_call_room(room.as_str())
    {
        check_take_over(state, &room, from, &grant, resume_token.as_deref()).await?;
    }
    let name = name
        .filter(|n| !n.trim().is_empty())
        .map(|n| n.chars().take(64).collect::<String>())
        .unwrap_or_else(|| grant.name.clone());
    let req = grant
        .join_request(room.clone(), PeerKind::Session)
        .with_name(name);
    let (joined, signals) = match from {
        Some(from) => state.media.handover(from, req).await?,
        None => state.media.join(req).await?,
    };
    Ok(Joining::Here(Box::new(Join {
        room,
        joined,
        signals,
        account: grant.account,
        admin: grant.admin,
    })))
}

/// Outside call rooms, taking a participant over needs proof of being the
/// same client, not only a token for the same identity (which a room's
/// moderator can mint): the session's resume token, or the same account
/// and device.
async fn check_take_over(
    state: &AppState,
    room: &RoomId,
    from: ConnectionId,
    grant: &crate::transports::auth::RoomGrant,
    resume_token: Option<&str>,
) -> Result<(), ApiError> {
    let refused = || {
        ApiError::forbidden(
            "take_over needs the participant's resume_token, or the same account and device",
        )
    };
    // The client names the participant as `PA<n>`, its connection's number
    // (the same until a handover).
    let from = ParticipantId(from.0);
    if let Some(t) = resume_token {
        return if state.resumable.matches(from, t) {
            Ok(())
        } else {
            Err(refused())
        };
    }
    let Some((account, device)) = grant.account else {
        return Err(refused());
    };
    let participants = state.media.participants(room.clone()).await?;
    let same = participants.iter().any(|p| {
        p.id == from
            && p.account.as_deref() == Some(account.to_string().as_str())
            && p.device.as_deref() == Some(device.to_string().as_str())
    });
    if same { Ok(()) } else { Err(refused()) }
}
