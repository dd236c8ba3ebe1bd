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
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 7880)),
            log_level: "info".to_owned(),
            trusted_proxies: Vec::new(),
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
