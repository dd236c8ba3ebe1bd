//! The domain: accounts, devices, contacts and links, the presence rules,
//! the call state machine and the ICE servers handed to clients. Plain types and pure functions: no I/O, no
//! tasks, nothing of HTTP; time is an input. Everything above builds on it.

pub mod account;
pub mod call;
pub mod contact;
pub mod device;
pub mod ice;
pub mod ids;
pub mod link;
pub mod livekit;
pub mod presence;

/// An input that breaks a domain rule: the field at fault (as the client
/// named it) and why. The transports answer it as 400 with `"field"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// The input field, e.g. `phones[1].value`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl Invalid {
    /// `field` is wrong: `message`.
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Invalid {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}
