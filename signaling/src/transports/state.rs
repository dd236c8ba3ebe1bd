//! What every transport shares: the services, the configuration and the
//! registries of live sessions, built once by `server` and cloned into
//! each handler (`AppState`); and the room grant a room socket or WHIP/WHEP
//! join is checked against.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use vela_config::Config;
use vela_media::MediaHandle;
use vela_media::core::{ConnectionId, JoinRequest, PeerKind, Permissions, RoomId};

use crate::domain::account;
use crate::domain::call::is_call_room;
use crate::domain::ids::{AccountId, DeviceId};
use crate::services::auth::{LoginLimiter, SignupLimiter};
use crate::services::hub::Hub;
use crate::services::metrics;
use crate::services::password::PasswordHasher;
use crate::services::presence::PresenceHandle;
use crate::services::store::Store;
use crate::services::token::{Claims, Credential, TokenKeys};
use crate::transports::error::ApiError;
use crate::transports::listener::ConnectionStats;
use crate::transports::resume::Resumable;

/// A WHIP or WHEP session, addressed by its Location.
#[derive(Debug, Clone)]
pub(crate) struct HttpSession {
    pub room: RoomId,
    /// Who may end it.
    pub owner: SessionOwner,
}

/// Who may end a WHIP or WHEP session. Typed, not a string: a room token's
/// identity is whatever its minter chose, and must never name an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SessionOwner {
    /// A room token's identity.
    Identity(String),
    /// Any device of this account.
    Account(AccountId),
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub config: Arc<Config>,
    pub keys: TokenKeys,
    pub media: MediaHandle,
    pub http_sessions: Arc<Mutex<HashMap<ConnectionId, HttpSession>>>,
    pub shutdown: watch::Receiver<bool>,
    /// Live WebSocket sessions, so shutdown can wait for their goodbyes.
    pub sessions: TaskTracker,
    /// Accounts, devices, contacts.
    pub store: Store,
    /// Live connections per account and device.
    pub hub: Hub,
    /// The presence task.
    pub presence: PresenceHandle,
    /// Failed-login counters.
    pub login_limiter: Arc<LoginLimiter>,
    /// Sign-ups per client address.
    pub signup_limiter: Arc<SignupLimiter>,
    /// The bounded pool every password hash runs on.
    pub hasher: PasswordHasher,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    /// The calls task.
    pub calls: crate::services::calls::CallsHandle,
    /// Room sessions a new socket may take over (`resume`).
    pub resumable: Resumable,
    /// Counters kept outside the media core (join times, webhooks).
    pub metrics: Arc<metrics::Metrics>,
    /// HTTP connections open, refused and timed out.
    pub connections: Arc<ConnectionStats>,
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
    pub fn owner(&self) -> SessionOwner {
        match self.account {
            Some((a, _)) => SessionOwner::Account(a),
            None => SessionOwner::Identity(self.identity.clone()),
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
