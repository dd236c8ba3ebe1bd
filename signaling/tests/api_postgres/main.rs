//! The API tests of `../api/` again, with every server's store on
//! PostgreSQL: a fresh database of the test process's throwaway server
//! (`vela_testkit`) per server, or per `StoreFile` for servers started
//! again on the same data. The same modules (`#[path]`), so a test written
//! once runs on both backends.
//!
//! Here only: `store_outage` (the database server goes away under a
//! running server). Left out: `sqlite_file` (the SQLite file's permissions: there is no
//! file). `durability`'s SQLite integrity check is skipped inside it; its
//! other checks (acknowledged writes survive a `kill -9`) run here too.
//! Tests that start the `vela` binary on `:memory:` (`cli`, `connections`,
//! `slow_readers`) are about the process, not the store, and run on SQLite
//! in both binaries.

#[path = "../api/calls/mod.rs"]
mod calls;
#[path = "../api/common/mod.rs"]
mod common;

#[path = "../api/accounts.rs"]
mod accounts;
#[path = "../api/admins.rs"]
mod admins;
#[path = "../api/authorization.rs"]
mod authorization;
#[path = "../api/bad_input.rs"]
mod bad_input;
#[path = "../api/cli.rs"]
mod cli;
#[path = "../api/connections.rs"]
mod connections;
#[path = "../api/contact_requests.rs"]
mod contact_requests;
#[path = "../api/contacts.rs"]
mod contacts;
#[path = "../api/devices.rs"]
mod devices;
#[path = "../api/durability.rs"]
mod durability;
#[path = "../api/moderators.rs"]
mod moderators;
#[path = "../api/openapi.rs"]
mod openapi;
#[path = "../api/password_storms.rs"]
mod password_storms;
#[path = "../api/peer_panic.rs"]
mod peer_panic;
#[path = "../api/presence.rs"]
mod presence;
#[path = "../api/room_service.rs"]
mod room_service;
#[path = "../api/rooms_with_accounts.rs"]
mod rooms_with_accounts;
#[path = "../api/safe_defaults.rs"]
mod safe_defaults;
#[path = "../api/session_resume.rs"]
mod session_resume;
#[path = "../api/shards.rs"]
mod shards;
#[path = "../api/slow_readers.rs"]
mod slow_readers;
#[path = "../api/store_outage.rs"]
mod store_outage;
#[path = "../api/webhooks.rs"]
mod webhooks;
#[path = "../api/whip_whep.rs"]
mod whip_whep;
#[path = "../api/ws_protocol.rs"]
mod ws_protocol;
