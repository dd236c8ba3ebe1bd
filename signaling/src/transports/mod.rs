//! The transports: how clients reach the services. The HTTP API, the room
//! socket (`/ws`, docs/protocol.md), the device socket (`/api/v1/ws`) and
//! WHIP/WHEP, each a thin layer that parses, checks access, calls services
//! and answers.

pub mod auth;
pub mod device_socket;
pub mod error;
pub mod http;
pub mod listener;
pub mod resume;
pub mod room_socket;
pub mod state;
pub mod whip;
pub mod ws;
