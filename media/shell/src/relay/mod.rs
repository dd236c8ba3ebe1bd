//! Relaying a room between cores: the QUIC transport between nodes
//! ([`quic`]) and its authentication ([`auth`]).

pub mod auth;
pub mod quic;

pub use auth::{AuthError, RelayAuth};
pub use quic::{
    LinkStats, NodeName, RelayConfig, RelayEndpoint, RelayError, RelayEvent, RelayStats, SendError,
};
