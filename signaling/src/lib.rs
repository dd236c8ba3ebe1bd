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
pub mod hub;
pub mod listener;
pub mod metrics;
pub mod password;
mod protocol;
pub mod rate_limit;
mod server;
mod session;
pub mod store;
pub mod token;
pub mod webhook;
mod whip;

pub use api_error::ApiError;
pub use domain::{account, ids};
pub use server::{RunningServer, StartError, spawn};
