//! 5% packet loss on one participant's link, both directions: video keeps
//! decoding both ways and the server answers the lossy subscriber's NACKs
//! (`vela_nacks_received_total` grows); on the lossy page, the tile of the
//! other shows the connection as fair or poor (what reaches it is lost and
//! NACKed), while the other page's own connection shows good.
//!
//! The lossy participant's Chromium runs in a network namespace; nftables
//! drops UDP at random. Needs root, Chromium and chromedriver.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod browser;
mod impaired;
mod netns;
mod quality;

use std::time::Duration;

use browser::{Harness, TestResult, poll, run_js};
use quality::{frames_grow, inbound, join, metric, tile_width};

const ROOM: &str = "loss";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn video_survives_five_percent_loss_and_nacks_are_answered() {
    impaired::run("browser_loss", Duration::from_secs(40), 1, scenario).await;
}

async fn scenario(h: &Harness, link: &netns::Link) -> TestResult {
    let (alice, bob) = impaired::open_pages(h, link, ROOM).await?;
    let a = join(&alice, ROOM, "alice").await?;
    let b = join(&bob, ROOM, "bob").await?;
    frames_grow(&bob, &a, 10, Duration::from_secs(15)).await?;
    frames_grow(&alice, &b, 10, Duration::from_secs(10)).await?;
    // Large tiles both ways: every layer flows, plenty of packets to lose.
    tile_width(&alice, &b, Some(960)).await?;
    tile_width(&bob, &a, Some(960)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let received = metric(h, "nacks_received_total").await?;
    let sent = metric(h, "nacks_sent_total").await?;
    link.loss(5)?;
    // Several seconds of steady decoding both ways through the loss.
    let mut lost = 0;
    for round in 0..6 {
        let t1 = frames_grow(&bob, &a, 15, Duration::from_secs(3)).await?;
        let t2 = frames_grow(&alice, &b, 15, Duration::from_secs(3)).await?;
        lost = inbound(&bob, &a).await?.lost;
        eprintln!(
            "round {round}: 15 frames in {t1:.1?} (bob) and {t2:.1?} (alice); bob lost {lost}"
        );
    }
    let received2 = metric(h, "nacks_received_total").await?;
    let sent2 = metric(h, "nacks_sent_total").await?;
    eprintln!(
        "nacks received {received} -> {received2}, sent {sent} -> {sent2}; bob counted {lost} lost"
    );
    if received2 <= received {
        return Err("the lossy subscriber's NACKs never reached the server".into());
    }
    // The other direction (the server NACKs the lossy publisher) is counted
    // too, but not required here: Chromium's RTX padding (bandwidth probes
    // resend recent packets) repairs most of its gaps before a NACK is due,
    // so the count stays near zero. media/core/tests/loss_repair.rs covers it.
    eprintln!("the server NACKed the publisher {} times", sent2 - sent);
    // Connection quality: what reaches bob from alice crosses his lossy link.
    let seen = poll(
        "bob's page shows alice's connection as fair or poor",
        Duration::from_secs(10),
        async || {
            let q = run_js(&bob, "return window.vela.connectionQuality();", vec![]).await?;
            let level = q[a.as_str()]["level"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            Ok(if level == "fair" || level == "poor" {
                Ok(q)
            } else {
                Err(q.to_string())
            })
        },
    )
    .await?;
    eprintln!("bob's connection quality: {seen}");
    let q = run_js(&alice, "return window.vela.connectionQuality();", vec![]).await?;
    if q["local"]["level"] != "good" {
        return Err(format!("alice's loss-free connection shows {q}").into());
    }
    link.loss(0)?;
    Ok(())
}
