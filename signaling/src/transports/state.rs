//! What every transport shares: the services, the configuration and the
//! registries of live sessions, built once by `server` and cloned into
//! each handler (`AppState`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use vela_config::Config;
use vela_media::MediaHandle;
use vela_media::core::{ConnectionId, RoomId};

use crate::domain::ice::{IceServer, IceServers};
use crate::domain::ids::AccountId;
use crate::services::auth::{LoginLimiter, SignupLimiter};
use crate::services::devices::Devices;
use crate::services::hub::Hub;
use crate::services::metrics;
use crate::services::password::PasswordHasher;
use crate::services::presence::PresenceHandle;
use crate::services::room_directory::RoomDirectory;
use crate::services::store::Store;
use crate::services::token::TokenKeys;
use crate::transports::listener::ConnectionStats;
use crate::transports::resume::Resumable;

/// A WHIP or WHEP session, addressed by its Location.
#[derive(Debug, Clone)]
pub(crate) struct WhipSession {
    pub room: RoomId,
    /// Who may end it.
    pub owner: WhipOwner,
}

/// Who may end a WHIP or WHEP session. Typed, not a string: a room token's
/// identity is whatever its minter chose, and must never name an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WhipOwner {
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
    pub whip_sessions: Arc<Mutex<HashMap<ConnectionId, WhipSession>>>,
    pub shutdown: watch::Receiver<bool>,
    /// The tasks of live sockets (room and device), so shutdown can wait
    /// for their goodbyes.
    pub socket_tasks: TaskTracker,
    /// Accounts, devices, contacts.
    pub store: Store,
    /// Live connections per account and device.
    pub hub: Hub,
    /// Signs devices out (revoke, password changes, expiry).
    pub devices: Devices,
    /// The presence task.
    pub presence: PresenceHandle,
    /// Which node serves each room (asked on every join).
    pub rooms: RoomDirectory,
    /// This node's place in a cluster; `None` when it is the only node.
    pub cluster: Option<crate::services::cluster::Cluster>,
    /// The cluster's live nodes (with `cluster`).
    pub nodes: Option<crate::services::node_registry::NodeRegistry>,
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
    /// The STUN/TURN servers every client is given (`[turn]`).
    pub ice_servers: Arc<IceServers>,
}

impl AppState {
    /// The ICE servers for participant `user`, with TURN credentials valid
    /// from now for `turn.ttl_secs`.
    pub fn ice_servers_for(&self, user: &impl std::fmt::Display) -> Vec<IceServer> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.ice_servers.for_user(&user.to_string(), now)
    }
}
