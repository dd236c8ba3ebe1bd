//! The server API's operations on the core, on a virtual clock: rooms made
//! ahead of time with a limit and an empty timeout, deleting a room,
//! removing and muting a participant, changing permissions live, data.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::World;
use str0m::media::MediaKind;
use vela_media_core::{
    DataMessage, JoinError, JoinRequest, LeaveReason, PeerKind, Permissions, RoomEvent, RoomId,
    RoomOptions, SignalError,
};

fn room(name: &str) -> RoomId {
    RoomId::new(name).unwrap()
}

fn finished(w: &World, name: &str) -> bool {
    w.events
        .iter()
        .any(|e| matches!(e, RoomEvent::RoomFinished { room } if room.as_str() == name))
}

#[test]
fn a_created_room_waits_for_its_empty_timeout_and_enforces_its_limit() {
    let mut w = World::new();
    let opts = RoomOptions {
        max_participants: 2,
        empty_timeout: Some(Duration::from_secs(10)),
        metadata: "standup".into(),
    };
    let info = w.sfu.handle_create_room(w.now, room("r1"), opts);
    assert_eq!((info.max_participants, info.num_participants), (2, 0));
    assert_eq!(info.empty_timeout_secs, Some(10));
    // Creating again returns the same room.
    let again = w
        .sfu
        .handle_create_room(w.now, room("r1"), RoomOptions::default());
    assert_eq!(again.metadata, "standup");
    assert_eq!(w.sfu.rooms().len(), 1);

    let a = w.join("r1", "alice", true);
    let _b = w.join("r1", "bob", true);
    assert!(w.run_until(Duration::from_secs(5), |w| {
        w.clients[a].active_sources().len() == 1
    }));
    let r = w.sfu.room_info(&room("r1")).unwrap();
    assert_eq!(
        (r.num_participants, r.num_publishers, r.num_tracks),
        (2, 2, 4)
    );
    // The room's own limit, not the server's, refuses a third.
    let third = w.sfu.handle_join(
        w.now,
        JoinRequest::new(room("r1"), "carol", PeerKind::Session),
    );
    assert!(matches!(third, Err(JoinError::RoomFull(_))), "{third:?}");

    w.leave(0);
    w.leave(1);
    w.run_for(Duration::from_secs(5));
    assert!(w.sfu.room_info(&room("r1")).is_some(), "open while empty");
    assert!(!finished(&w, "r1"));
    w.run_for(Duration::from_secs(6));
    assert!(w.sfu.room_info(&room("r1")).is_none(), "closed after 10 s");
    assert!(finished(&w, "r1"));
}

#[test]
fn an_unused_created_room_closes_and_a_rejoin_keeps_it_open() {
    let mut w = World::new();
    let opts = RoomOptions {
        empty_timeout: Some(Duration::from_secs(3)),
        ..Default::default()
    };
    w.sfu.handle_create_room(w.now, room("never"), opts.clone());
    w.sfu.handle_create_room(w.now, room("used"), opts);
    w.run_for(Duration::from_secs(2));
    w.join("used", "alice", false);
    w.run_for(Duration::from_secs(2));
    assert!(finished(&w, "never"), "nobody came: closed");
    assert!(!finished(&w, "used"), "someone came: open");
    // Rooms made by a join close as the last one leaves.
    w.join("adhoc", "bob", false);
    w.run_for(Duration::from_millis(200));
    w.leave(1);
    w.run_for(Duration::from_millis(200));
    assert!(finished(&w, "adhoc"));
}

#[test]
fn deleting_a_room_removes_everyone() {
    let mut w = World::new();
    let a = w.join("r1", "alice", true);
    let b = w.join("r1", "bob", true);
    assert!(
        w.run_until(Duration::from_secs(5), |w| w.clients[a].connected
            && w.clients[b].connected)
    );
    assert!(w.sfu.handle_delete_room(w.now, &room("r1")));
    w.run_for(Duration::from_millis(100));
    assert_eq!(w.clients[a].left, Some(LeaveReason::RoomDeleted));
    assert_eq!(w.clients[b].left, Some(LeaveReason::RoomDeleted));
    assert!(finished(&w, "r1"));
    assert!(w.sfu.rooms().is_empty());
    assert!(!w.sfu.handle_delete_room(w.now, &room("r1")));
}

#[test]
fn removing_a_participant_by_identity() {
    let mut w = World::new();
    let a = w.join("r1", "alice", true);
    let b = w.join("r1", "bob", true);
    assert!(w.run_until(Duration::from_secs(5), |w| w.clients[b].connected));
    let bob = w.clients[b].id;
    assert!(w.sfu.participant(&room("r1"), "bob").is_some());
    assert!(matches!(
        w.sfu
            .handle_remove_participant(w.now, &room("r1"), "nobody"),
        Err(SignalError::UnknownParticipant)
    ));
    assert!(matches!(
        w.sfu.handle_remove_participant(w.now, &room("nope"), "bob"),
        Err(SignalError::UnknownRoom)
    ));
    w.sfu
        .handle_remove_participant(w.now, &room("r1"), "bob")
        .unwrap();
    w.run_for(Duration::from_millis(200));
    assert_eq!(w.clients[b].left, Some(LeaveReason::Removed));
    assert!(
        w.clients[a]
            .signals
            .contains(&format!("participant_left:{bob}"))
    );
    assert!(w.sfu.participant(&room("r1"), "bob").is_none());
}

#[test]
fn a_muted_track_is_not_forwarded_and_resumes_with_a_keyframe() {
    let mut w = World::new();
    let a = w.join("r1", "alice", true);
    let b = w.join("r1", "bob", false);
    let alice = w.clients[a].id;
    assert!(w.run_until(Duration::from_secs(5), |w| {
        w.clients[b].frames_from(alice, MediaKind::Video) > 5
    }));
    let video = w
        .sfu
        .participant(&room("r1"), "alice")
        .unwrap()
        .tracks
        .into_iter()
        .find(|t| t.kind == vela_media_core::TrackKind::Video)
        .unwrap();
    let info = w
        .sfu
        .handle_mute_track(w.now, &room("r1"), "alice", video.id, true)
        .unwrap();
    assert!(info.muted);
    w.run_for(Duration::from_millis(100));
    let frames = w.clients[b].frames_from(alice, MediaKind::Video);
    w.run_for(Duration::from_secs(1));
    assert_eq!(
        w.clients[b].frames_from(alice, MediaKind::Video),
        frames,
        "nothing forwarded while muted, though alice still sends"
    );
    // The publisher and the others were told.
    let told = |c: &common::Client| c.signals.iter().any(|s| s.contains("TrackMuted"));
    assert!(told(&w.clients[a]) && told(&w.clients[b]));
    assert!(
        w.events
            .iter()
            .any(|e| matches!(e, RoomEvent::TrackMuted { muted: true, .. }))
    );

    let requests = w.clients[a].keyframe_requests;
    w.sfu
        .handle_mute_track(w.now, &room("r1"), "alice", video.id, false)
        .unwrap();
    assert!(w.run_until(Duration::from_secs(3), |w| {
        w.clients[b].frames_from(alice, MediaKind::Video) > frames + 5
    }));
    assert!(
        w.clients[a].keyframe_requests > requests,
        "unmute asks for a keyframe"
    );
    // Its sequence goes on where it stopped: what was dropped while muted
    // is no hole for the subscriber to NACK.
    let from = alice.to_string();
    let r = w.clients[b]
        .received
        .values()
        .find(|r| r.kind == MediaKind::Video && r.from == from)
        .unwrap();
    assert_eq!(r.seq_breaks, 0, "{r:?}");
    assert!(matches!(
        w.sfu
            .handle_mute_track(w.now, &room("r1"), "bob", video.id, true),
        Err(SignalError::UnknownTrack)
    ));
}

#[test]
fn permissions_change_live() {
    let mut w = World::new();
    let a = w.join("r1", "alice", true);
    let b = w.join("r1", "bob", true);
    let (alice, bob) = (w.clients[a].id, w.clients[b].id);
    assert!(w.run_until(Duration::from_secs(5), |w| {
        w.clients[b].frames_from(alice, MediaKind::Audio) > 5
            && w.clients[a].frames_from(bob, MediaKind::Audio) > 5
    }));
    let no_publish = Permissions {
        publish: false,
        ..Permissions::default()
    };
    let info = w
        .sfu
        .handle_update_permissions(w.now, &room("r1"), "alice", no_publish)
        .unwrap();
    assert!(info.tracks.is_empty() && !info.permissions.publish);
    w.run_for(Duration::from_millis(500));
    assert!(
        w.clients[b]
            .signals
            .iter()
            .any(|s| s.starts_with(&format!("track_unpublished:{alice}")))
    );
    assert!(
        w.clients[a]
            .signals
            .iter()
            .any(|s| s.contains("PermissionsChanged"))
    );
    let heard = w.clients[b].frames_from(alice, MediaKind::Audio);
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.clients[b].frames_from(alice, MediaKind::Audio), heard);

    // Granted again: the same m-lines are published anew.
    w.sfu
        .handle_update_permissions(w.now, &room("r1"), "alice", Permissions::default())
        .unwrap();
    assert!(w.run_until(Duration::from_secs(5), |w| {
        w.clients[b].active_sources().contains(&alice.to_string())
            && w.clients[b]
                .received
                .values()
                .filter(|r| r.from == alice.to_string())
                .map(|r| r.frames)
                .sum::<u64>()
                > heard + 10
    }));

    // Bob may no longer receive: his m-lines stop.
    let no_subscribe = Permissions {
        subscribe: false,
        ..Permissions::default()
    };
    w.sfu
        .handle_update_permissions(w.now, &room("r1"), "bob", no_subscribe)
        .unwrap();
    assert!(w.run_until(Duration::from_secs(3), |w| {
        w.clients[b].active_sources().is_empty()
    }));
    w.sfu
        .handle_update_permissions(w.now, &room("r1"), "bob", Permissions::default())
        .unwrap();
    assert!(w.run_until(Duration::from_secs(5), |w| {
        w.clients[b].active_sources().contains(&alice.to_string())
    }));
}

#[test]
fn data_goes_to_everyone_else_or_to_named_identities() {
    let mut w = World::new();
    let a = w.join("r1", "alice", false);
    let b = w.join("r1", "bob", false);
    let c = w.join("r1", "carol", false);
    w.run_for(Duration::from_millis(300));
    let msg = |dest: &[&str]| DataMessage {
        topic: Some(Arc::from("chat")),
        payload: Arc::from(&b"hi"[..]),
        destinations: dest.iter().map(|s| s.to_string()).collect(),
    };
    let from_alice = Some(w.clients[a].conn);
    let n = w
        .sfu
        .handle_data(w.now, &room("r1"), from_alice, msg(&[]))
        .unwrap();
    assert_eq!(n, 2, "not back to the sender");
    let n = w
        .sfu
        .handle_data(w.now, &room("r1"), None, msg(&["carol"]))
        .unwrap();
    assert_eq!(n, 1);
    w.run_for(Duration::from_millis(50));
    let data = |i: usize| {
        w.clients[i]
            .signals
            .iter()
            .filter(|s| s.starts_with("Data"))
            .count()
    };
    assert_eq!((data(a), data(b), data(c)), (0, 1, 2));
    // Without canPublishData a participant cannot send.
    w.sfu
        .handle_update_permissions(
            w.now,
            &room("r1"),
            "alice",
            Permissions {
                publish_data: false,
                ..Permissions::default()
            },
        )
        .unwrap();
    assert!(matches!(
        w.sfu.handle_data(w.now, &room("r1"), from_alice, msg(&[])),
        Err(SignalError::NotPermitted(_))
    ));
    assert!(matches!(
        w.sfu.handle_data(w.now, &room("nope"), None, msg(&[])),
        Err(SignalError::UnknownRoom)
    ));
}
