//! What the SFU targets share: a core configured as the server configures
//! it, and the shell's part of the run-loop contract.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use vela_media_core::{ConnectionId, Output, Sfu, SfuConfig, Signal};

/// The server's media address in every target.
pub const SERVER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
    7882,
);

/// A core with the default configuration's settings (as `server.rs` makes it).
pub fn sfu(now: Instant) -> Sfu {
    let c = vela_config::Config::default();
    let config = SfuConfig::new(vec![SERVER])
        .set_connect_timeout(Duration::from_millis(c.media.connect_timeout_ms))
        .set_keyframe_interval(Duration::from_millis(c.media.keyframe_request_interval_ms))
        .set_max_participants_per_room(c.limits.max_participants_per_room)
        .set_max_tracks_per_participant(c.limits.max_tracks_per_participant)
        .set_reconnect_timeout(Duration::from_millis(c.media.reconnect_timeout_ms));
    Sfu::new(config, now)
}

/// Drains the core's outputs as the shell does, until it waits for time;
/// the signals, in order (datagrams go nowhere, events are dropped).
pub fn drain(sfu: &mut Sfu) -> Vec<(ConnectionId, Signal)> {
    let mut signals = Vec::new();
    // Bounded: a core that never settles is a finding too.
    for _ in 0..100_000 {
        match sfu.poll_output() {
            Output::Timeout(_) => return signals,
            Output::Signal(p, s) => signals.push((p, s)),
            _ => {}
        }
    }
    panic!("poll_output never returned a timeout");
}

/// Shuts the core down as the server does at exit; every participant must
/// be gone then.
pub fn shut_down(sfu: &mut Sfu, now: Instant) {
    sfu.handle_shutdown(now);
    drain(sfu);
    assert_eq!(
        sfu.stats().participants,
        0,
        "participants left after shutdown"
    );
}
