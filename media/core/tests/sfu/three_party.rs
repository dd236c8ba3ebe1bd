//! Three str0m peers in one room, on a virtual clock: everyone receives the
//! others' audio and video; a leave removes tracks; a late subscriber gets a
//! keyframe promptly. Also: an audio-only room's cost in `Rtc` timeouts.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::World;
use str0m::media::MediaKind;

#[test]
fn three_peers_receive_each_others_audio_and_video() {
    let mut w = World::new();
    let a = w.join("room1", "alice", true);
    let b = w.join("room1", "bob", true);
    let c = w.join("room1", "carol", true);

    let ok = w.run_until(Duration::from_secs(10), |w| {
        (0..3).all(|i| {
            (0..3).filter(|j| *j != i).all(|j| {
                let from = w.clients[j].id;
                w.clients[i].frames_from(from, MediaKind::Audio) >= 20
                    && w.clients[i].frames_from(from, MediaKind::Video) >= 10
            })
        })
    });
    for cl in &w.clients {
        eprintln!("{} {:?} {:?}", cl.name, cl.id, cl.received);
    }
    assert!(ok, "every peer receives both others' audio and video");
    // Nobody receives their own media back.
    for i in [a, b, c] {
        let own = w.clients[i].id;
        assert_eq!(w.clients[i].frames_from(own, MediaKind::Audio), 0);
        assert_eq!(w.clients[i].frames_from(own, MediaKind::Video), 0);
    }
    // Each subscriber's stream is one unbroken RTP sequence, and audio
    // keeps the publisher's level for the receiver's meters.
    for cl in &w.clients {
        for r in cl.received.values() {
            assert_eq!(r.seq_breaks, 0, "{} from {}: {r:?}", cl.name, r.from);
            if r.kind == MediaKind::Audio {
                assert_eq!(r.last_audio_level, Some(-127), "{r:?}");
            }
        }
    }
    let stats = w.sfu.stats();
    assert_eq!(stats.participants, 3);
    assert_eq!(stats.rooms, 1);
    assert!(stats.media_forwarded > 0);
}

#[test]
fn a_leave_removes_its_tracks_from_the_others() {
    let mut w = World::new();
    let a = w.join("room1", "alice", true);
    let b = w.join("room1", "bob", true);
    let c = w.join("room1", "carol", true);
    assert!(w.run_until(Duration::from_secs(10), |w| {
        w.clients[a].active_sources().len() == 2 && w.clients[b].active_sources().len() == 2
    }));
    let carol = w.clients[c].id;
    w.leave(c);
    w.run_for(Duration::from_millis(500));

    for i in [a, b] {
        let cl = &w.clients[i];
        assert!(
            cl.signals.contains(&format!("participant_left:{carol}")),
            "{} was told carol left: {:?}",
            cl.name,
            cl.signals
        );
        assert!(
            !cl.active_sources().contains(&carol.to_string()),
            "{} has no m-line from carol any more: {:?}",
            cl.name,
            cl.active_sources()
        );
    }
    // Media between the two who stayed keeps flowing.
    let before = w.clients[a].frames_from(w.clients[b].id, MediaKind::Video);
    w.run_for(Duration::from_secs(1));
    assert!(w.clients[a].frames_from(w.clients[b].id, MediaKind::Video) > before + 10);
    assert_eq!(w.sfu.stats().participants, 2);
}

#[test]
fn a_late_subscriber_triggers_a_keyframe_request() {
    let mut w = World::new();
    let a = w.join("room1", "alice", true);
    let b = w.join("room1", "bob", true);
    assert!(w.run_until(Duration::from_secs(10), |w| {
        w.clients[b].frames_from(w.clients[a].id, MediaKind::Video) > 5
    }));
    // Let the throttle window pass so the next request is not held back.
    w.run_for(Duration::from_secs(2));
    let before = w.clients[a].keyframe_requests;

    let c = w.join("room1", "carol", false);
    let joined_at = w.now;
    let ok = w.run_until(Duration::from_secs(3), |w| {
        w.clients[a].keyframe_requests > before
    });
    assert!(ok, "the publisher was asked for a keyframe");
    assert!(
        w.now - joined_at < Duration::from_secs(2),
        "promptly: {:?}",
        w.now - joined_at
    );
    assert!(w.run_until(Duration::from_secs(3), |w| {
        w.clients[c].frames_from(w.clients[a].id, MediaKind::Video) > 3
    }));
}

#[test]
fn keyframe_requests_from_many_subscribers_are_throttled() {
    let mut w = World::new();
    let a = w.join("room1", "alice", true);
    assert!(w.run_until(Duration::from_secs(5), |w| w.clients[a].connected));
    w.run_for(Duration::from_secs(1));
    let before = w.clients[a].keyframe_requests;
    // Eight subscribers arrive within 100 ms.
    for i in 0..8 {
        w.join("room1", &format!("viewer{i}"), false);
        w.run_for(Duration::from_millis(10));
    }
    w.run_for(Duration::from_secs(3));
    let sent = w.clients[a].keyframe_requests - before;
    assert!(sent >= 1, "at least one keyframe request");
    // 500 ms throttle over ~3 s: a handful at most, not one per subscriber and retry.
    assert!(sent <= 8, "requests were throttled: {sent}");
    assert!(w.sfu.stats().keyframe_requests_throttled > 0);
}

#[test]
fn a_burst_of_datagrams_is_forwarded_in_arrival_order() {
    // The talkers' packets reach the SFU in bursts (each 5 ms step's
    // datagrams in one go): the listener must get them in the order they
    // arrived. (Serving the newest first makes the oldest packet of a burst
    // wait for the whole burst.)
    let mut w = World::new();
    let alice = w.join_audio("room1", "alice");
    let bob = w.join_audio("room1", "bob");
    let dave = w.join("room1", "dave", false);
    let (a, b) = (w.clients[alice].id, w.clients[bob].id);
    let hears_both = |w: &World| {
        w.clients[dave].frames_from(a, MediaKind::Audio) >= 10
            && w.clients[dave].frames_from(b, MediaKind::Audio) >= 10
    };
    assert!(w.run_until(Duration::from_secs(10), hears_both));
    let ssrc_from = |w: &mut World, from: usize| {
        let p = w.clients[from].id.to_string();
        let c = &mut w.clients[dave];
        let mid = c
            .received
            .iter()
            .find(|(_, r)| r.from == p && r.kind == MediaKind::Audio)
            .map(|(m, _)| *m)
            .unwrap();
        *c.rtc
            .direct_api()
            .stream_rx_by_mid(mid, None)
            .unwrap()
            .ssrc()
    };
    let (sa, sb) = (ssrc_from(&mut w, alice), ssrc_from(&mut w, bob));
    let (addr_a, addr_b) = (w.clients[alice].addr, w.clients[bob].addr);
    w.clients[dave].rtp_ssrcs.clear();
    w.rtp_in.clear();
    w.run_for(Duration::from_millis(500));
    let arrived: String = w
        .rtp_in
        .iter()
        .filter_map(|s| {
            (*s == addr_a)
                .then_some('a')
                .or((*s == addr_b).then_some('b'))
        })
        .collect();
    let forwarded: String = w.clients[dave]
        .rtp_ssrcs
        .iter()
        .filter_map(|s| (*s == sa).then_some('a').or((*s == sb).then_some('b')))
        .collect();
    assert!(forwarded.len() >= 40, "{forwarded}");
    // Both talkers' packets arrive in the same burst (at least mostly), so
    // the order is a real test.
    assert!(arrived.matches("ab").count() >= 15, "{arrived}");
    assert_eq!(forwarded, arrived);
}

#[test]
fn audio_only_peers_cost_about_one_rtc_timeout_per_forwarded_packet() {
    // Three talkers and two listeners, audio only: each listener gets three
    // packets at once every 20 ms, each talker two.
    let mut w = World::new();
    for name in ["alice", "bob", "carol"] {
        w.join_audio("room1", name);
    }
    w.join("room1", "dave", false);
    w.join("room1", "erin", false);
    let talkers: Vec<_> = w.clients[..3].iter().map(|c| c.id).collect();
    let everyone_hears_the_talkers = |w: &World| {
        w.clients.iter().all(|cl| {
            talkers
                .iter()
                .filter(|t| **t != cl.id)
                .all(|t| cl.frames_from(*t, MediaKind::Audio) >= 10)
        })
    };
    assert!(w.run_until(Duration::from_secs(10), everyone_hears_the_talkers));
    for cl in &mut w.clients {
        for r in cl.received.values_mut() {
            r.max_audio_delay = Duration::ZERO;
        }
    }
    let before = w.sfu.stats();
    w.run_for(Duration::from_secs(4));
    let after = w.sfu.stats();
    let forwarded = after.packets_forwarded - before.packets_forwarded;
    let timeouts = after.rtc_timeouts - before.rtc_timeouts;
    let polls = after.rtc_polls - before.rtc_polls;
    // 3 talkers x 4 receivers x 50 packets/s x 4 s.
    assert!(forwarded >= 2_350, "forwarded {forwarded}");
    // str0m's pacer asks for a second timeout after each packet it releases,
    // only to look at its queues again: for peers without video the SFU folds
    // it into the next write's when nothing else waits (1.5 per packet here
    // when it does not).
    let per_packet = timeouts as f64 / forwarded as f64;
    assert!(
        per_packet < 1.25,
        "{timeouts} timeouts for {forwarded} packets"
    );
    // And once the last packet written to a peer went out, the poll that
    // would only return str0m's next deadline is skipped (2.6 polls per
    // packet here without that, the talkers' input included).
    let polls_per_packet = polls as f64 / forwarded as f64;
    assert!(
        polls_per_packet < 1.9,
        "{polls} polls for {forwarded} packets"
    );
    // Folding must not hold a packet queued behind another one until the
    // next write (20 ms): the pacer releases one packet per timeout and this
    // world runs timeouts every 5 ms, so a talker's second packet takes 10.
    for cl in &w.clients {
        for r in cl.received.values() {
            assert_eq!(r.seq_breaks, 0, "{} from {}: {r:?}", cl.name, r.from);
            assert!(
                r.max_audio_delay <= Duration::from_millis(10),
                "{} from {}: {r:?}",
                cl.name,
                r.from
            );
        }
    }
}

#[test]
fn a_shard_numbers_participants_and_tracks_in_its_own_id_space() {
    // Shard 1 of 3 (set_id_space(2, 3)): 2, 5, 8, ...; id_shard names it.
    let mut w = World::with_config(|c| c.set_id_space(2, 3));
    let a = w.join("room1", "alice", true);
    let b = w.join("room1", "bob", true);
    assert!(w.run_until(Duration::from_secs(10), |w| {
        w.clients[b].frames_from(w.clients[a].id, MediaKind::Video) > 5
    }));
    let ids: Vec<u64> = w.clients.iter().map(|c| c.id.0).collect();
    assert_eq!(ids, [2, 5]);
    let mut numbers: Vec<u64> = w
        .sfu
        .participants(&"room1".parse().unwrap())
        .iter()
        .flat_map(|p| p.tracks.iter().map(|t| t.id.0))
        .collect();
    numbers.sort();
    assert_eq!(numbers, [2, 5, 8, 11]);
    for n in ids.iter().chain(&numbers) {
        assert_eq!(vela_media_core::id_shard(*n, 3), 1, "{n}");
    }
}
