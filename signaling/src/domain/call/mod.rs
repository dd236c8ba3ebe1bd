//! Calls between accounts (docs/api.md, "Calls"): ring every device of the
//! callee, the first device to accept joins the call room, hand a live call
//! to another device, keep a history per account.
//!
//! [`state`] is the sans-IO state machine (time is an input); [`service`] is
//! the one task that owns it, so every call operation is serialized and
//! races (two accepts, a cancel against an accept) resolve in arrival order.

pub mod state;

use serde::{Deserialize, Serialize};

pub use state::{Call, CallError, Calls, Event, Notice, OpenCall, Output, Person, Record};

/// The prefix of every call room's name: `call-<call id>`.
pub const ROOM_PREFIX: &str = "call-";

/// Whether `room` is the room of a call (only its members may join it).
pub fn is_call_room(room: &str) -> bool {
    room.strip_prefix(ROOM_PREFIX)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// How a call ended for one account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Someone answered and the account was in the call.
    Answered,
    /// Nobody answered in time (the callee's side: the account did not).
    Missed,
    /// The callee declined.
    Declined,
    /// The callee was already in a call.
    Busy,
    /// The caller hung up before anyone answered.
    Cancelled,
    /// Do-not-disturb kept the call from ringing (the callee's side).
    Filtered,
    /// The callee did not take calls from the caller (the caller's side of `filtered`).
    Unavailable,
}

impl Outcome {
    /// As stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Missed => "missed",
            Outcome::Declined => "declined",
            Outcome::Busy => "busy",
            Outcome::Cancelled => "cancelled",
            Outcome::Filtered => "filtered",
            Outcome::Unavailable => "unavailable",
        }
    }

    /// Parses a stored outcome.
    pub fn parse(s: &str) -> Option<Outcome> {
        Some(match s {
            "answered" => Outcome::Answered,
            "missed" => Outcome::Missed,
            "declined" => Outcome::Declined,
            "busy" => Outcome::Busy,
            "cancelled" => Outcome::Cancelled,
            "filtered" => Outcome::Filtered,
            "unavailable" => Outcome::Unavailable,
            _ => return None,
        })
    }
}

/// Whether the account placed the call or was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The account called.
    Outgoing,
    /// The account was called (or added to a running call).
    Incoming,
}

/// Whom a do-not-disturb account still lets ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Allow {
    /// Nobody: every call is filtered.
    #[default]
    Nobody,
    /// Mutual contacts and people in the address book.
    Contacts,
    /// Address book entries marked favorite.
    Favorites,
}

impl Allow {
    /// As stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Allow::Nobody => "nobody",
            Allow::Contacts => "contacts",
            Allow::Favorites => "favorites",
        }
    }

    /// Parses a stored value.
    pub fn parse(s: &str) -> Allow {
        match s {
            "contacts" => Allow::Contacts,
            "favorites" => Allow::Favorites,
            _ => Allow::Nobody,
        }
    }
}

/// An account's call settings: do-not-disturb and who may still ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CallSettings {
    /// Do not disturb: calls from anyone not allowed are filtered.
    pub dnd: bool,
    /// Who still rings while `dnd` is on.
    pub allow: Allow,
}
