//! The service over its HTTP and WebSocket API, with synthetic str0m clients:
//! one test binary, so the suite links once instead of once per file (the
//! browser and network-namespace tests keep their own binaries). The
//! servers' store is SQLite (in memory, or a file); `api_postgres` runs
//! these modules again on PostgreSQL (`common::postgres()`).

mod calls;
mod common;

mod accounts;
mod admins;
mod authorization;
mod bad_input;
mod cli;
mod cluster_limits;
mod connections;
mod contact_requests;
mod contacts;
mod devices;
mod durability;
mod ice_servers;
mod livekit_rtc;
mod moderators;
mod openapi;
mod password_storms;
mod peer_panic;
mod presence;
mod room_service;
mod rooms_with_accounts;
mod safe_defaults;
mod session_resume;
mod shards;
mod slow_readers;
mod sqlite_file;
mod track_sources;
mod webhooks;
mod whip_whep;
mod ws_protocol;
