//! Checking tokens: account access tokens against the store
//! (`authenticate`, the `Authorization: Bearer` header, the `Authed`
//! extractor), and room tokens or access tokens for joining a room (the
//! room grant a room socket or WHIP/WHEP join is checked against).

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use vela_media::core::{ConnectionId, JoinRequest, PeerKind, Permissions, RoomId};

use crate::domain::account;
use crate::domain::call::is_call_room;
use crate::domain::ids::{AccountId, DeviceId};
use crate::services::store::SignInState;
use crate::services::token::{AccessClaims, Claims, Credential};
use crate::transports::error::ApiError;
use crate::transports::state::{AppState, WhipOwner};

impl AppState {
    /// Verifies an account access token and that its device is not revoked
    /// and its account not disabled (the store is asked every time). The
    /// roles and permissions are the account's now, not the token's: a
    /// role granted or taken away counts from the next request.
    pub async fn authenticate(&self, token: &str) -> Result<AccessClaims, ApiError> {
        let mut claims = self.keys.verify_access(token)?;
        let (sign_in, roles) = self.store.sign_in(claims.acc, claims.dev).await?;
        match sign_in {
            SignInState::Active => {
                claims.perms = account::permissions(&roles)
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                claims.roles = roles.iter().map(|r| r.as_str().to_owned()).collect();
                Ok(claims)
            }
            SignInState::Revoked => Err(ApiError::unauthorized("this device was signed out")),
            SignInState::Disabled => Err(ApiError::unauthorized("this account is disabled")),
            SignInState::Unknown => Err(ApiError::unauthorized("unknown account or device")),
        }
    }
}

/// The `Authorization: Bearer` value of a request.
pub fn bearer(parts: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let v = parts
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
    let v = v
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .ok_or_else(|| ApiError::unauthorized("Authorization must be a Bearer token"))
}

/// A request authenticated with a live account access token.
#[derive(Debug, Clone)]
pub struct Authed(pub AccessClaims);

impl Authed {
    /// The account.
    pub fn account(&self) -> AccountId {
        self.0.acc
    }

    /// The device.
    pub fn device(&self) -> DeviceId {
        self.0.dev
    }

    /// 403 unless the token carries `perm`.
    pub fn require(&self, perm: &str) -> Result<(), ApiError> {
        if self.0.has(perm) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("needs the {perm} permission")))
        }
    }
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers)?;
        Ok(Authed(state.authenticate(token).await?))
    }
}

/// Who joins a room, and with what rights, after checking the token.
#[derive(Debug, Clone)]
pub(crate) struct RoomGrant {
    /// The participant identity.
    pub identity: String,
    /// The display name.
    pub name: String,
    /// What the participant may do.
    pub permissions: Permissions,
    /// The account and device, for an account access token.
    pub account: Option<(AccountId, DeviceId)>,
    /// May moderate the room (roomAdmin, or an account with rooms:admin).
    pub admin: bool,
}

impl RoomGrant {
    /// Who may end the participant's WHIP/WHEP session: the same identity
    /// (room tokens) or the same account (access tokens).
    pub fn owner(&self) -> WhipOwner {
        match self.account {
            Some((a, _)) => WhipOwner::Account(a),
            None => WhipOwner::Identity(self.identity.clone()),
        }
    }

    /// The join request for this grant.
    pub fn join_request(&self, room: RoomId, kind: PeerKind) -> JoinRequest {
        let req = JoinRequest::new(room, self.identity.clone(), kind)
            .with_name(self.name.clone())
            .with_permissions(self.permissions);
        match self.account {
            Some((a, d)) => req.with_account(a.to_string(), d.to_string()),
            None => req,
        }
    }
}

impl AppState {
    /// Checks a room token's grant to join `room`.
    fn check_room_claims(claims: Claims, room: &RoomId) -> Result<Claims, ApiError> {
        if claims.sub.is_empty() {
            return Err(ApiError::unauthorized(
                "a join token needs an identity (sub)",
            ));
        }
        if !claims.video.room_join {
            return Err(ApiError::forbidden("token has no roomJoin grant"));
        }
        match claims.video.room.as_deref() {
            Some(r) if r == room.as_str() => Ok(claims),
            _ => Err(ApiError::forbidden(format!(
                "token is not valid for room {room}"
            ))),
        }
    }

    /// Verifies a room token for `room`, or the access token of a signed-in
    /// device (any room, with the account's permissions).
    pub async fn authorize_room(&self, token: &str, room: &RoomId) -> Result<RoomGrant, ApiError> {
        match self.keys.verify_credential(token)? {
            Credential::Room(claims) => {
                let claims = Self::check_room_claims(claims, room)?;
                Ok(RoomGrant {
                    identity: claims.sub.clone(),
                    name: claims.display_name().to_owned(),
                    permissions: Permissions {
                        publish: claims.can_publish(),
                        subscribe: claims.can_subscribe(),
                        publish_data: claims.can_publish_data(),
                    },
                    account: None,
                    admin: claims.video.room_admin,
                })
            }
            Credential::Access(_) => {
                let claims = self.authenticate(token).await?;
                if !claims.has(account::PERM_ROOMS_JOIN) {
                    return Err(ApiError::forbidden("this account may not join rooms"));
                }
                let name = self
                    .store
                    .account(claims.acc)
                    .await?
                    .map_or_else(|| claims.name.clone(), |a| a.display_name);
                Ok(RoomGrant {
                    // One participant per device: two devices of an account
                    // are two participants; the same device joining again
                    // replaces its older session.
                    identity: format!("{}/{}", claims.name, claims.dev),
                    name,
                    permissions: Permissions {
                        publish: claims.has(account::PERM_ROOMS_PUBLISH),
                        subscribe: claims.has(account::PERM_ROOMS_SUBSCRIBE),
                        publish_data: claims.has(account::PERM_ROOMS_PUBLISH),
                    },
                    account: Some((claims.acc, claims.dev)),
                    admin: claims.has(account::PERM_ROOMS_ADMIN),
                })
            }
        }
    }
}

/// Checks a join of `room` with `grant` (and `take_over`, a participant id
/// as the client gave it): call rooms admit only the call's members (see
/// [`Calls::authorize_join`]). Returns the connection to hand over from.
pub(crate) async fn room_access(
    state: &AppState,
    room: &str,
    account: Option<(AccountId, DeviceId)>,
    take_over: Option<&str>,
) -> Result<Option<ConnectionId>, ApiError> {
    let take_over = match take_over.filter(|t| !t.is_empty()) {
        Some(t) => Some(
            t.parse::<ConnectionId>()
                .map_err(|_| ApiError::invalid("take_over", "is not a participant id"))?,
        ),
        None => None,
    };
    if !is_call_room(room) {
        return Ok(take_over);
    }
    let Some((account, device)) = account else {
        return Err(ApiError::forbidden(
            "a call room is joined with the access token of a device in the call",
        ));
    };
    Ok(state
        .calls
        .authorize_join(room.to_owned(), account, device, take_over)
        .await?)
}
