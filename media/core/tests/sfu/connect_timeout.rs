//! A peer that never connects is removed after the connect timeout, and the
//! others are told; one that connected stays.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::World;

#[test]
fn a_peer_that_never_connects_is_removed_after_the_timeout() {
    let mut w = World::with_config(|c| c.set_connect_timeout(Duration::from_secs(5)));
    let a = w.join("room1", "alice", true);
    assert!(w.run_until(Duration::from_secs(3), |w| w.clients[a].connected));
    let ghost = w.join("room1", "ghost", true);
    // The ghost's client never sends a packet.
    w.clients[ghost].rtc.disconnect();
    let ghost_id = w.clients[ghost].id;
    w.run_for(Duration::from_secs(4));
    assert_eq!(w.sfu.stats().participants, 2, "still within the timeout");
    w.run_for(Duration::from_secs(2));
    assert_eq!(w.sfu.stats().participants, 1);
    assert!(
        w.clients[a]
            .signals
            .contains(&format!("participant_left:{ghost_id}")),
        "{:?}",
        w.clients[a].signals
    );
    assert_eq!(
        w.clients[ghost].left,
        Some(vela_media_core::LeaveReason::ConnectionLost)
    );
    // Alice, connected all along, is still there much later.
    w.run_for(Duration::from_secs(10));
    assert_eq!(w.sfu.stats().participants, 1);
}
