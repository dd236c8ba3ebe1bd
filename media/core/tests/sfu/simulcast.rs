//! Simulcast: a subscriber gets the layer its bandwidth and rendered size
//! call for; switches wait for a keyframe and keep timestamps continuous;
//! layers nobody needs are paused at the publisher.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::{Received, World};
use str0m::media::MediaKind;
use vela_media_core::{TrackId, TrackSettings};

fn video(w: &World, i: usize, from: usize) -> Option<&Received> {
    let from = w.clients[from].id.to_string();
    w.clients[i]
        .received
        .values()
        .find(|r| r.from == from && r.kind == MediaKind::Video)
}

fn last_layers(w: &World, i: usize) -> Option<String> {
    w.clients[i]
        .signals
        .iter()
        .rev()
        .find(|s| s.starts_with("layers:"))
        .cloned()
}

/// The id of the publisher's video track, as the subscriber was told.
fn video_track(w: &World, subscriber: usize, publisher: usize) -> TrackId {
    let prefix = format!("track_published:{}:", w.clients[publisher].id);
    let ids: Vec<TrackId> = w.clients[subscriber]
        .signals
        .iter()
        .filter_map(|s| s.strip_prefix(&prefix))
        .map(|t| t.parse().unwrap())
        .collect();
    // Audio is added before video in these clients' offers.
    *ids.last().unwrap()
}

#[test]
fn layers_follow_size_switch_at_keyframes_and_pause_when_unneeded() {
    // Layer choice by size here; bandwidth-driven choice is tested against
    // real browsers on impaired links.
    let mut w = World::with_config(|c| c.set_bandwidth_estimation(false));
    let a = w.join_simulcast("sc", "alice");
    let b = w.join("sc", "bob", false);
    let bob = w.clients[b].conn;

    // Bob starts low and is raised to the top layer (no bandwidth limit here).
    assert!(w.run_until(Duration::from_secs(5), |w| {
        video(w, b, a).is_some_and(|r| r.last_size == 2000)
    }));
    assert!(w.sfu.stats().layer_switches > 0);
    assert_eq!(last_layers(&w, a).as_deref(), Some("layers:q,h,f"));

    // Bob renders alice small: the low layer is enough.
    let track = video_track(&w, b, a);
    for r in w.clients[b].received.values_mut() {
        r.max_gap = Duration::ZERO;
    }
    let small = TrackSettings {
        enabled: true,
        width: Some(320),
        height: Some(180),
    };
    w.sfu
        .handle_track_settings(w.now, bob, track, small)
        .unwrap();
    assert!(w.run_until(Duration::from_secs(3), |w| {
        video(w, b, a).is_some_and(|r| r.last_size == 300)
    }));
    w.run_for(Duration::from_secs(1));
    let r = video(&w, b, a).unwrap();
    assert_eq!(
        r.time_regressions, 0,
        "timestamps stay monotonic across switches"
    );
    // Each layer has its own sequence numbers; the subscriber's stay one
    // sequence, without a hole at a switch (a hole would be NACKed, and
    // never repaired).
    assert_eq!(
        r.seq_breaks, 0,
        "sequence continuous across switches: {r:?}"
    );
    assert!(
        r.max_gap < Duration::from_millis(400),
        "no stall while switching down: {:?}",
        r.max_gap
    );
    // Only the low layer is needed now.
    assert_eq!(last_layers(&w, a).as_deref(), Some("layers:q"));

    // Hidden: no video at all, and the publisher may pause every layer.
    let off = TrackSettings {
        enabled: false,
        ..small
    };
    w.sfu.handle_track_settings(w.now, bob, track, off).unwrap();
    w.run_for(Duration::from_millis(200));
    let frames = video(&w, b, a).unwrap().frames;
    w.run_for(Duration::from_secs(1));
    assert_eq!(
        video(&w, b, a).unwrap().frames,
        frames,
        "a hidden tile gets no video"
    );
    assert_eq!(last_layers(&w, a).as_deref(), Some("layers:"));
    // Audio still flows.
    let audio = w.clients[b].frames_from(w.clients[a].id, MediaKind::Audio);
    w.run_for(Duration::from_millis(500));
    assert!(w.clients[b].frames_from(w.clients[a].id, MediaKind::Audio) > audio);

    // Visible and large again: back to the top layer, layers resumed.
    let big = TrackSettings {
        enabled: true,
        width: Some(1280),
        height: Some(720),
    };
    w.sfu.handle_track_settings(w.now, bob, track, big).unwrap();
    assert!(w.run_until(Duration::from_secs(5), |w| {
        video(w, b, a).is_some_and(|r| r.last_size == 2000)
    }));
    assert_eq!(last_layers(&w, a).as_deref(), Some("layers:q,h,f"));
    let r = video(&w, b, a).unwrap();
    assert_eq!(r.time_regressions, 0);
    assert_eq!(r.seq_breaks, 0, "{r:?}");
}

#[test]
fn layers_are_ranked_by_rid_whatever_their_order_in_the_offer() {
    // Some Firefox versions list their encodings highest first: `f;h;q`.
    let mut w = World::with_config(|c| c.set_bandwidth_estimation(false));
    let a = w.join_simulcast_high_first("hf", "alice");
    let b = w.join("hf", "bob", false);
    let bob = w.clients[b].conn;
    assert!(w.run_until(Duration::from_secs(5), |w| {
        video(w, b, a).is_some_and(|r| r.last_size == 2000)
    }));
    assert_eq!(last_layers(&w, a).as_deref(), Some("layers:q,h,f"));

    // A small tile: the quarter layer `q` (300 bytes a frame), and the
    // publisher is asked for `q` alone.
    let track = video_track(&w, b, a);
    let small = TrackSettings {
        enabled: true,
        width: Some(320),
        height: Some(180),
    };
    w.sfu
        .handle_track_settings(w.now, bob, track, small)
        .unwrap();
    assert!(w.run_until(Duration::from_secs(3), |w| {
        video(w, b, a).is_some_and(|r| r.last_size == 300)
    }));
    w.run_for(Duration::from_secs(1));
    assert_eq!(last_layers(&w, a).as_deref(), Some("layers:q"));
}

#[test]
fn a_hidden_single_layer_video_resumes_without_a_hole_in_its_sequence() {
    // A hidden tile's packets are not sent; when it is shown again its
    // sequence must go on where it stopped: a hole would be NACKed for
    // packets the server never sent, and never repaired.
    let mut w = World::new();
    let a = w.join("hide", "alice", true);
    let b = w.join("hide", "bob", false);
    let bob = w.clients[b].conn;
    assert!(w.run_until(Duration::from_secs(5), |w| {
        video(w, b, a).is_some_and(|r| r.frames >= 10)
    }));
    let track = video_track(&w, b, a);
    let hidden = TrackSettings {
        enabled: false,
        width: None,
        height: None,
    };
    w.sfu
        .handle_track_settings(w.now, bob, track, hidden)
        .unwrap();
    w.run_for(Duration::from_secs(1));
    let frames = video(&w, b, a).unwrap().frames;
    let shown = TrackSettings {
        enabled: true,
        ..hidden
    };
    w.sfu
        .handle_track_settings(w.now, bob, track, shown)
        .unwrap();
    assert!(w.run_until(Duration::from_secs(3), |w| {
        video(w, b, a).is_some_and(|r| r.frames >= frames + 10)
    }));
    let r = video(&w, b, a).unwrap();
    assert_eq!(r.seq_breaks, 0, "{r:?}");
    assert_eq!(r.time_regressions, 0, "{r:?}");
}
