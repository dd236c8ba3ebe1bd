//! Tokio shell of the vela SFU.
//!
//! One driver task owns the UDP sockets (one per advertised address, all on
//! the same port) and the [`vela_media_core::Sfu`]; everything else talks to
//! it through a [`MediaHandle`]. The driver feeds the core datagrams, commands
//! and timeouts, and carries out what the core asks: send datagrams, deliver
//! signals to participants.

mod driver;
mod handle;
mod socket;
mod udp;

pub use handle::{MediaError, MediaHandle, SignalReceiver};
pub use socket::{BindError, MediaSockets, local_addresses};
pub use vela_media_core as core;

use std::time::Instant;

use tokio::task::JoinHandle;
use vela_media_core::{RoomEvent, Sfu, SfuConfig};

/// Starts the driver task on bound sockets; the config's candidates should be
/// the sockets' advertised addresses.
pub fn spawn(sockets: MediaSockets, config: SfuConfig) -> (MediaHandle, JoinHandle<()>) {
    start(sockets, config, None)
}

/// Like [`spawn`], and the core's room events go to `events`; when that
/// queue is full, events are dropped rather than delay media.
pub fn spawn_with_events(
    sockets: MediaSockets,
    config: SfuConfig,
    events: tokio::sync::mpsc::Sender<RoomEvent>,
) -> (MediaHandle, JoinHandle<()>) {
    start(sockets, config, Some(events))
}

fn start(
    sockets: MediaSockets,
    config: SfuConfig,
    events: Option<tokio::sync::mpsc::Sender<RoomEvent>>,
) -> (MediaHandle, JoinHandle<()>) {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let sfu = Sfu::new(config, Instant::now());
    let task = tokio::spawn(driver::run(sfu, sockets, rx, events));
    (MediaHandle::new(tx), task)
}
