//! Moving a live call to another device: the others see the same participant
//! continue on the same tracks, with a short gap and no leave or join.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::World;
use str0m::media::MediaKind;
use vela_media_core::LeaveReason;

#[test]
fn a_second_device_takes_over_without_a_leave() {
    let mut w = World::new();
    let a = w.join("call", "alice", true);
    let b = w.join("call", "bob", true);
    let alice = w.clients[a].id;
    assert!(w.run_until(Duration::from_secs(5), |w| {
        w.clients[b].frames_from(alice, MediaKind::Video) > 10
            && w.clients[a].frames_from(w.clients[b].id, MediaKind::Video) > 10
    }));
    let mids_before: Vec<_> = w.clients[b].received.keys().copied().collect();
    let bob_signals = w.clients[b].signals.len();

    // Alice picks up her second device; bob's view of her must not break.
    let a2 = w.handover("call", a, "alice");
    for r in w.clients[b].received.values_mut() {
        r.max_gap = Duration::ZERO;
    }
    let ok = w.run_until(Duration::from_secs(5), |w| {
        w.clients[b]
            .received
            .values()
            .filter(|r| r.from == alice.to_string())
            .all(|r| r.last_tag == Some(a2 as u8))
    });
    assert!(
        ok,
        "bob receives alice's second device: {:?}",
        w.clients[b].received
    );
    w.run_for(Duration::from_secs(1));

    // Same m-lines, same participant, no leave or join, and a short gap.
    let mids_after: Vec<_> = w.clients[b].received.keys().copied().collect();
    assert_eq!(mids_before.len(), mids_after.len());
    for m in &mids_before {
        assert!(mids_after.contains(m), "bob's m-lines are unchanged");
    }
    let new_signals = &w.clients[b].signals[bob_signals..];
    assert!(
        !new_signals.iter().any(|s| s.starts_with("participant_left")
            || s.starts_with("joined:")
            || s.starts_with("track_unpublished")),
        "bob saw no leave or join: {new_signals:?}"
    );
    for r in w.clients[b].received.values() {
        eprintln!("{:?} from {}: longest gap {:?}", r.kind, r.from, r.max_gap);
        // Audio and video go on in the same RTP sequence from the new
        // device (its own numbering mapped onto the old one's).
        assert_eq!(r.seq_breaks, 0, "{:?} sequence broke: {r:?}", r.kind);
        assert!(
            r.max_gap < Duration::from_secs(1),
            "gap on {:?} from {}: {:?}",
            r.kind,
            r.from,
            r.max_gap
        );
    }
    // The old device is told; the new one receives bob.
    assert_eq!(w.clients[a].left, Some(LeaveReason::HandedOver));
    assert!(w.run_until(Duration::from_secs(3), |w| {
        w.clients[a2].frames_from(w.clients[b].id, MediaKind::Video) > 10
    }));
    assert_eq!(w.sfu.stats().participants, 2);
    assert_eq!(
        w.sfu
            .participants(&vela_media_core::RoomId::new("call").unwrap())
            .len(),
        2
    );
    assert!(
        w.events.iter().any(|e| matches!(e, vela_media_core::RoomEvent::ParticipantHandedOver { participant, .. } if *participant == alice))
    );
}

#[test]
fn a_failed_handover_leaves_the_call_on_the_first_device() {
    let mut w = World::with_config(|c| c.set_connect_timeout(Duration::from_secs(3)));
    let a = w.join("call", "alice", true);
    let b = w.join("call", "bob", true);
    let alice = w.clients[a].id;
    assert!(w.run_until(Duration::from_secs(5), |w| {
        w.clients[b].frames_from(alice, MediaKind::Video) > 10
    }));
    let a2 = w.handover("call", a, "alice");
    // The second device never gets through.
    w.clients[a2].rtc.disconnect();
    w.run_for(Duration::from_secs(5));
    let before = w.clients[b].frames_from(alice, MediaKind::Video);
    w.run_for(Duration::from_secs(1));
    assert!(w.clients[b].frames_from(alice, MediaKind::Video) > before + 10);
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
fn a_handover_needs_the_same_account() {
    use vela_media_core::{JoinRequest, PeerKind, RoomId};
    let mut w = World::new();
    let a = w.join("call", "alice", true);
    let room = RoomId::new("call").unwrap();
    let from = w.clients[a].conn;
    // Another identity without an account: refused.
    let other = JoinRequest::new(room.clone(), "mallory", PeerKind::Session);
    assert!(w.sfu.handle_handover(w.now, from, other).is_err());
    // An account cannot take over a participant without one.
    let acct = JoinRequest::new(room, "alice", PeerKind::Session).with_account("A1", "D2");
    assert!(w.sfu.handle_handover(w.now, from, acct).is_err());
}
