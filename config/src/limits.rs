//! `[limits]`: sizes and counts that protect the server.

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Smallest allowed `limits.max_message_bytes`.
const MIN_MESSAGE_BYTES: usize = 1024;
/// Largest allowed `limits.max_message_bytes` (16 MiB).
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Resource limits (`[limits]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest WebSocket message or HTTP body (SDP or JSON) accepted, in bytes.
    pub max_message_bytes: usize,
    /// Most participants in one room; 0 = unlimited.
    pub max_participants_per_room: u32,
    /// Most tracks (sending audio and video m-lines) one participant may
    /// offer; an offer with more is refused. 0 = unlimited.
    pub max_tracks_per_participant: u32,
    /// Failed logins allowed per account in any minute; more get 429.
    pub login_attempts_per_minute: u32,
    /// Failed logins allowed per client address in any minute; more get 429.
    pub login_attempts_per_minute_per_address: u32,
    /// Sign-ups allowed per client address in any hour (each hashes a
    /// password, the costliest request); more get 429.
    pub signups_per_hour_per_address: u32,
    /// Password hashes (argon2id, 19 MiB and tens of milliseconds each) run
    /// at once; as many more wait, and further logins, sign-ups and password
    /// changes get 503 with `Retry-After`. 0: two per CPU core.
    pub password_hashes_at_once: u32,
    /// Devices one account may have signed in; a login beyond it signs out
    /// the least recently active one. 0 = unlimited.
    pub max_devices_per_account: u32,
    /// Data messages one participant may send per second (a burst of as
    /// many is allowed); more are refused with an `error`. 0 = unlimited.
    pub data_messages_per_second: u32,
    /// Data message bytes (decoded payloads) one participant may send per
    /// second, likewise. 0 = unlimited.
    pub data_bytes_per_second: u32,
    /// Messages one WebSocket (room session or device socket) may send per
    /// second, a second's worth as burst; more are refused unread with an
    /// `error` 429. 0 = unlimited.
    pub messages_per_second: u32,
    /// Messages the server may hold for one participant's socket (room
    /// events, data, offers) while it is slow to read them; a participant
    /// that falls this far behind is disconnected (close code 1013).
    pub max_queued_messages: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            max_participants_per_room: 0,
            max_tracks_per_participant: 16,
            login_attempts_per_minute: 10,
            login_attempts_per_minute_per_address: 30,
            signups_per_hour_per_address: 20,
            password_hashes_at_once: 0,
            max_devices_per_account: 100,
            data_messages_per_second: 100,
            data_bytes_per_second: 1024 * 1024,
            messages_per_second: 100,
            max_queued_messages: 1024,
        }
    }
}

impl LimitsConfig {
    /// How many password hashes may run at once: the setting, or two per
    /// core of `cores` when it is 0.
    pub fn password_hashes(&self, cores: usize) -> usize {
        match self.password_hashes_at_once {
            0 => cores.max(1) * 2,
            n => n as usize,
        }
    }

    /// Checks the rules that serde cannot express.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&self.max_message_bytes) {
            return Err(ConfigError::invalid(
                "limits.max_message_bytes",
                format!("must be between {MIN_MESSAGE_BYTES} and {MAX_MESSAGE_BYTES} (16 MiB)"),
            ));
        }
        for (key, value) in [
            (
                "limits.login_attempts_per_minute",
                self.login_attempts_per_minute,
            ),
            (
                "limits.login_attempts_per_minute_per_address",
                self.login_attempts_per_minute_per_address,
            ),
            (
                "limits.signups_per_hour_per_address",
                self.signups_per_hour_per_address,
            ),
        ] {
            if !(1..=10_000).contains(&value) {
                return Err(ConfigError::invalid(key, "must be between 1 and 10000"));
            }
        }
        if self.password_hashes_at_once > 1024 {
            return Err(ConfigError::invalid(
                "limits.password_hashes_at_once",
                "must be at most 1024",
            ));
        }
        if !(16..=1_000_000).contains(&self.max_queued_messages) {
            return Err(ConfigError::invalid(
                "limits.max_queued_messages",
                "must be between 16 and 1000000",
            ));
        }
        Ok(())
    }
}
