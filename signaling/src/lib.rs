//! Signaling for the vela SFU: HTTP + WebSocket sessions, WHIP/WHEP and
//! access tokens, in front of the media driver.

mod api_error;
mod metrics;
mod protocol;
mod server;
mod session;
pub mod token;
mod whip;

pub use api_error::ApiError;
pub use server::{RunningServer, StartError, spawn};
