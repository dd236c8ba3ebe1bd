//! `[media]`: the SFU's UDP and TCP ports and timing.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Settings of the media (SFU) part (`[media]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// UDP port for ICE/DTLS/SRTP; 0 picks a free port.
    pub udp_port: u16,
    /// TCP port for ICE over TCP (RFC 6544), one for the whole node: for
    /// clients on networks that block UDP. 0 = off. With `udp_port = 0`
    /// (a free port picked, as tests do) a free TCP port is picked too.
    pub tcp_port: u16,
    /// Media shards: each a core of its own with its own UDP port
    /// (`udp_port`, `udp_port + 1`, ...) and rooms; 0 = one per CPU core.
    pub shards: u16,
    /// Address that receives traffic for node addresses that are not local (1:1 NAT).
    pub bind_ip: IpAddr,
    /// Addresses advertised as ICE candidates; empty = every local address.
    pub node_ips: Vec<IpAddr>,
    /// A peer that has not connected after this many milliseconds is dropped.
    pub connect_timeout_ms: u64,
    /// Minimum interval between keyframe requests sent to one publisher.
    pub keyframe_request_interval_ms: u64,
    /// How long a participant whose connection dropped (WebSocket or media)
    /// is kept for it to come back as the same participant.
    pub reconnect_timeout_ms: u64,
    /// A room's new participants go to another shard of this node (the
    /// shards linked in-process) once the room's shards each hold this
    /// many. 0: a room stays on one shard.
    pub max_room_participants_per_shard: u32,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            udp_port: 7882,
            tcp_port: 7881,
            shards: 1,
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            node_ips: Vec::new(),
            connect_timeout_ms: 30_000,
            keyframe_request_interval_ms: 500,
            reconnect_timeout_ms: 15_000,
            max_room_participants_per_shard: 0,
        }
    }
}

/// The most media shards a node runs.
pub const MAX_SHARDS: u16 = 256;

impl MediaConfig {
    /// The TCP port to listen on for ICE over TCP: `None` when off, 0 for
    /// a free one (when `udp_port` is 0).
    pub fn tcp_listen_port(&self) -> Option<u16> {
        match (self.tcp_port, self.udp_port) {
            (0, _) => None,
            (_, 0) => Some(0),
            (p, _) => Some(p),
        }
    }

    /// How many media shards to run: `shards`, or with 0 one per CPU core.
    pub fn shard_count(&self) -> usize {
        match self.shards {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(usize::from(MAX_SHARDS)),
            n => usize::from(n),
        }
    }

    /// Checks the rules that serde cannot express.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(ip) = self
            .node_ips
            .iter()
            .find(|ip| ip.is_unspecified() || ip.is_multicast())
        {
            return Err(ConfigError::invalid(
                "media.node_ips",
                format!("{ip} cannot be advertised (unspecified or multicast address)"),
            ));
        }
        if self.shards > MAX_SHARDS {
            return Err(ConfigError::invalid(
                "media.shards",
                format!("must be at most {MAX_SHARDS} (0 = one per CPU core)"),
            ));
        }
        // With 0 the count is this machine's cores: checked as started.
        let last_port = u32::from(self.udp_port) + self.shard_count() as u32 - 1;
        if self.udp_port != 0 && last_port > u32::from(u16::MAX) {
            return Err(ConfigError::invalid(
                "media.shards",
                format!(
                    "{} shards take ports {}..{last_port}, past 65535",
                    self.shard_count(),
                    self.udp_port
                ),
            ));
        }
        if self.connect_timeout_ms < 1000 {
            return Err(ConfigError::invalid(
                "media.connect_timeout_ms",
                "must be at least 1000",
            ));
        }
        if !(50..=10_000).contains(&self.keyframe_request_interval_ms) {
            return Err(ConfigError::invalid(
                "media.keyframe_request_interval_ms",
                "must be between 50 and 10000",
            ));
        }
        if !(1000..=600_000).contains(&self.reconnect_timeout_ms) {
            return Err(ConfigError::invalid(
                "media.reconnect_timeout_ms",
                "must be between 1000 and 600000",
            ));
        }
        Ok(())
    }
}
