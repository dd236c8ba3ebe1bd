//! The services: what the transports use and the server wires together.
//! Each owns its state (the store, a task, a registry) and answers with its
//! own error type; none knows of HTTP or WebSockets.

pub mod calls;
pub mod presence;
