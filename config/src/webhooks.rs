//! `[webhooks]`: where room and call events are posted.

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Webhook settings (`[webhooks]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Destinations (`http://` or `https://` URLs); each gets every event, in order.
    pub urls: Vec<String>,
    /// How long one delivery attempt may take.
    pub timeout_ms: u64,
    /// Attempts per event and destination before it is given up (and counted as failed).
    pub max_attempts: u32,
    /// The wait before the first retry; it doubles on each further retry.
    pub retry_initial_ms: u64,
    /// The longest wait between retries.
    pub retry_max_ms: u64,
    /// Events held per destination while it is slow or down; beyond that new
    /// events are dropped (and counted as failed).
    pub queue_size: u32,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            timeout_ms: 5_000,
            max_attempts: 6,
            retry_initial_ms: 500,
            retry_max_ms: 30_000,
            queue_size: 10_000,
        }
    }
}

impl WebhooksConfig {
    /// Checks the rules that serde cannot express.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for u in &self.urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() < 10 {
                return Err(ConfigError::invalid(
                    "webhooks.urls",
                    format!("{u:?} is not an http:// or https:// URL"),
                ));
            }
        }
        if !(100..=60_000).contains(&self.timeout_ms) {
            return Err(ConfigError::invalid(
                "webhooks.timeout_ms",
                "must be between 100 and 60000",
            ));
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(ConfigError::invalid(
                "webhooks.max_attempts",
                "must be between 1 and 100",
            ));
        }
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            return Err(ConfigError::invalid(
                "webhooks.retry_max_ms",
                "retry_initial_ms must be positive and at most retry_max_ms",
            ));
        }
        if !(1..=1_000_000).contains(&self.queue_size) {
            return Err(ConfigError::invalid(
                "webhooks.queue_size",
                "must be between 1 and 1000000",
            ));
        }
        Ok(())
    }
}
