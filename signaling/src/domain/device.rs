//! Devices: each login names one (a phone, a desktop, a browser tab).

use serde::{Deserialize, Serialize};

use crate::domain::Invalid;
use crate::domain::ids::{AccountId, DeviceId};

/// What sort of terminal a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// A phone app.
    Phone,
    /// A desktop app.
    Desktop,
    /// A web browser.
    Web,
    /// Anything else (a bot, a room system).
    Other,
}

impl DeviceKind {
    /// The kind as stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Phone => "phone",
            DeviceKind::Desktop => "desktop",
            DeviceKind::Web => "web",
            DeviceKind::Other => "other",
        }
    }

    /// Parses a stored kind (unknown values read as `other`).
    pub fn parse(s: &str) -> DeviceKind {
        match s {
            "phone" => DeviceKind::Phone,
            "desktop" => DeviceKind::Desktop,
            "web" => DeviceKind::Web,
            _ => DeviceKind::Other,
        }
    }
}

/// A device of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    /// The device's id.
    pub id: DeviceId,
    /// The account it belongs to.
    pub account_id: AccountId,
    /// Phone, desktop, web or other.
    pub kind: DeviceKind,
    /// A label the user recognizes ("Pixel 8", "Firefox on Linux").
    pub label: String,
    /// When it logged in (ms since the epoch).
    pub created_at: i64,
    /// When it last logged in or refreshed its token (ms since the epoch).
    pub last_active_at: i64,
    /// When it was revoked or logged out, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
}

/// Checks a device label: 1 to 64 characters after trimming, no control characters.
pub fn check_label(field: &str, raw: &str) -> Result<String, Invalid> {
    let label = raw.trim();
    let n = label.chars().count();
    if n == 0 || n > 64 || label.chars().any(char::is_control) {
        return Err(Invalid::new(
            field,
            "must be 1 to 64 characters without control characters",
        ));
    }
    Ok(label.to_owned())
}
