//! `[server]`: listen address and logging.

use std::net::{Ipv4Addr, SocketAddr};

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
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 7880)),
            log_level: "info".to_owned(),
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
        Ok(())
    }
}
