//! Signaling for the vela SFU: HTTP + WebSocket sessions, WHIP/WHEP and
//! access tokens, in front of the media driver; accounts, devices, presence
//! and the network address book (docs/api.md).

pub mod account;
mod api;
mod api_error;
mod auth;
pub mod call;
mod client_addr;
pub mod contact;
pub mod device;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
pub mod hub;
pub mod ids;
pub mod link;
pub mod listener;
pub mod metrics;
pub mod password;
pub mod presence;
mod protocol;
pub mod rate_limit;
mod server;
mod session;
pub mod store;
pub mod token;
pub mod webhook;
mod whip;

pub use api_error::ApiError;
pub use server::{RunningServer, StartError, spawn};
