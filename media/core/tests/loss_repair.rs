//! Loss between the SFU and its peers is repaired with NACK and retransmission,
//! in both directions.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

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
