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

/// A subscriber whose media path is down while its connectivity checks
/// still arrive (a browser's checks over ICE-TCP during a UDP outage) is
/// restarted with a keyframe when its media comes back, not when a check
/// came in during the outage (that keyframe was lost with the rest, and
/// the browser's own request waits seconds).
#[test]
fn a_subscriber_back_after_its_checks_got_through_gets_a_keyframe() {
    let mut w = World::new();
    let a = w.join("net", "alice", true);
    let b = w.join("net", "bob", true);
    let alice = w.clients[a].id;
    assert!(w.run_until(Duration::from_secs(5), |w| {
        w.clients[b].frames_from(alice, MediaKind::Video) > 10
    }));
    w.clients[b].offline = true;
    w.clients[b].stun_gets_through = true;
    let asked = w.clients[a].keyframe_requests;
    w.run_for(Duration::from_secs(3));
    assert_eq!(
        w.clients[a].keyframe_requests, asked,
        "no keyframe while bob's media path is down"
    );
    w.clients[b].offline = false;
    w.clients[b].stun_gets_through = false;
    assert!(
        w.run_until(Duration::from_millis(300), |w| {
            w.clients[a].keyframe_requests > asked
        }),
        "alice is asked for a keyframe once bob's media is back"
    );
}

/// A publisher back from an outage is asked for a keyframe at once: what
/// its subscribers got last is seconds old, and any request made while it
/// was away (a subscriber's, here one just before it returns) was lost.
#[test]
fn a_publisher_back_from_an_outage_is_asked_for_a_keyframe_at_once() {
    let mut w = World::new();
    let a = w.join("net", "alice", true);
    let b = w.join("net", "bob", true);
    let alice = w.clients[a].id;
    assert!(w.run_until(Duration::from_secs(5), |w| {
        w.clients[b].frames_from(alice, MediaKind::Video) > 10
    }));
    w.clients[a].offline = true;
    w.clients[a].stun_gets_through = true;
    w.run_for(Duration::from_millis(2900));
    w.request_keyframe_of(b, alice);
    w.run_for(Duration::from_millis(100));
    let asked = w.clients[a].keyframe_requests;
    w.clients[a].offline = false;
    w.clients[a].stun_gets_through = false;
    assert!(
        w.run_until(Duration::from_millis(200), |w| {
            w.clients[a].keyframe_requests > asked
        }),
        "alice is asked for a keyframe as soon as she is back"
    );
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
