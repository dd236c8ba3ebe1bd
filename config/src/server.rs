//! `[server]`: listen address and logging.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Settings of the HTTP/WebSocket server and of logging (`[server]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP + WebSocket server listens on.
    pub http: SocketAddr,
    /// A `tracing` EnvFilter directive, e.g. `info` or `vela=debug,str0m=warn`.
    pub log_level: String,
    /// Reverse proxies (addresses or CIDR ranges) whose `X-Forwarded-For`
    /// names the client; from anyone else the header is ignored. Empty: the
    /// client is always the connection's peer.
    pub trusted_proxies: Vec<String>,
    /// Most HTTP and WebSocket connections open at once; further ones are
    /// closed as they are accepted. 0: the open-files limit less a reserve.
    pub max_connections: u32,
    /// A connection must send a whole request head within this many
    /// milliseconds of connecting (or of its last response: an idle
    /// keep-alive connection is closed after it).
    pub header_timeout_ms: u64,
    /// A new WebSocket must authenticate (`join` or `resume` on `/ws`,
    /// `auth` on `/api/v1/ws`) within this many milliseconds.
    pub auth_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 7880)),
            // str0m warns about what a peer sends wrong, some of it once per
            // packet or frame: a client could fill the log at will.
            log_level: "info,str0m=error".to_owned(),
            trusted_proxies: Vec::new(),
            max_connections: 10_000,
            header_timeout_ms: 10_000,
            auth_timeout_ms: 10_000,
        }
    }
}

impl ServerConfig {
    /// Checks the rules that serde cannot express.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.log_level.trim().is_empty() {
            return Err(ConfigError::invalid(
                "server.log_level",
                "must not be empty",
            ));
        }
        if !(100..=600_000).contains(&self.header_timeout_ms) {
            return Err(ConfigError::invalid(
                "server.header_timeout_ms",
                "must be between 100 and 600000",
            ));
        }
        if !(100..=600_000).contains(&self.auth_timeout_ms) {
            return Err(ConfigError::invalid(
                "server.auth_timeout_ms",
                "must be between 100 and 600000",
            ));
        }
        for p in &self.trusted_proxies {
            if parse_net(p).is_none() {
                return Err(ConfigError::invalid(
                    "server.trusted_proxies",
                    format!("{p:?} is not an IP address or CIDR range"),
                ));
            }
        }
        Ok(())
    }

    /// The trusted proxies as address ranges (an address is a range of one).
    pub fn trusted_proxy_nets(&self) -> Vec<IpNet> {
        self.trusted_proxies
            .iter()
            .filter_map(|p| parse_net(p))
            .collect()
    }
}

fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}
