//! `[cluster]`: several nodes sharing state through Redis.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Smallest allowed `cluster.heartbeat_ms`.
const MIN_HEARTBEAT_MS: u64 = 100;
/// Shortest allowed `cluster.relay_secret`.
const MIN_RELAY_SECRET_CHARS: usize = 32;
/// Largest allowed `cluster.node_timeout_ms` (ten minutes).
const MAX_NODE_TIMEOUT_MS: u64 = 600_000;

/// Running as one node of several (`[cluster]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Redis, which the nodes share (`redis://host:port/db`). Empty: this
    /// server is the only node and needs no Redis.
    pub redis_url: String,
    /// This node's name in the cluster, unique among the nodes. Empty: the
    /// host name and the HTTP port (`host:7880`).
    pub node_id: String,
    /// Where clients reach this node's HTTP listener
    /// (`https://node1.example.com`): where other nodes send the clients of
    /// a room served here. Empty: `http://` and the listener's address.
    pub public_url: String,
    /// How often the node renews its entry, its rooms and its devices.
    pub heartbeat_ms: u64,
    /// A node that has not renewed for this long counts as gone: its rooms
    /// may open elsewhere.
    pub node_timeout_ms: u64,
    /// Where this node's media relay listens for the other nodes (QUIC,
    /// `0.0.0.0:7890`). Empty: no relay, every room stays on one node.
    pub relay_addr: String,
    /// The address the other nodes dial to reach this node's relay
    /// (`10.0.0.11:7890`). Empty: `relay_addr`, which must then name an
    /// address (not `0.0.0.0`).
    pub relay_public_addr: String,
    /// The secret every node of the cluster shares; the nodes derive their
    /// relay certificates from it and refuse a peer without it (at least
    /// 32 characters). Needed with `relay_addr` unless the CA files are set.
    pub relay_secret: String,
    /// A cluster CA (PEM certificate) to authenticate the relay instead of
    /// the secret; with `relay_ca_key`.
    pub relay_ca_cert: String,
    /// The CA's private key (PEM) this node signs its relay certificate with.
    pub relay_ca_key: String,
    /// A room's new participants go to another node (the room spreads, its
    /// nodes linked by the relay) once the room's nodes each have this many
    /// participants. 0: no limit, a room stays on the node it opened on.
    pub max_participants_per_node: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            node_id: String::new(),
            public_url: String::new(),
            heartbeat_ms: 1_000,
            node_timeout_ms: 5_000,
            relay_addr: String::new(),
            relay_public_addr: String::new(),
            relay_secret: String::new(),
            relay_ca_cert: String::new(),
            relay_ca_key: String::new(),
            max_participants_per_node: 0,
        }
    }
}

impl ClusterConfig {
    /// Whether this node is one of several (a Redis URL is set).
    pub fn enabled(&self) -> bool {
        !self.redis_url.trim().is_empty()
    }

    /// Where the relay listens, when it runs (validated).
    pub fn relay_listen(&self) -> Option<SocketAddr> {
        self.relay_addr.trim().parse().ok()
    }

    /// What the other nodes dial: `relay_public_addr`, else the relay's
    /// listening address with `bound_port` (the port it got, for port 0).
    pub fn relay_advertised(&self, bound_port: u16) -> Option<String> {
        let listen = self.relay_listen()?;
        match self.relay_public_addr.trim() {
            "" => Some(SocketAddr::new(listen.ip(), bound_port).to_string()),
            public => Some(public.to_owned()),
        }
    }

    /// Checks the rules that serde cannot express.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let redis = self.redis_url.trim();
        if !redis.is_empty()
            && !["redis://", "rediss://", "redis+unix://", "unix://"]
                .iter()
                .any(|p| redis.starts_with(p))
        {
            return Err(ConfigError::invalid(
                "cluster.redis_url",
                "must start with redis:// or rediss://",
            ));
        }
        let public = self.public_url.trim();
        if !(public.is_empty() || public.starts_with("http://") || public.starts_with("https://")) {
            return Err(ConfigError::invalid(
                "cluster.public_url",
                "must start with http:// or https://",
            ));
        }
        if self.node_id.len() > 128 || self.node_id.chars().any(|c| c.is_control()) {
            return Err(ConfigError::invalid(
                "cluster.node_id",
                "must be at most 128 printable characters",
            ));
        }
        if self.heartbeat_ms < MIN_HEARTBEAT_MS {
            return Err(ConfigError::invalid(
                "cluster.heartbeat_ms",
                format!("must be at least {MIN_HEARTBEAT_MS}"),
            ));
        }
        if self.node_timeout_ms < 2 * self.heartbeat_ms
            || self.node_timeout_ms > MAX_NODE_TIMEOUT_MS
        {
            return Err(ConfigError::invalid(
                "cluster.node_timeout_ms",
                format!(
                    "must be at least twice cluster.heartbeat_ms and at most {MAX_NODE_TIMEOUT_MS}"
                ),
            ));
        }
        self.validate_relay()
    }

    fn validate_relay(&self) -> Result<(), ConfigError> {
        let relay = self.relay_addr.trim();
        if relay.is_empty() {
            if self.max_participants_per_node > 0 {
                return Err(ConfigError::invalid(
                    "cluster.max_participants_per_node",
                    "spreads a room over nodes, which needs the relay (cluster.relay_addr)",
                ));
            }
            return Ok(());
        }
        if !self.enabled() {
            return Err(ConfigError::invalid(
                "cluster.relay_addr",
                "links the nodes of a cluster: set cluster.redis_url too",
            ));
        }
        let Ok(listen) = relay.parse::<SocketAddr>() else {
            return Err(ConfigError::invalid(
                "cluster.relay_addr",
                "must be an address and port (\"0.0.0.0:7890\")",
            ));
        };
        let public = self.relay_public_addr.trim();
        if public.is_empty() {
            if listen.ip().is_unspecified() {
                return Err(ConfigError::invalid(
                    "cluster.relay_public_addr",
                    "is needed when cluster.relay_addr listens on every address: the address the other nodes dial",
                ));
            }
        } else if !valid_host_port(public) {
            return Err(ConfigError::invalid(
                "cluster.relay_public_addr",
                "must be host:port (\"10.0.0.11:7890\")",
            ));
        }
        let (cert, key) = (self.relay_ca_cert.trim(), self.relay_ca_key.trim());
        if cert.is_empty() != key.is_empty() {
            return Err(ConfigError::invalid(
                "cluster.relay_ca_cert",
                "and cluster.relay_ca_key go together",
            ));
        }
        let secret = self.relay_secret.chars().count();
        if cert.is_empty() && secret < MIN_RELAY_SECRET_CHARS {
            return Err(ConfigError::invalid(
                "cluster.relay_secret",
                format!(
                    "must be at least {MIN_RELAY_SECRET_CHARS} characters (or set cluster.relay_ca_cert and relay_ca_key): the nodes authenticate each other with it"
                ),
            ));
        }
        if !cert.is_empty() && secret > 0 {
            return Err(ConfigError::invalid(
                "cluster.relay_secret",
                "and cluster.relay_ca_cert are two ways to authenticate the relay: set one",
            ));
        }
        Ok(())
    }
}

/// `host:port` with a port, as the other nodes dial it.
fn valid_host_port(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(':')
                && !host.chars().any(|c| c.is_whitespace() || c.is_control())
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}
