//! `[auth]`: API key and secret used to sign and check access tokens.

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// API key used when none is configured (development only).
pub const DEV_API_KEY: &str = "devkey";
/// API secret used when none is configured (development only).
pub const DEV_API_SECRET: &str = "vela-development-secret-do-not-use-in-production";

/// Minimum length of a configured API secret, in bytes.
pub const MIN_API_SECRET_BYTES: usize = 32;

/// Credentials and token settings (`[auth]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// API key; empty together with `api_secret` selects the development key.
    pub api_key: String,
    /// API secret (at least 32 bytes when set).
    pub api_secret: String,
    /// Lifetime, in seconds, of tokens printed by the `token` subcommand.
    pub token_ttl_secs: u64,
    /// Lifetime, in seconds, of the access token a login returns.
    pub access_token_ttl_secs: u64,
    /// Lifetime, in seconds, of a refresh token (each use gives a new one).
    pub refresh_token_ttl_secs: u64,
    /// Whether anyone may create an account (`POST /api/v1/accounts`).
    pub allow_registration: bool,
    /// Removed: admin rights are granted with `vela admin grant`, never by
    /// name in the configuration (anyone could sign up as a listed name).
    /// Still read, so that an old file gets a message saying so.
    #[serde(default, skip_serializing)]
    pub admins: Vec<String>,
    /// Listen beyond loopback with the development key (no `api_key`):
    /// anyone who can reach the server could then mint admin tokens with
    /// the public development secret. Off: the server listens on loopback
    /// only while the development key is in use.
    pub insecure_development_key_on_network: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            api_key: String::new(),
            api_secret: String::new(),
            token_ttl_secs: 6 * 60 * 60,
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 30 * 24 * 60 * 60,
            allow_registration: true,
            admins: Vec::new(),
            insecure_development_key_on_network: false,
        }
    }
}

impl AuthConfig {
    /// True when neither key nor secret is configured (development mode).
    pub fn is_development(&self) -> bool {
        self.api_key.is_empty() && self.api_secret.is_empty()
    }

    /// The `(key, secret)` pair to use: the development pair when none is configured.
    pub fn effective_key(&self) -> (&str, &str) {
        if self.is_development() {
            (DEV_API_KEY, DEV_API_SECRET)
        } else {
            (&self.api_key, &self.api_secret)
        }
    }

    /// Checks the rules that serde cannot express.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match (self.api_key.is_empty(), self.api_secret.is_empty()) {
            (false, true) => {
                return Err(ConfigError::invalid(
                    "auth.api_secret",
                    "must be set when auth.api_key is set",
                ));
            }
            (true, false) => {
                return Err(ConfigError::invalid(
                    "auth.api_key",
                    "must be set when auth.api_secret is set",
                ));
            }
            _ => {}
        }
        if !self.api_secret.is_empty() && self.api_secret.len() < MIN_API_SECRET_BYTES {
            return Err(ConfigError::invalid(
                "auth.api_secret",
                format!("must be at least {MIN_API_SECRET_BYTES} bytes long"),
            ));
        }
        if self.token_ttl_secs < 60 {
            return Err(ConfigError::invalid(
                "auth.token_ttl_secs",
                "must be at least 60",
            ));
        }
        if !(10..=86_400).contains(&self.access_token_ttl_secs) {
            return Err(ConfigError::invalid(
                "auth.access_token_ttl_secs",
                "must be between 10 and 86400",
            ));
        }
        if self.refresh_token_ttl_secs < self.access_token_ttl_secs
            || self.refresh_token_ttl_secs > 366 * 86_400
        {
            return Err(ConfigError::invalid(
                "auth.refresh_token_ttl_secs",
                "must be at least auth.access_token_ttl_secs and at most 31622400 (366 days)",
            ));
        }
        if !self.admins.is_empty() {
            return Err(ConfigError::invalid(
                "auth.admins",
                "was removed: grant admin rights with `vela admin grant USERNAME` (README, \"Administration\")",
            ));
        }
        Ok(())
    }
}
