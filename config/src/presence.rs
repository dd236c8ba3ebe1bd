//! `[presence]`: how presence follows devices.

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Smallest allowed `presence.heartbeat_timeout_ms`.
const MIN_HEARTBEAT_TIMEOUT_MS: u64 = 100;
/// Largest allowed `presence.heartbeat_timeout_ms` (one hour).
const MAX_HEARTBEAT_TIMEOUT_MS: u64 = 3_600_000;

/// Presence settings (`[presence]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// A device counts as present until this many milliseconds after the
    /// last message it sent, whether or not its socket is still open.
    pub heartbeat_timeout_ms: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            heartbeat_timeout_ms: 30_000,
        }
    }
}

impl PresenceConfig {
    /// Checks the rules that serde cannot express.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_HEARTBEAT_TIMEOUT_MS..=MAX_HEARTBEAT_TIMEOUT_MS)
            .contains(&self.heartbeat_timeout_ms)
        {
            return Err(ConfigError::invalid(
                "presence.heartbeat_timeout_ms",
                format!(
                    "must be between {MIN_HEARTBEAT_TIMEOUT_MS} and {MAX_HEARTBEAT_TIMEOUT_MS}"
                ),
            ));
        }
        Ok(())
    }
}
