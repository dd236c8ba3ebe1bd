//! One room over several cores joined by relay links (the in-memory mesh of
//! `common::mesh`, every message through the wire codec): remote
//! participants look local, media crosses a link once however many
//! subscribers it feeds, only demanded layers cross, link loss is repaired
//! from the origin's history, a link going down takes its participants.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::time::Duration;

use crate::common;

use common::mesh::Mesh;
use str0m::media::MediaKind;
use vela_media_core::{
    DataMessage, JoinError, JoinRequest, LeaveReason, LinkId, ParticipantId, PeerKind, RoomId,
    RoomOptions, TrackId, TrackKind, TrackSettings,
};

fn room() -> RoomId {
    RoomId::new("r").unwrap()
}

/// The track of `kind` `publisher` publishes, as core `core` lists it.
fn track_of(m: &Mesh, core: usize, publisher: ParticipantId, kind: TrackKind) -> Option<TrackId> {
    m.cores[core]
        .sfu
        .participants(&room())
        .into_iter()
        .find(|p| p.id == publisher)?
        .tracks
        .into_iter()
        .find(|t| t.kind == kind)
        .map(|t| t.id)
}

#[test]
fn a_publisher_on_one_core_reaches_subscribers_on_two_others() {
    let mut m = Mesh::new(3);
    let alice = m.cores[0].join("r", "alice", true);
    let bob = m.cores[1].join("r", "bob", false);
    m.link_room(0, "r");
    m.link_room(1, "r");
    m.run_for(Duration::from_millis(200));
    // Carol joins after the room is linked: her join lists the others
    // (her core refused the link while it did not hold the room, and links
    // it as she joins, as the shell does).
    let carol = m.cores[2].join("r", "carol", false);
    assert!(m.cores[2].clients[carol].others.is_empty());
    assert!(
        m.cores[0].sfu.relay_links(&room()).len() == 1,
        "core 2 refused"
    );
    m.link_room(2, "r");
    m.run_for(Duration::from_millis(100));
    let alice_id = m.cores[0].clients[alice].id;
    let bob_id = m.cores[1].clients[bob].id;
    let mut seen = m.cores[2].sfu.participants(&room());
    seen.retain(|p| p.id == alice_id || p.id == bob_id);
    assert_eq!(seen.len(), 2, "carol's core lists alice and bob");
    let c = &m.cores[2].clients[carol];
    assert!(
        c.signals.contains(&format!("joined:{alice_id}")),
        "{:?}",
        c.signals
    );
    // A client joining a core that holds the linked room gets them in its join.
    let dave = m.cores[2].join("r", "dave", false);
    assert!(m.cores[2].clients[dave].others.contains(&alice_id));
    assert!(m.cores[2].clients[dave].others.contains(&bob_id));
    assert_ne!(alice_id, bob_id, "ids unique across cores");

    let ok = m.run_until(Duration::from_secs(10), |m| {
        [(1, bob), (2, carol)].iter().all(|&(k, c)| {
            let cl = &m.cores[k].clients[c];
            cl.frames_from(alice_id, MediaKind::Audio) >= 25
                && cl.frames_from(alice_id, MediaKind::Video) >= 10
        })
    });
    for (k, w) in m.cores.iter().enumerate() {
        for c in &w.clients {
            eprintln!("core {k} {} {:?} {:?}", c.name, c.received, c.signals);
        }
        eprintln!("core {k} {:?}", w.sfu.stats());
    }
    assert!(
        ok,
        "bob (core 1) and carol (core 2) receive alice's audio and video"
    );
    for (k, c) in [(1, bob), (2, carol)] {
        let cl = &m.cores[k].clients[c];
        for r in cl.received.values() {
            assert_eq!(r.seq_breaks, 0, "{r:?}");
            assert_eq!(r.time_regressions, 0, "{r:?}");
        }
        assert_eq!(cl.undecodable, 0);
    }
    // Everyone sees everyone, and each core lists the whole room.
    let carol_id = m.cores[2].clients[carol].id;
    let a = &m.cores[0].clients[alice];
    assert!(
        a.signals.contains(&format!("joined:{bob_id}")),
        "{:?}",
        a.signals
    );
    assert!(
        a.signals.contains(&format!("joined:{carol_id}")),
        "{:?}",
        a.signals
    );
    for w in &m.cores {
        let mut ids: Vec<ParticipantId> =
            w.sfu.participants(&room()).iter().map(|p| p.id).collect();
        ids.sort();
        let dave_id = m.cores[2].clients[dave].id;
        let mut want = vec![alice_id, bob_id, carol_id, dave_id];
        want.sort();
        assert_eq!(ids, want);
        assert_eq!(w.sfu.room_info(&room()).unwrap().num_participants, 4);
    }
    assert!(m.cores[1].sfu.is_remote(alice_id));
    assert!(!m.cores[0].sfu.is_remote(alice_id));
    // Remote participants raise no room events (webhooks count each once).
    let joined_events = |k: usize| {
        m.cores[k]
            .events
            .iter()
            .filter(|e| matches!(e, vela_media_core::RoomEvent::ParticipantJoined { .. }))
            .count()
    };
    assert_eq!(
        (joined_events(0), joined_events(1), joined_events(2)),
        (1, 1, 2)
    );
}

#[test]
fn many_subscribers_on_a_core_cost_one_copy_per_packet_on_the_link() {
    let mut m = Mesh::new(2);
    let alice = m.cores[0].join_audio("r", "alice");
    let subs: Vec<usize> = (0..6)
        .map(|i| m.cores[1].join("r", &format!("s{i}"), false))
        .collect();
    m.link_room(0, "r");
    let alice_id = m.cores[0].clients[alice].id;
    assert!(m.run_until(Duration::from_secs(10), |m| {
        subs.iter()
            .all(|s| m.cores[1].clients[*s].frames_from(alice_id, MediaKind::Audio) > 10)
    }));
    let before_link = m.media_on(0, 1);
    let before_in = m.cores[0].sfu.stats().media_received;
    let before: Vec<u64> = subs
        .iter()
        .map(|s| m.cores[1].clients[*s].frames_from(alice_id, MediaKind::Audio))
        .collect();
    m.run_for(Duration::from_secs(2));
    let frames_in = m.cores[0].sfu.stats().media_received - before_in;
    let on_link = m.media_on(0, 1) - before_link;
    eprintln!("frames in {frames_in}, relayed {on_link}");
    assert!(frames_in >= 90, "alice sent ~100 frames: {frames_in}");
    // One packet per audio frame crosses, not one per subscriber.
    assert!(on_link <= frames_in + 2, "{on_link} for {frames_in} frames");
    for (s, b) in subs.iter().zip(before) {
        let got = m.cores[1].clients[*s].frames_from(alice_id, MediaKind::Audio) - b;
        assert!(
            got + 3 >= frames_in,
            "subscriber {s} got {got} of {frames_in}"
        );
    }
    assert_eq!(m.media_on(1, 0), 0, "nothing is published on core 1");
}

#[test]
fn a_small_subscriber_gets_the_low_layer_and_only_it_crosses() {
    let mut m = Mesh::new(2);
    let alice = m.cores[0].join_simulcast("r", "alice");
    // A local subscriber that wants everything: the publisher keeps all layers.
    let local = m.cores[0].join("r", "local", false);
    let bob = m.cores[1].join("r", "bob", false);
    m.link_room(0, "r");
    let alice_id = m.cores[0].clients[alice].id;
    assert!(m.run_until(Duration::from_secs(5), |m| {
        track_of(m, 1, alice_id, TrackKind::Video).is_some()
    }));
    let video = track_of(&m, 1, alice_id, TrackKind::Video).unwrap();
    // Bob renders alice small.
    assert!(m.run_until(Duration::from_secs(5), |m| {
        m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Video) > 0
    }));
    let now = m.now();
    let conn = m.cores[1].clients[bob].conn;
    m.cores[1]
        .sfu
        .handle_track_settings(
            now,
            conn,
            video,
            TrackSettings {
                enabled: true,
                width: Some(320),
                height: Some(180),
            },
        )
        .unwrap();
    // The local subscriber climbs to the top layer meanwhile.
    assert!(m.run_until(Duration::from_secs(10), |m| {
        m.cores[0].clients[local]
            .received
            .values()
            .any(|r| r.kind == MediaKind::Video && r.last_size == 2000)
    }));
    m.run_for(Duration::from_secs(1));
    m.layers.clear();
    let before = m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Video);
    m.run_for(Duration::from_secs(2));
    let got = m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Video) - before;
    let crossed = m.layers_on(0, 1, video);
    eprintln!("layers crossed {crossed:?}, bob got {got}");
    assert_eq!(crossed, [Some(0)].into(), "only the low layer crosses");
    assert!(got >= 30, "bob keeps receiving: {got}");
    let r = m.cores[1].clients[bob]
        .received
        .values()
        .find(|r| r.kind == MediaKind::Video)
        .unwrap();
    assert_eq!(r.last_size, 300, "the q layer's frames");
}

#[test]
fn link_loss_is_repaired_by_nack_from_the_origins_history() {
    let mut m = Mesh::new(2);
    let alice = m.cores[0].join("r", "alice", true);
    // A subscriber on the origin core, beside the one behind the lossy link.
    let carol = m.cores[0].join("r", "carol", false);
    let bob = m.cores[1].join("r", "bob", false);
    m.link_room(0, "r");
    let alice_id = m.cores[0].clients[alice].id;
    assert!(m.run_until(Duration::from_secs(10), |m| {
        m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Video) > 5
    }));
    m.link_loss = 0.05;
    // And some packets arrive twice: forwarded once.
    m.link_dup = 0.05;
    let count =
        |m: &Mesh, k: usize, c: usize, kind| m.cores[k].clients[c].frames_from(alice_id, kind);
    let (b_a, b_v) = (
        count(&m, 1, bob, MediaKind::Audio),
        count(&m, 1, bob, MediaKind::Video),
    );
    let (c_a, c_v) = (
        count(&m, 0, carol, MediaKind::Audio),
        count(&m, 0, carol, MediaKind::Video),
    );
    m.run_for(Duration::from_secs(5));
    m.link_loss = 0.0;
    m.link_dup = 0.0;
    m.run_for(Duration::from_millis(500));
    let bob_audio = count(&m, 1, bob, MediaKind::Audio) - b_a;
    let bob_video = count(&m, 1, bob, MediaKind::Video) - b_v;
    let carol_audio = count(&m, 0, carol, MediaKind::Audio) - c_a;
    let carol_video = count(&m, 0, carol, MediaKind::Video) - c_v;
    let (a, b) = (m.cores[0].sfu.stats(), m.cores[1].sfu.stats());
    eprintln!(
        "dropped {}, nacks {} retransmits {}; bob {bob_audio}/{bob_video} carol {carol_audio}/{carol_video}",
        m.dropped, b.relay_nacks_sent, a.relay_retransmits
    );
    assert!(m.dropped >= 10, "the link lost packets: {}", m.dropped);
    assert!(b.relay_nacks_sent > 0 && a.relay_retransmits > 0);
    assert!(b.relay_duplicates > 0, "duplicates were dropped");
    // ... not forwarded: a duplicate would be one frame more than carol's.
    assert!(
        bob_audio <= carol_audio + 2,
        "audio {bob_audio} of {carol_audio}"
    );
    assert!(
        bob_video <= carol_video + 2,
        "video {bob_video} of {carol_video}"
    );
    for r in m.cores[1].clients[bob].received.values() {
        if r.kind == MediaKind::Video {
            assert_eq!((r.seq_breaks, r.time_regressions), (0, 0), "{r:?}");
        }
    }
    // Bob behind the lossy link gets what carol on the origin gets.
    assert!(
        bob_audio + 2 >= carol_audio,
        "audio {bob_audio} of {carol_audio}"
    );
    assert!(
        bob_video + 2 >= carol_video,
        "video {bob_video} of {carol_video}"
    );
    assert_eq!(m.cores[1].clients[bob].undecodable, 0);
}

#[test]
fn a_link_going_down_takes_its_participants_and_stops_the_media() {
    let mut m = Mesh::new(2);
    let alice = m.cores[0].join("r", "alice", true);
    let bob = m.cores[1].join("r", "bob", true);
    m.link_room(0, "r");
    let (alice_id, bob_id) = (m.cores[0].clients[alice].id, m.cores[1].clients[bob].id);
    assert!(m.run_until(Duration::from_secs(10), |m| {
        m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Video) > 5
            && m.cores[0].clients[alice].frames_from(bob_id, MediaKind::Video) > 5
    }));
    // The node behind the link dies: nothing crosses any more.
    m.cut.insert((0, 1));
    m.cut.insert((1, 0));
    let now = m.now();
    m.cores[1].sfu.handle_link_down(now, LinkId(0));
    m.cores[0].sfu.handle_link_down(now, LinkId(1));
    m.run_for(Duration::from_millis(500));
    let b = &m.cores[1].clients[bob];
    assert!(
        b.signals.contains(&format!("participant_left:{alice_id}")),
        "{:?}",
        b.signals
    );
    assert!(
        !b.active_sources().contains(&alice_id.to_string()),
        "{:?}",
        b.active_sources()
    );
    let ids: Vec<ParticipantId> = m.cores[1]
        .sfu
        .participants(&room())
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, vec![bob_id]);
    assert!(!m.cores[0].sfu.is_remote(bob_id));
    // The origin no longer sends what the gone link demanded.
    let sent = m.cores[0].sfu.stats().relay_packets_sent;
    m.run_for(Duration::from_millis(500));
    assert_eq!(m.cores[0].sfu.stats().relay_packets_sent, sent);
    // Left for the link's reason: its connection is lost.
    assert!(m.cores[0].clients[alice].left.is_none(), "local ones stay");
    assert!(
        !m.cores[1].clients[bob]
            .signals
            .iter()
            .any(|s| s.contains("left:removed"))
    );
    let _ = LeaveReason::ConnectionLost;
}

#[test]
fn data_mute_and_speakers_cross_cores() {
    let mut m = Mesh::new(2);
    let alice = m.cores[0].join("r", "alice", true);
    m.cores[0].clients[alice].audio_level = -20;
    let bob = m.cores[1].join("r", "bob", false);
    m.link_room(1, "r");
    let alice_id = m.cores[0].clients[alice].id;
    assert!(m.run_until(Duration::from_secs(10), |m| {
        m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Audio) > 20
    }));
    // Bob's core hears alice speak from the relayed audio levels.
    assert!(m.run_until(Duration::from_secs(3), |m| {
        m.cores[1].clients[bob]
            .signals
            .contains(&format!("speakers:{alice_id}"))
    }));
    // Data from alice reaches bob on the other core.
    let now = m.now();
    let conn = m.cores[0].clients[alice].conn;
    let n = m.cores[0]
        .sfu
        .handle_data(
            now,
            &room(),
            Some(conn),
            DataMessage {
                topic: Some("chat".into()),
                payload: b"hello bob".as_slice().into(),
                destinations: vec![],
            },
        )
        .unwrap();
    assert_eq!(n, 1, "one other core");
    m.run_for(Duration::from_millis(100));
    let b = &m.cores[1].clients[bob];
    assert!(
        b.signals
            .iter()
            .any(|s| s.starts_with("Data") && s.contains(&alice_id.0.to_string())),
        "{:?}",
        b.signals
    );
    // Alice mutes her audio: bob is told and her frames stop.
    let now = m.now();
    m.cores[0]
        .sfu
        .handle_mute(now, conn, None, Some(MediaKind::Audio), true)
        .unwrap();
    m.run_for(Duration::from_millis(200));
    let b = &m.cores[1].clients[bob];
    assert!(
        b.signals
            .iter()
            .any(|s| s.starts_with("TrackMuted") && s.contains("muted: true")),
        "{:?}",
        b.signals
    );
    let before = b.frames_from(alice_id, MediaKind::Audio);
    m.run_for(Duration::from_secs(1));
    assert_eq!(
        m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Audio),
        before
    );
    let audio = track_of(&m, 1, alice_id, TrackKind::Audio).unwrap();
    let info = m.cores[1].sfu.participant(&room(), "alice").unwrap();
    assert!(info.tracks.iter().any(|t| t.id == audio && t.muted));
}

#[test]
fn the_server_api_on_one_core_acts_on_a_participant_of_another() {
    let mut m = Mesh::new(2);
    let alice = m.cores[0].join("r", "alice", true);
    let bob = m.cores[1].join("r", "bob", false);
    m.link_room(0, "r");
    let alice_id = m.cores[0].clients[alice].id;
    assert!(m.run_until(Duration::from_secs(10), |m| {
        m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Video) > 5
    }));
    // Mute alice's video through core 1's API.
    let video = track_of(&m, 1, alice_id, TrackKind::Video).unwrap();
    let now = m.now();
    let t = m.cores[1]
        .sfu
        .handle_mute_track(now, &room(), "alice", video, true)
        .unwrap();
    assert!(t.muted);
    m.run_for(Duration::from_millis(300));
    let a = &m.cores[0].clients[alice];
    assert!(
        a.signals
            .iter()
            .any(|s| s.starts_with("TrackMuted") && s.contains("muted: true")),
        "alice is told: {:?}",
        a.signals
    );
    let before = m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Video);
    m.run_for(Duration::from_secs(1));
    assert_eq!(
        m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Video),
        before
    );
    // Take her publish permission through core 1's API: her core
    // unpublishes her tracks, and bob's core is told.
    let now = m.now();
    let no_publish = vela_media_core::Permissions {
        publish: false,
        ..Default::default()
    };
    let info = m.cores[1]
        .sfu
        .handle_update_permissions(now, &room(), "alice", no_publish)
        .unwrap();
    assert!(!info.permissions.publish);
    m.run_for(Duration::from_millis(300));
    let b = &m.cores[1].clients[bob];
    assert!(
        b.signals
            .contains(&format!("track_unpublished:{alice_id}:{video}")),
        "{:?}",
        b.signals
    );
    assert!(
        m.cores[0].clients[alice]
            .signals
            .iter()
            .any(|s| s.starts_with("PermissionsChanged")),
        "alice is told"
    );
    assert!(
        !m.cores[1]
            .sfu
            .participant(&room(), "alice")
            .unwrap()
            .permissions
            .publish
    );
    // Remove her through core 1's API: her own core removes her.
    let now = m.now();
    m.cores[1]
        .sfu
        .handle_remove_participant(now, &room(), "alice")
        .unwrap();
    m.run_for(Duration::from_millis(300));
    assert_eq!(m.cores[0].clients[alice].left, Some(LeaveReason::Removed));
    let b = &m.cores[1].clients[bob];
    assert!(
        b.signals.contains(&format!("participant_left:{alice_id}")),
        "{:?}",
        b.signals
    );
    assert!(m.cores[1].sfu.participant(&room(), "alice").is_none());
    // An identity on no core is still unknown.
    let now = m.now();
    assert!(
        m.cores[1]
            .sfu
            .handle_remove_participant(now, &room(), "nobody")
            .is_err()
    );
}

#[test]
fn a_far_subscriber_climbs_to_the_top_layer_and_the_lower_ones_stop_crossing() {
    let mut m = Mesh::new(2);
    let alice = m.cores[0].join_simulcast("r", "alice");
    let bob = m.cores[1].join("r", "bob", false);
    m.link_room(0, "r");
    let alice_id = m.cores[0].clients[alice].id;
    // Bob starts on the low layer and, with the layer costs relayed and
    // bandwidth to spare, is raised to the top one.
    let top = m.run_until(Duration::from_secs(20), |m| {
        m.cores[1].clients[bob]
            .received
            .values()
            .any(|r| r.kind == MediaKind::Video && r.last_size == 2000)
    });
    let video = track_of(&m, 1, alice_id, TrackKind::Video).unwrap();
    eprintln!("{:?}", m.layers_on(0, 1, video));
    assert!(
        top,
        "bob reaches layer f: {:?}",
        m.cores[1].clients[bob].received
    );
    m.run_for(Duration::from_secs(1));
    m.layers.clear();
    let before = m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Video);
    m.run_for(Duration::from_secs(2));
    assert_eq!(
        m.layers_on(0, 1, video),
        [Some(2)].into(),
        "only f crosses now"
    );
    let got = m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Video) - before;
    assert!(got >= 30, "{got}");
    let r = m.cores[1].clients[bob]
        .received
        .values()
        .find(|r| r.kind == MediaKind::Video)
        .unwrap();
    assert_eq!((r.seq_breaks, r.time_regressions), (0, 0), "{r:?}");
    // The link's figures say the same: f of alice's video and her audio.
    let a = m.cores[0].sfu.relay_link_stats();
    let b = m.cores[1].sfu.relay_link_stats();
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].link, a[0].layers_sent, a[0].remote_participants),
        (LinkId(1), 2, 1)
    );
    assert_eq!(
        (b[0].link, b[0].layers_received, b[0].remote_tracks),
        (LinkId(0), 2, 2)
    );
    assert!(a[0].packets_sent > 0 && a[0].packets_sent == b[0].packets_received);
}

#[test]
fn unlinking_a_room_takes_the_far_participants_from_it() {
    let mut m = Mesh::new(2);
    let alice = m.cores[0].join("r", "alice", true);
    let bob = m.cores[1].join("r", "bob", false);
    m.link_room(0, "r");
    let alice_id = m.cores[0].clients[alice].id;
    let bob_id = m.cores[1].clients[bob].id;
    assert!(m.run_until(Duration::from_secs(10), |m| {
        m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Audio) > 5
    }));
    assert_eq!(m.cores[0].sfu.relay_links(&room()), vec![LinkId(1)]);
    assert_eq!(
        m.cores[1].sfu.relay_links(&room()),
        vec![LinkId(0)],
        "linked back"
    );
    let now = m.now();
    m.cores[0]
        .sfu
        .handle_link_room(now, LinkId(1), room(), false);
    m.run_for(Duration::from_millis(300));
    // Both sides forget the other's participants; nothing crosses.
    assert!(
        m.cores[0].clients[alice]
            .signals
            .contains(&format!("participant_left:{bob_id}"))
    );
    assert!(
        m.cores[1].clients[bob]
            .signals
            .contains(&format!("participant_left:{alice_id}"))
    );
    assert!(m.cores[1].sfu.relay_links(&room()).is_empty());
    let sent = m.media_on(0, 1);
    m.run_for(Duration::from_millis(500));
    assert_eq!(m.media_on(0, 1), sent);
    // Linked again: they come back, media with them.
    m.link_room(1, "r");
    let before = m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Audio);
    assert!(m.run_until(Duration::from_secs(5), |m| {
        m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Audio) > before + 10
    }));
}

#[test]
fn a_handover_on_the_origin_core_goes_unseen_on_the_far_core() {
    let mut m = Mesh::new(2);
    let a = m.cores[0].join("r", "alice", true);
    let b = m.cores[1].join("r", "bob", false);
    m.link_room(0, "r");
    let alice = m.cores[0].clients[a].id;
    assert!(m.run_until(Duration::from_secs(10), |m| {
        m.cores[1].clients[b].frames_from(alice, MediaKind::Video) > 10
    }));
    let mids_before: Vec<_> = m.cores[1].clients[b].received.keys().copied().collect();
    let bob_signals = m.cores[1].clients[b].signals.len();
    // Alice's second device (on the same core) takes over.
    let a2 = m.cores[0].handover("r", a, "alice");
    for r in m.cores[1].clients[b].received.values_mut() {
        r.max_gap = Duration::ZERO;
    }
    let ok = m.run_until(Duration::from_secs(5), |m| {
        m.cores[1].clients[b]
            .received
            .values()
            .all(|r| r.last_tag == Some(a2 as u8))
    });
    assert!(
        ok,
        "bob receives the second device: {:?}",
        m.cores[1].clients[b].received
    );
    m.run_for(Duration::from_secs(1));
    let cl = &m.cores[1].clients[b];
    let mids_after: Vec<_> = cl.received.keys().copied().collect();
    assert_eq!(mids_before.len(), mids_after.len(), "same m-lines");
    let new = &cl.signals[bob_signals..];
    assert!(
        !new.iter().any(|s| s.starts_with("participant_left")
            || s.starts_with("joined:")
            || s.starts_with("track_unpublished")),
        "bob saw no leave or join: {new:?}"
    );
    for r in cl.received.values() {
        // The far core re-bases timestamps on the new source too.
        assert_eq!(r.time_regressions, 0, "{r:?}");
        assert!(r.max_gap < Duration::from_secs(1), "{r:?}");
    }
    assert_eq!(m.cores[0].clients[a].left, Some(LeaveReason::HandedOver));
}

#[test]
fn a_whep_viewer_on_one_core_watches_a_publisher_on_another() {
    let mut m = Mesh::new(2);
    let alice = m.cores[0].join("r", "alice", true);
    m.link_room(0, "r");
    m.run_for(Duration::from_millis(300));
    let v = m.cores[1].join_whep("r", "viewer");
    m.link_room(1, "r");
    let ok = m.run_until(Duration::from_secs(10), |m| {
        let r = &m.cores[1].clients[v].received;
        let frames = |k| {
            r.values()
                .filter(|x| x.kind == k)
                .map(|x| x.frames)
                .sum::<u64>()
        };
        frames(MediaKind::Audio) > 20 && frames(MediaKind::Video) > 10
    });
    assert!(
        ok,
        "the viewer decodes alice's media: {:?}",
        m.cores[1].clients[v].received
    );
    // A viewer is no participant: alice is not told of it.
    let vid = m.cores[1].clients[v].id;
    assert!(
        !m.cores[0].clients[alice]
            .signals
            .contains(&format!("joined:{vid}"))
    );
}

#[test]
fn hostile_relay_input_is_refused_and_counted_and_the_room_goes_on() {
    use std::sync::Arc;
    use vela_media_core::relay::wire;
    use vela_media_core::{
        Control, ParticipantInfo, Permissions, RelayMessage, RelayPacket, RelayTrack,
    };

    let mut m = Mesh::new(2);
    let alice = m.cores[0].join("r", "alice", true);
    let bob = m.cores[1].join("r", "bob", false);
    m.link_room(0, "r");
    let (alice_id, bob_id) = (m.cores[0].clients[alice].id, m.cores[1].clients[bob].id);
    assert!(m.run_until(Duration::from_secs(10), |m| {
        m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Video) > 5
    }));
    let video = track_of(&m, 1, alice_id, TrackKind::Video).unwrap();
    let media = |track, layer, pt, payload: &[u8]| {
        RelayMessage::Media(RelayPacket {
            track,
            layer,
            seq: 1 << 40,
            time: 0,
            pt,
            marker: true,
            audio_level: None,
            voice_activity: None,
            epoch: 0,
            payload: Arc::from(payload),
        })
    };
    let info = |id| ParticipantInfo {
        id,
        identity: "mallory".into(),
        name: "mallory".into(),
        account: None,
        device: None,
        tracks: vec![],
        permissions: Permissions::default(),
    };
    // VP8's payload type in the test clients' offers.
    let vp8_pt = 96u8;
    let bad: Vec<(u32, RelayMessage)> = vec![
        // Media of no known track, from the wrong link, of a layer the
        // track lacks, of a payload type it never negotiated, and a VP8
        // payload whose descriptor does not parse.
        (0, media(TrackId(12345), None, vp8_pt, b"x")),
        (7, media(video, None, vp8_pt, b"\x10\x02\x00")),
        (0, media(video, Some(5), vp8_pt, b"\x10\x02\x00")),
        (0, media(video, None, 1, b"\x10\x02\x00")),
        // A participant whose id is a local one's, and one of a room not linked.
        (
            0,
            RelayMessage::Control(Control::ParticipantJoined {
                room: room(),
                info: info(bob_id),
            }),
        ),
        (
            0,
            RelayMessage::Control(Control::ParticipantJoined {
                room: RoomId::new("elsewhere").unwrap(),
                info: info(ParticipantId(999)),
            }),
        ),
        // A track of nobody known; demand for a track that is not local.
        (
            0,
            RelayMessage::Control(Control::TrackPublished {
                room: room(),
                participant: ParticipantId(999),
                track: RelayTrack {
                    id: TrackId(777),
                    kind: TrackKind::Video,
                    muted: false,
                    source: None,
                    rids: vec![],
                    codecs: vec![],
                },
            }),
        ),
        (
            0,
            RelayMessage::Control(Control::Demand {
                track: video,
                layers: u32::MAX,
            }),
        ),
    ];
    let refused = m.cores[1].sfu.stats().relay_refused;
    let now = m.now();
    let n = bad.len() as u64;
    for (link, msg) in bad {
        m.cores[1].sfu.handle_relay(now, LinkId(link), msg);
    }
    let after = m.cores[1].sfu.stats().relay_refused;
    // The VP8 payload of the right pt may parse as a frame start: at least
    // every other one is refused.
    assert!(
        after - refused >= n - 1,
        "refused {} of {n}",
        after - refused
    );
    assert!(!m.cores[1].sfu.is_remote(ParticipantId(999)));
    // Random and mutated frames through the decoder: errors or refusals.
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut seed = Vec::new();
    wire::encode(
        &media(video, None, vp8_pt, b"\x90\x80\x12\x10\x02\x00\x9d"),
        &mut seed,
    );
    let mut decoded = 0;
    for i in 0..3000 {
        let mut b = seed.clone();
        if i % 3 == 0 {
            b = (0..(next() % 64) as usize).map(|_| next() as u8).collect();
        } else {
            for _ in 0..1 + next() % 3 {
                let k = (next() % b.len() as u64) as usize;
                b[k] = next() as u8;
            }
        }
        match wire::decode(&b) {
            Ok(msg) => {
                decoded += 1;
                let now = m.now();
                m.cores[1].sfu.handle_relay(now, LinkId(0), msg);
            }
            Err(_) => m.cores[1].sfu.note_relay_malformed(),
        }
    }
    assert!(decoded > 0);
    // Bob still receives alice.
    let before = m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Video);
    m.run_for(Duration::from_secs(1));
    assert!(m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Video) > before + 10);
    assert!(m.cores[1].sfu.participants(&room()).len() == 2);
}

#[test]
fn the_same_identity_joining_on_another_core_replaces_the_older_session() {
    let mut m = Mesh::new(2);
    let old = m.cores[0].join("r", "alice", true);
    let bob = m.cores[1].join("r", "bob", false);
    m.link_room(0, "r");
    let old_id = m.cores[0].clients[old].id;
    assert!(m.run_until(Duration::from_secs(10), |m| {
        m.cores[1].clients[bob].frames_from(old_id, MediaKind::Audio) > 5
    }));
    // Alice comes back through the other core (another node).
    let new = m.cores[1].join("r", "alice", true);
    let new_id = m.cores[1].clients[new].id;
    assert!(
        !m.cores[1].clients[new].others.contains(&old_id),
        "not listed to her"
    );
    m.run_for(Duration::from_millis(300));
    assert_eq!(
        m.cores[0].clients[old].left,
        Some(LeaveReason::DuplicateIdentity)
    );
    let b = &m.cores[1].clients[bob];
    assert!(
        b.signals.contains(&format!("participant_left:{old_id}")),
        "{:?}",
        b.signals
    );
    assert!(
        b.signals.contains(&format!("joined:{new_id}")),
        "{:?}",
        b.signals
    );
    for w in &m.cores {
        let ids: Vec<ParticipantId> = w.sfu.participants(&room()).iter().map(|p| p.id).collect();
        assert!(!ids.contains(&old_id), "{ids:?}");
    }
    assert!(m.run_until(Duration::from_secs(10), |m| {
        m.cores[1].clients[bob].frames_from(new_id, MediaKind::Audio) > 5
    }));
}

#[test]
fn a_link_down_on_one_side_only_is_reconciled_when_it_comes_back() {
    let mut m = Mesh::new(2);
    let alice = m.cores[0].join("r", "alice", true);
    let carol = m.cores[0].join("r", "carol", true);
    let bob = m.cores[1].join("r", "bob", true);
    m.link_room(0, "r");
    let (alice_id, carol_id, bob_id) = (
        m.cores[0].clients[alice].id,
        m.cores[0].clients[carol].id,
        m.cores[1].clients[bob].id,
    );
    assert!(m.run_until(Duration::from_secs(10), |m| {
        m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Audio) > 5
            && m.cores[0].clients[alice].frames_from(bob_id, MediaKind::Audio) > 5
    }));
    // Core 0 sees the link drop; core 1 does not. Carol leaves meanwhile:
    // her leave is lost with the link.
    m.cut.insert((0, 1));
    m.cut.insert((1, 0));
    let now = m.now();
    m.cores[0].sfu.handle_link_down(now, LinkId(1));
    m.cores[0].leave(carol);
    m.run_for(Duration::from_millis(300));
    assert!(m.cores[1].sfu.is_remote(carol_id), "core 1 never heard");
    // The link comes back and core 0's shell links the room again.
    m.cut.clear();
    let now = m.now();
    m.cores[0]
        .sfu
        .handle_link_room(now, LinkId(1), room(), true);
    m.run_for(Duration::from_millis(300));
    assert!(
        !m.cores[1].sfu.is_remote(carol_id),
        "carol's leave reconciled"
    );
    let b = &m.cores[1].clients[bob];
    assert!(
        b.signals.contains(&format!("participant_left:{carol_id}")),
        "{:?}",
        b.signals
    );
    assert!(m.cores[0].sfu.is_remote(bob_id), "core 0 knows bob again");
    // Media flows both ways again (core 1 sent its demand again).
    let (b0, a0) = (
        m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Audio),
        m.cores[0].clients[alice].frames_from(bob_id, MediaKind::Audio),
    );
    assert!(m.run_until(Duration::from_secs(5), |m| {
        m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Audio) > b0 + 10
            && m.cores[0].clients[alice].frames_from(bob_id, MediaKind::Audio) > a0 + 10
    }));
}

#[test]
fn an_origin_stops_sending_what_a_far_core_no_longer_knows() {
    let mut m = Mesh::new(2);
    let alice = m.cores[0].join("r", "alice", true);
    let bob = m.cores[1].join("r", "bob", false);
    m.link_room(0, "r");
    let alice_id = m.cores[0].clients[alice].id;
    assert!(m.run_until(Duration::from_secs(10), |m| {
        m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Video) > 5
    }));
    // Core 1 sees the link drop (core 0 does not), and bob leaves: his
    // core closes the room and can no longer tell core 0 anything of it.
    m.cut.insert((0, 1));
    m.cut.insert((1, 0));
    let now = m.now();
    m.cores[1].sfu.handle_link_down(now, LinkId(0));
    m.cores[1].leave(bob);
    m.run_for(Duration::from_millis(300));
    assert!(m.cores[1].sfu.room_info(&room()).is_none());
    assert_eq!(m.cores[0].sfu.relay_links(&room()), vec![LinkId(1)]);
    // The link is back: core 0 still sends what bob wanted, once, and is
    // told it is not wanted.
    m.cut.clear();
    m.run_for(Duration::from_millis(500));
    let sent = m.media_on(0, 1);
    m.run_for(Duration::from_secs(1));
    assert_eq!(m.media_on(0, 1), sent, "nothing crosses any more");
    assert_eq!(m.cores[0].sfu.relay_link_stats()[0].layers_sent, 0);
}

#[test]
fn a_track_every_far_subscriber_pauses_stops_crossing_and_resumes_with_a_keyframe() {
    let mut m = Mesh::new(2);
    let alice = m.cores[0].join("r", "alice", true);
    let bob = m.cores[1].join("r", "bob", false);
    m.link_room(0, "r");
    let alice_id = m.cores[0].clients[alice].id;
    assert!(m.run_until(Duration::from_secs(10), |m| {
        m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Video) > 5
    }));
    let video = track_of(&m, 1, alice_id, TrackKind::Video).unwrap();
    let set = |m: &mut Mesh, enabled| {
        let (now, conn) = (m.now(), m.cores[1].clients[bob].conn);
        let s = TrackSettings {
            enabled,
            width: None,
            height: None,
        };
        m.cores[1]
            .sfu
            .handle_track_settings(now, conn, video, s)
            .unwrap();
    };
    // Bob hides alice's tile: her video no longer crosses (her audio does).
    set(&mut m, false);
    m.run_for(Duration::from_millis(200));
    m.layers.clear();
    m.run_for(Duration::from_secs(1));
    assert!(m.layers_on(0, 1, video).is_empty(), "{:?}", m.layers);
    assert!(
        !m.layers.get(&(0, 1)).unwrap().is_empty(),
        "audio still crosses"
    );
    // Shown again: it crosses and bob decodes from a keyframe.
    let keyframes = m.cores[0].clients[alice].keyframe_requests;
    let before = m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Video);
    set(&mut m, true);
    assert!(m.run_until(Duration::from_secs(3), |m| {
        m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Video) > before + 10
    }));
    assert!(
        m.cores[0].clients[alice].keyframe_requests > keyframes,
        "asked over the link"
    );
}

#[test]
fn speakers_whose_audio_a_core_does_not_receive_are_known_there_from_control() {
    let mut m = Mesh::new(2);
    let alice = m.cores[0].join("r", "alice", true);
    let bob = m.cores[1].join("r", "bob", false);
    m.link_room(0, "r");
    let alice_id = m.cores[0].clients[alice].id;
    assert!(m.run_until(Duration::from_secs(10), |m| {
        m.cores[1].clients[bob].frames_from(alice_id, MediaKind::Audio) > 5
    }));
    // Bob stops receiving alice's audio: it no longer crosses.
    let audio = track_of(&m, 1, alice_id, TrackKind::Audio).unwrap();
    let (now, conn) = (m.now(), m.cores[1].clients[bob].conn);
    let off = TrackSettings {
        enabled: false,
        width: None,
        height: None,
    };
    m.cores[1]
        .sfu
        .handle_track_settings(now, conn, audio, off)
        .unwrap();
    m.run_for(Duration::from_millis(300));
    m.layers.clear();
    // Alice speaks: bob's core learns it from her core's speaker levels.
    m.cores[0].clients[alice].audio_level = -20;
    let spoke = m.run_until(Duration::from_secs(3), |m| {
        m.cores[1].clients[bob]
            .signals
            .contains(&format!("speakers:{alice_id}"))
    });
    assert!(spoke, "{:?}", m.cores[1].clients[bob].signals);
    assert!(
        m.layers_on(0, 1, audio).is_empty(),
        "her audio did not cross"
    );
    // She stops: the list empties there too.
    m.cores[0].clients[alice].audio_level = -127;
    assert!(m.run_until(Duration::from_secs(3), |m| {
        m.cores[1].clients[bob].signals.last().map(String::as_str) == Some("speakers:")
    }));
}

#[test]
fn a_rooms_participant_limit_set_through_the_server_api_holds_on_a_linked_core() {
    let mut m = Mesh::new(2);
    let now = m.now();
    let options = RoomOptions {
        max_participants: 3,
        metadata: "webinar".into(),
        ..RoomOptions::default()
    };
    m.cores[0].sfu.handle_create_room(now, room(), options);
    let a = m.cores[0].join("r", "alice", true);
    let b = m.cores[0].join("r", "bob", false);
    // A third participant lands on the other core (another node): its part
    // of the room opens with the defaults, then the cores link it.
    let c = m.cores[1].join("r", "carol", false);
    m.link_room(1, "r");
    m.run_for(Duration::from_millis(300));
    let _ = (a, b, c);
    for core in 0..2 {
        let info = m.cores[core].sfu.room_info(&room()).expect("room");
        assert_eq!(info.num_participants, 3, "core {core}: {info:?}");
        assert_eq!(info.max_participants, 3, "core {core}: {info:?}");
        assert_eq!(info.metadata, "webinar", "core {core}: {info:?}");
    }
    // The room is full on both cores.
    for core in 0..2 {
        let now = m.now();
        let req = JoinRequest::new(room(), "dave", PeerKind::Session);
        let refused = m.cores[core].sfu.handle_join(now, req);
        assert!(
            matches!(refused, Err(JoinError::RoomFull(_))),
            "core {core}: {refused:?}"
        );
    }
}
