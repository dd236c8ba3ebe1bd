//! Forwarded video is not held back by str0m's pacer (issue 22): a
//! keyframe many times the send estimate's 40 ms burst reaches the
//! subscriber as soon as it reached the SFU.

use std::time::{Duration, Instant};

use str0m::media::MediaKind;

use crate::common::World;

/// A 60 kB keyframe: at str0m's pacing rate for the initial 1 Mbit/s
/// estimate (1.1 Mbit/s, 5.5 kB of burst) it would leave over ~400 ms.
const KEYFRAME: usize = 60_000;

/// Virtual time from the publisher's write of a keyframe to the
/// subscriber's receipt of the whole frame, on 1 ms steps (None: not in 1 s).
fn keyframe_delay(w: &mut World, publisher: usize, subscriber: usize) -> Option<Duration> {
    let from = w.clients[publisher].id.to_string();
    let got_key = |w: &World| {
        w.clients[subscriber]
            .received
            .values()
            .any(|r| r.kind == MediaKind::Video && r.from == from && r.last_size == KEYFRAME)
    };
    assert!(!got_key(w), "no keyframe of that size yet");
    w.clients[publisher].send_keyframe();
    let mut written: Option<Instant> = None;
    for _ in 0..1000 {
        let pending = w.clients[publisher].keyframe_pending();
        w.produce_media();
        if pending && !w.clients[publisher].keyframe_pending() {
            written = Some(w.now);
        }
        w.pump();
        if let Some(t) = written
            && got_key(w)
        {
            return Some(w.now - t);
        }
        w.tick(Duration::from_millis(1));
    }
    None
}

#[test]
fn a_keyframe_reaches_the_subscriber_without_waiting_for_the_pacer() {
    let mut w = World::new();
    let alice = w.join("room1", "alice", true);
    let bob = w.join("room1", "bob", false);
    w.clients[alice].keyframe_size = Some(KEYFRAME);
    let a = w.clients[alice].id;
    assert!(w.run_until(Duration::from_secs(10), |w| {
        w.clients[bob].frames_from(a, MediaKind::Video) >= 10
    }));
    // Long enough for the send estimate towards bob to form (TWCC).
    w.run_for(Duration::from_secs(3));
    for round in 0..3 {
        let delay = keyframe_delay(&mut w, alice, bob);
        // The SFU's own batching is all that may delay it: a few ms steps.
        assert!(
            delay.is_some_and(|d| d <= Duration::from_millis(5)),
            "keyframe {round} took {delay:?}"
        );
        w.run_for(Duration::from_millis(500));
    }
}

/// The longest gap between two video frames from `publisher` at
/// `subscriber` over `d` of virtual time on 1 ms steps.
fn max_frame_gap(w: &mut World, publisher: usize, subscriber: usize, d: Duration) -> Duration {
    let from = w.clients[publisher].id.to_string();
    let video = |w: &mut World| {
        w.clients[subscriber]
            .received
            .values_mut()
            .find(|r| r.kind == MediaKind::Video && r.from == from)
            .map(|r| std::mem::take(&mut r.max_gap))
    };
    video(w);
    let end = w.now + d;
    while w.now < end {
        w.produce_media();
        w.pump();
        w.tick(Duration::from_millis(1));
    }
    w.pump();
    video(w).unwrap_or(d)
}

#[test]
fn the_frames_behind_a_keyframe_are_not_held_by_the_debt_it_left() {
    let mut w = World::new();
    let alice = w.join("room1", "alice", true);
    let bob = w.join("room1", "bob", false);
    w.clients[alice].keyframe_size = Some(KEYFRAME);
    let a = w.clients[alice].id;
    assert!(w.run_until(Duration::from_secs(10), |w| {
        w.clients[bob].frames_from(a, MediaKind::Video) >= 10
    }));
    w.run_for(Duration::from_secs(3));
    // The world writes a frame every 50 ms: without a keyframe the gap is
    // that, give or take the SFU's batching.
    let steady = max_frame_gap(&mut w, alice, bob, Duration::from_millis(500));
    assert!(steady <= Duration::from_millis(55), "steady gap {steady:?}");
    for round in 0..3 {
        let delay = keyframe_delay(&mut w, alice, bob);
        assert!(
            delay.is_some_and(|d| d <= Duration::from_millis(5)),
            "keyframe {round} took {delay:?}"
        );
        // The 60 kB the keyframe added to the pacer's debt, draining at
        // 1.1x an estimate of about 1 Mbit/s, held the next frames ~400 ms.
        let gap = max_frame_gap(&mut w, alice, bob, Duration::from_millis(700));
        assert!(
            gap <= Duration::from_millis(55),
            "after keyframe {round}: a gap of {gap:?} between frames"
        );
    }
}
