//! Several nodes of one cluster (issue 18): `vela` processes on loopback
//! ports sharing a throwaway Redis and one store, driven over their HTTP
//! and WebSocket APIs as clients would. One binary; each module a concern.

#[path = "../browser/mod.rs"]
mod browser;
#[path = "../api/common/mod.rs"]
mod common;
mod nodes;

mod accounts;
mod bench;
mod browser_rooms;
mod calls;
mod presence;
mod pushes;
mod rooms;
mod spread;
