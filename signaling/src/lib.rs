//! Signaling for the vela SFU: HTTP + WebSocket sessions, WHIP/WHEP and
//! access tokens, in front of the media driver; accounts, devices, presence
//! and the network address book (docs/api.md).

pub mod domain;
pub mod services;

mod api;
mod api_error;
mod auth;
mod client_addr;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
pub mod listener;
mod protocol;
mod server;
mod session;
mod whip;

pub use api_error::ApiError;
pub use domain::{account, ids};
pub use services::{password, store, token, webhook};
pub use server::{RunningServer, StartError, spawn};
