//! Loss between the SFU and its peers is repaired with NACK and retransmission,
//! in both directions.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::World;
use str0m::media::MediaKind;

fn frames_sent_per_publisher(secs: u64) -> u64 {
    // The world writes one video frame per 50 ms.
    secs * 20
}

#[test]
fn five_percent_loss_towards_a_subscriber_is_repaired() {
    let mut w = World::new();
    let a = w.join("lossy", "alice", true);
    let b = w.join("lossy", "bob", false);
    assert!(w.run_until(Duration::from_secs(5), |w| {
        w.clients[b].frames_from(w.clients[a].id, MediaKind::Video) > 0
    }));
    let before = w.clients[b].frames_from(w.clients[a].id, MediaKind::Video);
    w.downlink_loss = 0.05;
    w.run_for(Duration::from_secs(10));
    w.downlink_loss = 0.0;
    w.run_for(Duration::from_secs(1));
    let got = w.clients[b].frames_from(w.clients[a].id, MediaKind::Video) - before;
    let sent = frames_sent_per_publisher(11);
    assert!(w.dropped > 50, "the link lost packets: {}", w.dropped);
    let stats = w.sfu.stats();
    eprintln!(
        "downlink: {got}/{sent} frames, {} dropped, {stats:?}",
        w.dropped
    );
    assert!(stats.nacks_received > 0, "the subscriber NACKed: {stats:?}");
    // Without retransmission every lost packet of a frame loses the frame (~5% or more).
    assert!(
        got * 100 >= sent * 98,
        "video frames delivered despite loss: {got} of about {sent} ({stats:?})"
    );
}

#[test]
fn five_percent_loss_from_a_publisher_is_repaired() {
    let mut w = World::new();
    let a = w.join("lossy", "alice", true);
    let b = w.join("lossy", "bob", false);
    assert!(w.run_until(Duration::from_secs(5), |w| {
        w.clients[b].frames_from(w.clients[a].id, MediaKind::Video) > 0
    }));
    let before = w.clients[b].frames_from(w.clients[a].id, MediaKind::Video);
    w.uplink_loss = 0.05;
    w.run_for(Duration::from_secs(10));
    w.uplink_loss = 0.0;
    w.run_for(Duration::from_secs(1));
    let got = w.clients[b].frames_from(w.clients[a].id, MediaKind::Video) - before;
    let sent = frames_sent_per_publisher(11);
    let stats = w.sfu.stats();
    eprintln!(
        "uplink: {got}/{sent} frames, {} dropped, {stats:?}",
        w.dropped
    );
    assert!(
        stats.nacks_sent > 0,
        "the SFU NACKed the publisher: {stats:?}"
    );
    assert!(
        got * 100 >= sent * 98,
        "video frames forwarded despite loss: {got} of about {sent} ({stats:?})"
    );
}

#[test]
fn audio_after_a_lost_packet_is_not_held_back() {
    // Audio is not retransmitted: the server forwards each packet as it
    // arrives, a gap stays a gap, and the subscriber (its jitter buffer)
    // plays on after a loss. A server that waits for the lost packet
    // (str0m's frame API waits 15 packets, 300 ms) stalls the voice after
    // every loss.
    let mut w = World::new();
    let a = w.join("lossy", "alice", true);
    let b = w.join("lossy", "bob", false);
    let alice = w.clients[a].id;
    assert!(w.run_until(Duration::from_secs(5), |w| {
        w.clients[b].frames_from(alice, MediaKind::Audio) > 10
    }));
    for r in w.clients[b].received.values_mut() {
        r.max_gap = Duration::ZERO;
    }
    let before = w.clients[b].frames_from(alice, MediaKind::Audio);
    w.uplink_loss = 0.05;
    w.run_for(Duration::from_secs(10));
    assert!(w.dropped > 20, "the link lost packets: {}", w.dropped);
    let got = w.clients[b].frames_from(alice, MediaKind::Audio) - before;
    // 500 frames were sent; about 5 % were lost on the way in.
    assert!(got >= 450, "audio frames delivered: {got}");
    let audio = w.clients[b]
        .received
        .values()
        .find(|r| r.kind == MediaKind::Audio)
        .unwrap();
    assert!(
        audio.max_gap <= Duration::from_millis(120),
        "longest audio gap after losses: {:?}",
        audio.max_gap
    );
}
