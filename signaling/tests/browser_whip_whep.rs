//! End to end: one headless Chromium publishes its fake camera and microphone
//! with WHIP (`POST /whip/{room}`), another views the room with WHEP
//! (`POST /whep/{room}`) and decodes the video; then both resources are
//! deleted.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver`; see `browser/mod.rs`.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod browser;

use std::time::Duration;

use browser::whip_whep::{INBOUND, OUTBOUND, delete, negotiate};
use browser::{Harness, TestResult, poll, run_js};
use serde_json::{Value, json};

const ROOM: &str = "whiptest";
/// Video frames the WHEP viewer must decode.
const MIN_FRAMES: f64 = 10.0;
/// Audio packets the WHEP viewer must receive.
const MIN_AUDIO_PACKETS: f64 = 20.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whip_publisher_reaches_whep_viewer() {
    browser::run("browser_whip_whep", Duration::from_secs(90), scenario).await;
}

async fn scenario(h: &Harness) -> TestResult {
    let publisher = h.open("whip", "/").await?;
    let viewer = h.open("whep", "/").await?;

    let publishing = [ROOM, "whip-publisher", "Publisher"];
    let (whip, whip_location) = negotiate(h, &publisher, "whip", publishing).await?;
    let (whep, whep_location) =
        negotiate(h, &viewer, "whep", [ROOM, "whep-viewer", "Viewer"]).await?;

    let received = poll(
        "the WHEP viewer decodes the publisher's video and receives its audio",
        Duration::from_secs(15),
        async || {
            let seen = run_js(&viewer, INBOUND, vec![json!("whep")]).await?;
            let number = |k: &str| seen.get(k).and_then(Value::as_f64).unwrap_or(0.0);
            Ok(
                if number("framesDecoded") > MIN_FRAMES
                    && number("audioPackets") > MIN_AUDIO_PACKETS
                {
                    Ok(seen)
                } else {
                    let sent = run_js(&publisher, OUTBOUND, vec![])
                        .await
                        .unwrap_or_else(|e| json!(e.to_string()));
                    Err(format!("viewer {seen}; publisher {sent}"))
                },
            )
        },
    )
    .await?;
    eprintln!("WHEP viewer received: {received}");

    delete(h, "WHIP", &whip_location, &whip).await?;
    delete(h, "WHEP", &whep_location, &whep).await?;
    Ok(())
}
