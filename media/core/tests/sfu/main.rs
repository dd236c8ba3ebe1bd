//! The SFU core driven by str0m clients in memory, without sockets: one test
//! binary, so the suite links once instead of once per file.

mod common;

mod active_speaker;
mod connect_timeout;
mod handover;
mod hostile_media;
mod ice_tcp;
mod identity;
mod loss_repair;
mod pacing;
mod peer_panic;
mod quality;
mod receiver;
mod reconnect;
mod relay;
mod room_service;
mod simulcast;
mod three_party;
mod track_limit;
