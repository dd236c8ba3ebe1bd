//! The services: what the transports use and the server wires together.
//! Each owns its state (the store, a task, a registry) and answers with its
//! own error type; none knows of HTTP or WebSockets.

pub mod auth;
pub mod calls;
pub mod cluster;
pub mod devices;
pub mod hub;
pub mod lease;
pub mod metrics;
pub mod node_registry;
pub mod password;
pub mod presence;
pub mod push;
pub mod rate_limit;
pub mod room_directory;
pub mod shared_window;
pub mod singleton;
pub mod store;
pub mod token;
pub mod webhook;
