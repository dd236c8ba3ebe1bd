//! A participant whose network drops for a few seconds comes back as the same
//! participant, and nobody sees it leave; one that stays away is removed.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::World;
use str0m::media::MediaKind;

#[test]
fn a_three_second_outage_is_survived_without_a_leave() {
    let mut w = World::new();
    let a = w.join("net", "alice", true);
    let b = w.join("net", "bob", true);
    let alice = w.clients[a].id;
    assert!(w.run_until(Duration::from_secs(5), |w| {
        w.clients[b].frames_from(alice, MediaKind::Video) > 10
    }));
    w.clients[a].offline = true;
    w.run_for(Duration::from_secs(3));
    let before = w.clients[b].frames_from(alice, MediaKind::Video);
    w.clients[a].offline = false;
    let back = w.now;
    assert!(
        w.run_until(Duration::from_secs(2), |w| {
            w.clients[b].frames_from(alice, MediaKind::Video) > before + 5
        }),
        "media resumes within 2 s"
    );
    eprintln!("media back after {:?}", w.now - back);
    w.run_for(Duration::from_secs(20));
    assert!(
        !w.clients[b]
            .signals
            .iter()
            .any(|s| s.starts_with("participant_left"))
    );
    assert_eq!(w.clients[a].left, None);
    assert_eq!(w.sfu.stats().participants, 2);
}

#[test]
fn a_participant_that_stays_away_is_removed_after_the_reconnect_timeout() {
    let mut w = World::with_config(|c| c.set_reconnect_timeout(Duration::from_secs(5)));
    let a = w.join("net", "alice", true);
    let b = w.join("net", "bob", true);
    let alice = w.clients[a].id;
    assert!(w.run_until(Duration::from_secs(5), |w| {
        w.clients.iter().all(|c| c.connected)
    }));
    w.clients[a].offline = true;
    let gone = w.now;
    assert!(w.run_until(Duration::from_secs(30), |w| {
        w.clients[b]
            .signals
            .contains(&format!("participant_left:{alice}"))
    }));
    let after = w.now - gone;
    eprintln!("removed after {after:?}");
    assert!(
        after >= Duration::from_secs(5),
        "kept through the timeout: {after:?}"
    );
    assert_eq!(w.sfu.stats().participants, 1);
}

#[test]
fn a_network_change_with_ice_restart_keeps_the_participant() {
    let mut w = World::new();
    let a = w.join("net", "alice", true);
    let b = w.join("net", "bob", true);
    let (alice, bob) = (w.clients[a].id, w.clients[b].id);
    assert!(w.run_until(Duration::from_secs(5), |w| {
        w.clients[b].frames_from(alice, MediaKind::Video) > 10
            && w.clients[a].frames_from(bob, MediaKind::Video) > 10
    }));
    w.change_network(a);
    let (sent, got) = (
        w.clients[b].frames_from(alice, MediaKind::Video),
        w.clients[a].frames_from(bob, MediaKind::Video),
    );
    assert!(
        w.run_until(Duration::from_secs(3), |w| {
            w.clients[b].frames_from(alice, MediaKind::Video) > sent + 10
                && w.clients[a].frames_from(bob, MediaKind::Video) > got + 10
        }),
        "media flows both ways from the new address"
    );
    assert!(
        !w.clients[b]
            .signals
            .iter()
            .any(|s| s.starts_with("participant_left"))
    );
    assert_eq!(w.sfu.stats().participants, 2);
}
