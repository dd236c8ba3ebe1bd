//! What the server tells a signed-in device on its socket (`/api/v1/ws`):
//! one typed message per documented `type` (docs/api.md, the device
//! socket's and the calls' push tables), serialised here and nowhere else.
//!
//! The wire is the contract: each variant's fields are named, typed and
//! (where `null` or absent matters) annotated as documented; the tests
//! below hold every variant to the tables in docs/api.md.

use std::sync::Arc;

use serde::Serialize;

use crate::domain::account::AccountSummary;
use crate::domain::call::CallSettings;
use crate::domain::call::state::Event as CallEvent;
use crate::domain::contact::Contact;
use crate::domain::ids::{AccountId, ContactId, DeviceId, RequestId};
use crate::domain::link::ContactRequest;
use crate::domain::presence::Presence;
use crate::services::store::CallRecord;

/// A message for a device socket: the hub's pushes, and the socket's own
/// answers (`ready`, `pong`, `error`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Push {
    /// Authenticated: the snapshot to start from.
    Ready(Box<Ready>),
    /// The answer to a `heartbeat`.
    Pong,
    /// The last message was refused; the socket stays open.
    Error {
        /// An HTTP status code: why.
        code: u16,
        /// What was wrong.
        message: String,
        /// The field at fault, if one was.
        #[serde(skip_serializing_if = "Option::is_none")]
        field: Option<String>,
    },
    /// The account's own or a mutual contact's presence changed.
    Presence(Presence),
    /// An address book entry was created or updated.
    ContactChanged {
        /// The account's address book revision after the change.
        revision: i64,
        /// The entry.
        contact: Box<Contact>,
    },
    /// An address book entry was deleted.
    ContactDeleted {
        /// The account's address book revision after the deletion.
        revision: i64,
        /// The entry.
        id: ContactId,
        /// The tombstone's version.
        version: i64,
    },
    /// A contact request was sent to (or by) this account.
    ContactRequest {
        /// The request.
        request: Box<ContactRequest>,
    },
    /// A contact request was declined or withdrawn.
    ContactRequestRemoved {
        /// The request.
        id: RequestId,
    },
    /// A new mutual contact.
    MutualContactAdded {
        /// Who, with their presence.
        contact: Box<MutualContact>,
    },
    /// A mutual contact link ended.
    MutualContactRemoved {
        /// The other account.
        account_id: AccountId,
    },
    /// This device was signed out; the socket closes (4002).
    SessionRevoked {
        /// The device.
        device_id: DeviceId,
        /// Why.
        reason: SignOutReason,
    },
    /// The account was disabled; the socket closes (4003).
    AccountDisabled,
    /// A history entry of this account was stored.
    CallHistory {
        /// The entry.
        record: Box<CallRecord>,
    },
    /// The account's count of unseen missed calls changed.
    MissedCalls {
        /// Unseen missed calls.
        count: i64,
    },
    /// The account's call settings changed.
    CallSettings(CallSettings),
    /// A call changed (`call_ringing`, `call_ended`, ...): the call state
    /// machine's event, which carries its own `type`.
    #[serde(untagged)]
    Call(Box<CallEvent>),
}

/// The `ready` message's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ready {
    /// The signed-in account.
    pub account_id: AccountId,
    /// This device.
    pub device_id: DeviceId,
    /// How often to send `heartbeat`.
    pub heartbeat_interval_ms: u64,
    /// The account's own presence.
    pub presence: Presence,
    /// The mutual contacts with their presence.
    pub contacts: Vec<MutualContact>,
    /// The address book's revision.
    pub contacts_revision: i64,
}

/// Why a device was signed out (`session_revoked`'s `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignOutReason {
    /// Revoked from the device list.
    Revoked,
    /// The device logged out.
    LoggedOut,
    /// The password was changed from another device.
    PasswordChanged,
    /// An admin reset the password.
    PasswordReset,
    /// A refresh token was used twice: it may have been stolen.
    RefreshTokenReused,
    /// The device's sign-in expired.
    SessionExpired,
    /// Signing in one device more than allowed signed out the oldest.
    DeviceLimit,
}

impl SignOutReason {
    /// The wire name, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::LoggedOut => "logged_out",
            Self::PasswordChanged => "password_changed",
            Self::PasswordReset => "password_reset",
            Self::RefreshTokenReused => "refresh_token_reused",
            Self::SessionExpired => "session_expired",
            Self::DeviceLimit => "device_limit",
        }
    }
}

impl std::fmt::Display for SignOutReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mutual contact with its presence: `{id, username, display_name, presence}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MutualContact {
    /// Who.
    #[serde(flatten)]
    pub account: AccountSummary,
    /// Their presence.
    pub presence: Presence,
}

impl Push {
    /// The text frame, shared by every connection it goes to. `None` (and
    /// logged) if it cannot be serialised, which the types here rule out.
    pub fn encode(&self) -> Option<Arc<str>> {
        self.text().map(Arc::from)
    }

    /// The text frame for one connection (no shared copy needed).
    pub fn text(&self) -> Option<String> {
        serde_json::to_string(self)
            .inspect_err(|e| tracing::error!(error = %e, "cannot serialise a push"))
            .ok()
    }
}

#[cfg(test)]
mod tests;
