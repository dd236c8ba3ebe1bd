//! Overrides taken from the command line (highest precedence).

use std::net::{IpAddr, SocketAddr};

use crate::Config;

/// Settings given on the command line; `None`/empty leaves the value alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CliOverrides {
    /// Replaces `server.http`.
    pub http: Option<SocketAddr>,
    /// Replaces `media.udp_port`.
    pub udp_port: Option<u16>,
    /// Replaces `media.tcp_port`.
    pub tcp_port: Option<u16>,
    /// Replaces `media.node_ips` when non-empty.
    pub node_ips: Vec<IpAddr>,
    /// Replaces `server.log_level`.
    pub log_level: Option<String>,
}

impl CliOverrides {
    /// Writes the overrides that are set into `config`.
    pub(crate) fn apply(&self, config: &mut Config) {
        if let Some(http) = self.http {
            config.server.http = http;
        }
        if let Some(port) = self.udp_port {
            config.media.udp_port = port;
        }
        if let Some(port) = self.tcp_port {
            config.media.tcp_port = port;
        }
        if !self.node_ips.is_empty() {
            config.media.node_ips.clone_from(&self.node_ips);
        }
        if let Some(level) = &self.log_level {
            config.server.log_level.clone_from(level);
        }
    }
}
