//! A second, receive-only connection of a participant (LiveKit's subscriber
//! connection): the server offers first, even in an empty room (a data
//! channel); it receives everyone's tracks but its participant's own, with
//! msids named as asked; the room never sees it as a participant.

use std::time::Duration;

use str0m::media::MediaKind;
use vela_media_core::{ParticipantId, TrackId};

use crate::common::World;

fn livekit_ids(p: ParticipantId, t: TrackId) -> (String, String) {
    (format!("PA_{}|TR_{}", p.0, t.0), format!("TR_{}", t.0))
}

#[test]
fn a_receiving_connection_gets_the_others_tracks_and_not_its_own() {
    let mut w = World::new();
    let alice = w.join("r", "alice", true);
    // Alone in the room: the server's first offer carries a data channel.
    let twin = w.join_receiver("r", alice, Some(livekit_ids));
    let up = w.run_until(Duration::from_secs(5), |w| w.clients[twin].connected);
    assert!(up, "{:?}", w.clients[twin].signals);
    assert!(w.clients[twin].signals.iter().any(|s| s == "offer"));
    assert!(
        w.clients[twin].received.is_empty(),
        "its own tracks are not sent to it"
    );
    // Not a participant: not listed, not announced, not in the join's others.
    let room = vela_media_core::RoomId::new("r").unwrap();
    assert_eq!(w.sfu.participants(&room).len(), 1);
    let bob = w.join("r", "bob", true);
    assert_eq!(w.clients[bob].others, vec![w.clients[alice].id]);
    // Bob's tracks reach the twin over a renegotiation, msid as asked.
    assert!(w.run_until(Duration::from_secs(10), |w| {
        let r = &w.clients[twin].received;
        r.len() == 2 && r.values().all(|r| r.frames > 5)
    }));
    let bob_id = w.clients[bob].id;
    for r in w.clients[twin].received.values() {
        assert!(
            r.from.starts_with(&format!("PA_{}|TR_", bob_id.0)),
            "{}",
            r.from
        );
    }
    // Bob receives alice's tracks only (the twin publishes nothing) and
    // never hears of the twin.
    assert!(w.run_until(Duration::from_secs(5), |w| {
        w.clients[bob].frames_from(w.clients[alice].id, MediaKind::Video) > 5
    }));
    assert!(
        !w.clients[bob]
            .signals
            .iter()
            .any(|s| s.starts_with("joined:")),
        "{:?}",
        w.clients[bob].signals
    );
    assert_eq!(w.clients[bob].received.len(), 2);
    assert_eq!(w.sfu.participants(&room).len(), 2);
    // Alice leaving is one participant leaving, seen by bob while her
    // twin is still there (the twin goes after her).
    w.leave(alice);
    w.run_for(Duration::from_millis(200));
    let left = format!("participant_left:{}", w.clients[alice].id);
    assert_eq!(
        w.clients[bob]
            .signals
            .iter()
            .filter(|s| **s == left)
            .count(),
        1,
        "{:?}",
        w.clients[bob].signals
    );
    w.leave(twin);
    w.run_for(Duration::from_millis(200));
    assert_eq!(
        w.clients[bob]
            .signals
            .iter()
            .filter(|s| s.starts_with("participant_left"))
            .count(),
        1
    );
    assert_eq!(w.sfu.participants(&room).len(), 1);
}

#[test]
fn a_receiving_connection_needs_its_participant_in_the_room() {
    let mut w = World::new();
    let alice = w.join("r", "alice", false);
    let req = vela_media_core::JoinRequest::new(
        vela_media_core::RoomId::new("other").unwrap(),
        "alice",
        vela_media_core::PeerKind::Session,
    )
    .receiving_for(w.clients[alice].conn, Vec::new());
    assert!(w.sfu.handle_join(w.now, req).is_err());
}

#[test]
fn data_channel_messages_go_to_the_signaling_and_come_from_it() {
    let mut w = World::new();
    // A client that publishes nothing offers a data channel ("vela").
    let alice = w.join("r", "alice", false);
    assert!(w.run_until(Duration::from_secs(5), |w| {
        w.clients[alice].channel.is_some()
    }));
    let id = w.clients[alice].channel.unwrap();
    let mut channel = w.clients[alice].rtc.channel(id).unwrap();
    assert!(channel.write(true, b"hello").unwrap());
    let got = w.run_until(Duration::from_secs(5), |w| {
        w.clients[alice]
            .signals
            .iter()
            .any(|s| s.starts_with("ChannelData") && s.contains("\"vela\""))
    });
    assert!(got, "{:?}", w.clients[alice].signals);
    let conn = w.clients[alice].conn;
    assert!(
        w.sfu
            .handle_channel_send(w.now, conn, "vela", true, b"hi")
            .unwrap()
    );
    assert!(
        !w.sfu
            .handle_channel_send(w.now, conn, "nope", true, b"hi")
            .unwrap()
    );
    assert!(w.run_until(Duration::from_secs(5), |w| {
        w.clients[alice].signals.iter().any(|s| s == "channel:hi")
    }));
    // The channel a receiving connection's server offer opened is written
    // to once open.
    let twin = w.join_receiver("r", alice, None);
    let conn = w.clients[twin].conn;
    let mut sent = false;
    for _ in 0..100 {
        w.run_for(Duration::from_millis(50));
        let now = w.now;
        if w.sfu
            .handle_channel_send(now, conn, "_reliable", true, b"to the twin")
            .unwrap()
        {
            sent = true;
            break;
        }
    }
    assert!(sent, "the server's channel never opened");
    assert!(w.run_until(Duration::from_secs(5), |w| {
        w.clients[twin]
            .signals
            .iter()
            .any(|s| s == "channel:to the twin")
    }));
}
