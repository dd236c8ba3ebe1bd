//! The transports: how clients reach the services. The HTTP API, the room
//! socket (`/ws`, docs/protocol.md), the device socket (`/api/v1/ws`) and
//! WHIP/WHEP, each a thin layer that parses, checks access, calls services
//! and answers.
//!
//! Names: a **room session** is a participant's room socket (resumable, see
//! `resume`); a **device** is a signed-in terminal (its login: signing out
//! revokes the device); a **WHIP/WHEP session** (`WhipSession`) is a
//! participant joined over WHIP or WHEP, addressed by its Location; the
//! **socket tasks** (`AppState::socket_tasks`) are the tasks of live sockets
//! that shutdown waits for.

pub mod auth;
pub(crate) mod cluster;
pub mod device_socket;
pub mod error;
pub mod http;
pub mod listener;
pub(crate) mod livekit_rtc;
pub mod resume;
pub mod room_socket;
pub mod state;
pub(crate) mod twirp;
pub mod whip;
pub mod ws;
