//! The media shell with a room spread over shards: real UDP sockets on
//! loopback, str0m clients, the drivers' in-process relay links; and ICE
//! over TCP (`tcp`). One test binary (modules), so the suite links once.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod client;
mod nodes;
mod shards;
mod tcp;
