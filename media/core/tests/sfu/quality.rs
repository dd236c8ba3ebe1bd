//! Connection quality as the server measures it: every participant is told
//! the others' levels (and its own), only when they change; a participant
//! whose link loses packets is reported poor to the others, a clean one good.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::World;

/// The last level `w.clients[to]` was told for `of`'s participant.
fn told(w: &World, to: usize, of: usize) -> Option<String> {
    let prefix = format!("quality:{}=", w.clients[of].id);
    w.clients[to]
        .signals
        .iter()
        .rev()
        .find_map(|s| s.strip_prefix(&prefix).map(str::to_owned))
}

fn quality_signals(w: &World, to: usize) -> usize {
    w.clients[to]
        .signals
        .iter()
        .filter(|s| s.starts_with("quality:"))
        .count()
}

#[test]
fn a_lossy_participant_is_told_poor_to_the_others_and_a_clean_one_good() {
    let mut w = World::new();
    let a = w.join("quality", "alice", true);
    let b = w.join("quality", "bob", true);
    assert!(
        w.run_until(Duration::from_secs(10), |w| {
            [(a, b), (b, a), (a, a), (b, b)]
                .iter()
                .all(|&(to, of)| told(w, to, of).as_deref() == Some("good"))
        }),
        "both told good of both: {:?} / {:?}",
        w.clients[a].signals,
        w.clients[b].signals
    );
    // Nothing changes: nothing more is told.
    let before = quality_signals(&w, a);
    w.run_for(Duration::from_secs(6));
    assert_eq!(quality_signals(&w, a), before, "{:?}", w.clients[a].signals);

    // 20 % of bob's datagrams lost both ways.
    w.lossy = Some(w.clients[b].addr);
    w.uplink_loss = 0.2;
    w.downlink_loss = 0.2;
    assert!(
        w.run_until(Duration::from_secs(10), |w| told(w, a, b).as_deref()
            == Some("poor")),
        "alice told bob is poor: {:?}",
        w.clients[a].signals
    );
    assert_eq!(told(&w, b, b).as_deref(), Some("poor"), "bob hears it too");
    assert_eq!(
        told(&w, a, a).as_deref(),
        Some("good"),
        "alice's own link is clean"
    );
    assert_eq!(told(&w, b, a).as_deref(), Some("good"));

    // The loss ends: bob is good again.
    w.uplink_loss = 0.0;
    w.downlink_loss = 0.0;
    assert!(
        w.run_until(Duration::from_secs(10), |w| told(w, a, b).as_deref()
            == Some("good")),
        "bob good again: {:?}",
        w.clients[a].signals
    );
}

#[test]
fn a_newcomer_is_told_everyone_s_level() {
    let mut w = World::new();
    let a = w.join("quality", "alice", true);
    let b = w.join("quality", "bob", true);
    assert!(w.run_until(Duration::from_secs(10), |w| told(w, b, a).is_some()));
    let c = w.join("quality", "carol", false);
    assert!(
        w.run_until(Duration::from_secs(10), |w| {
            told(w, c, a).as_deref() == Some("good") && told(w, c, b).as_deref() == Some("good")
        }),
        "carol told of alice and bob: {:?}",
        w.clients[c].signals
    );
}
