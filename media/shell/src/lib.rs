//! Tokio shell of the vela SFU.
//!
//! A driver task per shard owns the shard's UDP sockets (one per advertised
//! address, all on the shard's port) and its [`vela_media_core::Sfu`];
//! everything else talks to the drivers through a [`MediaHandle`], which
//! finds a room's or participant's shard. A driver feeds its core datagrams,
//! commands and timeouts, and carries out what the core asks: send
//! datagrams, deliver signals to participants. One shard is one core's work:
//! shards share nothing on the media path.

mod driver;
mod handle;
mod placement;
pub mod relay;
mod socket;
mod supervisor;
mod udp;

pub use handle::{MediaError, MediaHandle, PermissionsUpdate, SignalReceiver};
pub use socket::{BindError, MediaSockets, local_addresses};
pub use supervisor::DriverFailed;
pub use vela_media_core as core;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::task::JoinHandle;
use vela_media_core::{RoomEvent, Sfu, SfuConfig};

/// Ends when every driver has stopped as asked, or with an error as soon as
/// one has failed.
pub type MediaTask = JoinHandle<Result<(), DriverFailed>>;

/// Starts the driver task on bound sockets; the config's candidates should be
/// the sockets' advertised addresses.
pub fn spawn(sockets: MediaSockets, config: SfuConfig) -> (MediaHandle, MediaTask) {
    spawn_shards(vec![(sockets, config)], None)
}

/// Like [`spawn`], and the core's room events go to `events`; when that
/// queue is full, events are dropped rather than delay media.
pub fn spawn_with_events(
    sockets: MediaSockets,
    config: SfuConfig,
    events: tokio::sync::mpsc::Sender<RoomEvent>,
) -> (MediaHandle, MediaTask) {
    spawn_shards(vec![(sockets, config)], Some(events))
}

/// Starts one driver task per shard, each with its own sockets (its own
/// port) and core; a room lives on one shard, the least loaded when it
/// opened ([`MediaHandle::shard_of_room`]).
/// Shard `k` of `n` must number its ids with
/// [`SfuConfig::set_id_space`]`(k + 1, n)`, which is how the handle finds a
/// participant's shard. The tasks run in parallel on the runtime's threads.
/// The returned task ends when every driver has stopped, or as soon as one
/// fails (panics), with the error.
pub fn spawn_shards(
    shards: Vec<(MediaSockets, SfuConfig)>,
    events: Option<tokio::sync::mpsc::Sender<RoomEvent>>,
) -> (MediaHandle, MediaTask) {
    let mut txs = Vec::with_capacity(shards.len());
    let mut tasks = Vec::with_capacity(shards.len());
    let placement =
        (shards.len() > 1).then(|| Arc::new(Mutex::new(placement::Placement::new(shards.len()))));
    for (k, (sockets, config)) in shards.into_iter().enumerate() {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let sfu = Sfu::new(config, Instant::now());
        let place = placement.clone().map(|p| (k, p));
        tasks.push(tokio::spawn(driver::run(
            sfu,
            sockets,
            rx,
            events.clone(),
            place,
        )));
        txs.push(tx);
    }
    let all = tokio::spawn(supervisor::supervise(tasks));
    (MediaHandle::new(txs, placement), all)
}
