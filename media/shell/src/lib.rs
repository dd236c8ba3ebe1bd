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
use vela_media_core::{Sfu, SfuConfig};

/// Starts the driver task on bound sockets; the config's candidates should be
/// the sockets' advertised addresses.
pub fn spawn(sockets: MediaSockets, config: SfuConfig) -> (MediaHandle, JoinHandle<()>) {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let sfu = Sfu::new(config, Instant::now());
    let task = tokio::spawn(driver::run(sfu, sockets, rx));
    (MediaHandle::new(tx), task)
}
