//! Signaling for the vela SFU: HTTP + WebSocket sessions, WHIP/WHEP and
//! access tokens, in front of the media driver; accounts, devices, presence
//! and the network address book (docs/api.md).

pub mod domain;
pub mod services;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
mod server;
mod transports;

pub use domain::{account, ids};
pub use server::{RunningServer, StartError, spawn};
pub use services::{password, store, token, webhook};
pub use transports::error::ApiError;
pub use transports::listener;
