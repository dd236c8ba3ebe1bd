//! Contact requests and mutual contacts: who may see whose presence.
//!
//! Rule: two accounts see each other's presence exactly when they are mutual
//! contacts, i.e. one sent the other a contact request and the other accepted
//! it (or both sent one). Either may remove the link at any time; after that
//! neither sees the other's presence. An address book entry that links an
//! account grants nothing by itself.

use serde::Serialize;

use crate::domain::account::AccountSummary;
use crate::domain::ids::RequestId;

/// A pending contact request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContactRequest {
    /// The request's id.
    pub id: RequestId,
    /// Who sent it.
    pub from: AccountSummary,
    /// To whom.
    pub to: AccountSummary,
    /// A short note from the sender.
    pub message: String,
    /// When it was sent (ms since the epoch).
    pub created_at: i64,
}

/// What sending a contact request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOutcome {
    /// The request waits for the other side.
    Pending(ContactRequest),
    /// The other side had already asked: the two are now mutual contacts.
    Mutual,
}
