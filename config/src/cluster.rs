//! `[cluster]`: several nodes sharing state through Redis.

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Smallest allowed `cluster.heartbeat_ms`.
const MIN_HEARTBEAT_MS: u64 = 100;
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
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            node_id: String::new(),
            public_url: String::new(),
            heartbeat_ms: 1_000,
            node_timeout_ms: 5_000,
        }
    }
}

impl ClusterConfig {
    /// Whether this node is one of several (a Redis URL is set).
    pub fn enabled(&self) -> bool {
        !self.redis_url.trim().is_empty()
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
        Ok(())
    }
}
