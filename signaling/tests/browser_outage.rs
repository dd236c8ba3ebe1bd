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
    // The flake this test had (~25 % of attempts on a loaded machine: video
    // to Bob near-still for the whole 2 s window) was the server's: during
    // the UDP outage Bob's Chromium reached the node's ICE-TCP candidate
    // with its checks, which the core took for Bob being back, asked Alice
    // for a keyframe then (lost with the rest of Bob's UDP), and on the real
    // return saw no silence, so asked for none; Bob's own keyframe request
    // comes only 3 s after its last decodable frame. The core now counts
    // STUN out of a peer's silence, and asks a returning publisher for a
    // keyframe at once (media/core `reconnect` tests). After: 20 of 20 at
    // load average 12-27, then 19 of 20 first attempts at 17-30 (one stall
    // of Alice's video to Bob, not explained): two attempts kept, a second
    // failure in a row still fails.
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
