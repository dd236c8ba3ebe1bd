//! A 3 s outage of one participant's network: media resumes both ways within
//! 2 s after it ends, and nobody sees a leave (the session and participant
//! survive; the reconnect timeout is longer than the outage). Then the
//! participant's signaling socket drops and the page resumes the session.
//!
//! The participant's Chromium runs in a network namespace; nftables drops
//! all its UDP during the outage. Needs root, Chromium and chromedriver.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod browser;
mod impaired;
mod netns;
mod quality;

use std::time::{Duration, Instant};

use browser::{Harness, TestResult, poll, run_js};
use quality::{frames_grow, join, record_messages, recorded, remote_ids};

const ROOM: &str = "outage";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_second_outage_heals_without_anyone_leaving() {
    // Two attempts: once in many CI runs (2 busy cores), video to the
    // returning side stayed near-still for the whole 2 s window after the
    // outage (1 new frame); a second failure in a row still fails the test.
    // Not the SFU's pacer: on a loaded machine (load average 5-8) it
    // happened as often with forwarded video unpaced (issue 22: 4 of 16
    // attempts) as with it paced (4 of 14), in either direction. The SFU
    // already asks the returning publisher for a keyframe at its first
    // packet (a gap of over `MAX_MISSING` packets).
    impaired::run("browser_outage", Duration::from_secs(40), 2, scenario).await;
}

async fn scenario(h: &Harness, link: &netns::Link) -> TestResult {
    let (alice, bob) = impaired::open_pages(h, link, ROOM).await?;
    let a = join(&alice, ROOM, "alice").await?;
    record_messages(&alice).await?;
    let b = join(&bob, ROOM, "bob").await?;
    record_messages(&bob).await?;
    frames_grow(&bob, &a, 10, Duration::from_secs(15)).await?;
    frames_grow(&alice, &b, 10, Duration::from_secs(10)).await?;

    link.outage(true)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    link.outage(false)?;
    let ended = Instant::now();
    // Both directions decode again (a few new frames each) within 2 s.
    let (to_bob, to_alice) = tokio::join!(
        frames_grow(&bob, &a, 3, Duration::from_secs(2)),
        frames_grow(&alice, &b, 3, Duration::from_secs(2)),
    );
    let (to_bob, to_alice) = (to_bob?, to_alice?);
    eprintln!(
        "media back {:.1?} after the outage (bob {to_bob:.1?}, alice {to_alice:.1?})",
        ended.elapsed()
    );
    // Still flowing a little later, and nobody left.
    frames_grow(&bob, &a, 10, Duration::from_secs(3)).await?;
    frames_grow(&alice, &b, 10, Duration::from_secs(3)).await?;
    // Bob's signaling socket drops too: the page resumes the same session.
    run_js(&bob, "window.vela.dropSocket(); return true;", vec![]).await?;
    poll(
        "bob's page resumes its session",
        Duration::from_secs(5),
        async || {
            let c = run_js(&bob, "return window.vela.counters();", vec![]).await?;
            let id = run_js(&bob, "return window.vela.participantId;", vec![]).await?;
            Ok(if c["resumes"] == 1 && id == b.as_str() {
                Ok(())
            } else {
                Err(format!("{c} {id}"))
            })
        },
    )
    .await?;
    frames_grow(&alice, &b, 5, Duration::from_secs(3)).await?;
    frames_grow(&bob, &a, 5, Duration::from_secs(3)).await?;
    for (name, client, other) in [("alice", &alice, &b), ("bob", &bob, &a)] {
        let msgs = recorded(client).await?;
        if msgs.iter().any(|m| m == "participant_left" || m == "left") {
            return Err(format!("{name} saw a leave: {msgs:?}").into());
        }
        let ids = remote_ids(client).await?;
        if !ids.contains(other) {
            return Err(format!("{name} lost the other's tile: {ids:?}").into());
        }
    }
    Ok(())
}
