//! A panic inside one participant's WebRTC stack (a bug in str0m that a
//! client's input could trigger) closes that participant alone, as a lost
//! connection: the others are told it left, their media keeps flowing, the
//! room takes new participants, and the panic is counted. The test hook
//! (`Sfu::inject_panic`, feature `test-hooks`) makes the participant's next
//! call of one kind panic inside its `Rtc`.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::World;
use str0m::media::MediaKind;
use vela_media_core::{LeaveReason, RoomEvent, RtcCall, SignalError};

const ALICE: usize = 0;
const BOB: usize = 1;
const CAROL: usize = 2;

/// Alice, Bob and Carol in one room, each receiving the others' audio and video.
fn three_party() -> World {
    let mut w = World::new();
    w.join("room1", "alice", true);
    w.join("room1", "bob", true);
    w.join("room1", "carol", true);
    let flowing = w.run_until(Duration::from_secs(10), |w| {
        (0..3).all(|i| {
            (0..3).filter(|j| *j != i).all(|j| {
                let from = w.clients[j].id;
                w.clients[i].frames_from(from, MediaKind::Audio) >= 10
                    && w.clients[i].frames_from(from, MediaKind::Video) >= 5
            })
        })
    });
    assert!(flowing, "media flows between all three");
    assert_eq!(w.sfu.stats().peers_panicked, 0);
    w
}

fn frames(w: &World, to: usize, from: usize) -> u64 {
    let from = w.clients[from].id;
    w.clients[to].frames_from(from, MediaKind::Audio)
        + w.clients[to].frames_from(from, MediaKind::Video)
}

/// Carol's peer panicked: she is gone at once as a lost connection, alone;
/// nothing more reaches her; Alice and Bob go on, and Dave can still join.
fn assert_closed_alone(w: &mut World) {
    let carol = w.clients[CAROL].id;
    let start = w.now;
    let gone = w.run_until(Duration::from_secs(2), |w| w.clients[CAROL].left.is_some());
    assert!(
        gone,
        "carol was told she left: {:?}",
        w.clients[CAROL].signals
    );
    assert!(
        w.now - start <= Duration::from_millis(100),
        "at once: {:?}",
        w.now - start
    );
    assert_eq!(w.clients[CAROL].left, Some(LeaveReason::ConnectionLost));
    let stats = w.sfu.stats();
    assert_eq!(stats.peers_panicked, 1);
    assert_eq!(stats.participants, 2);
    assert!(w.events.iter().any(|e| matches!(
        e,
        RoomEvent::ParticipantLeft { participant, reason: LeaveReason::ConnectionLost, .. }
            if *participant == carol
    )));

    // Let the others renegotiate Carol's m-lines away.
    w.run_for(Duration::from_millis(500));
    for i in [ALICE, BOB] {
        let cl = &w.clients[i];
        assert_eq!(cl.left, None, "{} stays", cl.name);
        assert!(
            cl.signals.contains(&format!("participant_left:{carol}")),
            "{} was told carol left: {:?}",
            cl.name,
            cl.signals
        );
        assert!(
            cl.signals
                .iter()
                .filter(|s| s.starts_with(&format!("track_unpublished:{carol}:")))
                .count()
                == 2,
            "{} lost carol's two tracks: {:?}",
            cl.name,
            cl.signals
        );
        assert!(
            !cl.active_sources().contains(&carol.to_string()),
            "{} has no m-line from carol: {:?}",
            cl.name,
            cl.active_sources()
        );
    }

    // Media keeps flowing between the two who stayed, and nothing is sent
    // to Carol any more: her client, never told by its `Rtc`, still sends,
    // and what it sends goes nowhere.
    let (ab, ba) = (frames(w, BOB, ALICE), frames(w, ALICE, BOB));
    let to_carol = frames(w, CAROL, ALICE) + frames(w, CAROL, BOB);
    let unrouted = w.sfu.stats().datagrams_unrouted;
    w.run_for(Duration::from_secs(1));
    assert!(frames(w, BOB, ALICE) > ab + 50, "alice to bob flows");
    assert!(frames(w, ALICE, BOB) > ba + 50, "bob to alice flows");
    assert_eq!(frames(w, CAROL, ALICE) + frames(w, CAROL, BOB), to_carol);
    assert!(w.sfu.stats().datagrams_unrouted > unrouted + 20);

    // The room takes a new participant, both ways.
    let dave = w.join("room1", "dave", true);
    let joined = w.run_until(Duration::from_secs(10), |w| {
        [ALICE, BOB].iter().all(|&i| {
            frames(w, dave, i) >= 20
                && w.clients[i].frames_from(w.clients[dave].id, MediaKind::Video) >= 5
        })
    });
    assert!(joined, "dave and the others receive each other");
    let stats = w.sfu.stats();
    assert_eq!(stats.participants, 3);
    assert_eq!(stats.peers_panicked, 1);
}

#[test]
fn a_panic_on_a_subscribers_input_closes_it_alone() {
    let mut w = three_party();
    assert!(w.sfu.inject_panic(w.clients[CAROL].conn, RtcCall::Input));
    assert_closed_alone(&mut w);
}

#[test]
fn a_panic_on_a_subscribers_timeout_closes_it_alone() {
    let mut w = three_party();
    assert!(w.sfu.inject_panic(w.clients[CAROL].conn, RtcCall::Timeout));
    assert_closed_alone(&mut w);
}

#[test]
fn a_panic_while_forwarding_to_a_subscriber_closes_the_subscriber_not_the_publisher() {
    let mut w = three_party();
    // The next frame of Alice's or Bob's written into Carol's `Rtc` panics.
    assert!(w.sfu.inject_panic(w.clients[CAROL].conn, RtcCall::Forward));
    assert_closed_alone(&mut w);
}

#[test]
fn a_panic_on_an_offer_refuses_it_and_closes_that_participant_alone() {
    let mut w = three_party();
    let carol = w.clients[CAROL].conn;
    assert!(w.sfu.inject_panic(carol, RtcCall::Sdp));
    // Carol renegotiates (an ICE restart, as after a network change).
    let mut change = w.clients[CAROL].rtc.sdp_api();
    change.ice_restart(true);
    let (offer, _pending) = change.apply().unwrap();
    let refused = w.sfu.handle_offer(w.now, carol, offer);
    assert!(
        matches!(refused, Err(SignalError::ConnectionFailed)),
        "{refused:?}"
    );
    assert_closed_alone(&mut w);
}
