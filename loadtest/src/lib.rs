//! `vela-loadtest`: synthetic WebRTC participants for the vela SFU.
//!
//! Participants join over the protocols real clients use (WebSocket
//! sessions, WHIP, WHEP) with str0m as the WebRTC stack, publish real Opus
//! audio and simulcast-shaped VP8, and measure what they receive: latency
//! from send timestamps carried in a 16-byte trailer at the end of every
//! frame ([`media::Trailer`]), loss, duplicates, reordering and jitter per
//! route, join times. The server is watched from outside (/proc, /metrics),
//! and the same packet pattern is sent through a raw UDP relay
//! ([`relay`]) in the same run to give a floor for CPU per packet.

pub mod attack;
pub mod measure;
pub mod media;
pub mod participant;
pub mod relay;
pub mod report;
pub mod run;
pub mod scenario;
pub mod server_probe;
pub mod signal;
pub mod soak;
pub mod sweep;
pub mod tcp;

pub use run::{NodeTarget, RelayMode, RunConfig, RunError, Target, run};
pub use scenario::{Load, MediaMix, Scenario};
pub use tcp::MediaTransport;
