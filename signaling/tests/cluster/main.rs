//! Several nodes of one cluster (issue 18): `vela` processes on loopback
//! ports sharing a throwaway Redis and one store, driven over their HTTP
//! and WebSocket APIs as clients would. One binary; each module a concern.

#[path = "../browser/mod.rs"]
mod browser;
#[path = "../api/common/mod.rs"]
mod common;
#[path = "../netns/mod.rs"]
mod netns;
mod nodes;
#[path = "../quality/mod.rs"]
mod quality;

mod accounts;
mod bench;
mod browser_rooms;
mod browser_spread;
mod calls;
mod presence;
mod pushes;
mod relay_loss;
mod rooms;
mod spread;
