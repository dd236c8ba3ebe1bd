//! `[calls]`: calls between accounts.

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Smallest allowed `calls.ring_timeout_ms` and `calls.join_timeout_ms`.
const MIN_TIMEOUT_MS: u64 = 100;
/// Largest allowed `calls.ring_timeout_ms` and `calls.join_timeout_ms` (ten minutes).
const MAX_TIMEOUT_MS: u64 = 600_000;

/// Call settings (`[calls]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CallsConfig {
    /// How long an invitee's devices ring before the call counts as missed.
    pub ring_timeout_ms: u64,
    /// How long a member in a call (an invitee from accepting, the caller
    /// from the answer) has to join its room before they leave the call.
    pub join_timeout_ms: u64,
    /// Most accounts in one call, the caller included.
    pub max_participants: u32,
}

impl Default for CallsConfig {
    fn default() -> Self {
        Self {
            ring_timeout_ms: 30_000,
            join_timeout_ms: 30_000,
            max_participants: 8,
        }
    }
}

impl CallsConfig {
    /// Checks the rules that serde cannot express.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("calls.ring_timeout_ms", self.ring_timeout_ms),
            ("calls.join_timeout_ms", self.join_timeout_ms),
        ] {
            if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&value) {
                return Err(ConfigError::invalid(
                    key,
                    format!("must be between {MIN_TIMEOUT_MS} and {MAX_TIMEOUT_MS}"),
                ));
            }
        }
        if !(2..=64).contains(&self.max_participants) {
            return Err(ConfigError::invalid(
                "calls.max_participants",
                "must be between 2 and 64",
            ));
        }
        Ok(())
    }
}
