//! The speaking list follows whose microphone carries sound, reaches every
//! participant, and is sent at most five times a second.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::World;

fn last_speakers(w: &World, i: usize) -> Option<String> {
    w.clients[i]
        .signals
        .iter()
        .rev()
        .find(|s| s.starts_with("speakers:"))
        .cloned()
}

#[test]
fn the_speaking_list_follows_the_unmuted_microphone() {
    let mut w = World::new();
    let a = w.join("talk", "alice", true);
    let b = w.join("talk", "bob", true);
    let c = w.join("talk", "carol", true);
    assert!(w.run_until(Duration::from_secs(5), |w| {
        w.clients.iter().all(|c| c.connected)
    }));
    let (alice, bob) = (w.clients[a].id, w.clients[b].id);

    w.clients[a].audio_level = -20;
    assert!(w.run_until(Duration::from_secs(2), |w| {
        (0..3).all(|i| last_speakers(w, i) == Some(format!("speakers:{alice}")))
    }));

    // Bob speaks louder; alice goes on quietly.
    w.clients[b].audio_level = -10;
    w.clients[a].audio_level = -35;
    assert!(w.run_until(Duration::from_secs(2), |w| {
        last_speakers(w, c) == Some(format!("speakers:{bob},{alice}"))
    }));

    // Everyone mutes: the list empties.
    w.clients[a].audio_level = -127;
    w.clients[b].audio_level = -127;
    assert!(w.run_until(Duration::from_secs(3), |w| {
        last_speakers(w, c) == Some("speakers:".into())
    }));

    // Rate: flapping levels never produce more than 5 lists a second.
    let before = w.clients[c]
        .signals
        .iter()
        .filter(|s| s.starts_with("speakers:"))
        .count();
    for i in 0..50 {
        w.clients[a].audio_level = if i % 2 == 0 { -10 } else { -127 };
        w.clients[b].audio_level = if i % 2 == 0 { -127 } else { -10 };
        w.run_for(Duration::from_millis(40));
    }
    let sent = w.clients[c]
        .signals
        .iter()
        .filter(|s| s.starts_with("speakers:"))
        .count()
        - before;
    assert!(sent <= 11, "2 s of flapping: {sent} lists");
}
