//! Unused simulcast layers are paused: the publisher stops sending a layer no
//! subscriber needs (its outbound-rtp bytes stop growing) and resumes it when
//! a subscriber needs it; a hidden tile stops its video altogether.
//!
//! Plain loopback (no namespace). Needs Chromium and chromedriver.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod browser;
mod quality;

use std::time::Duration;

use browser::{Harness, TestResult, poll, run_js};
use fantoccini::Client;
use quality::{bytes_of, frames_grow, inbound, join, outbound, tile_width};
use serde_json::json;

const ROOM: &str = "pause";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_publisher_pauses_unneeded_layers_and_resumes_them() {
    browser::run("browser_pause_layers", Duration::from_secs(60), scenario).await;
}

/// Bytes sent per layer `q`, `h`, `f` over `window`.
async fn growth(client: &Client, window: Duration) -> TestResult<[u64; 3]> {
    let before = outbound(client).await?;
    tokio::time::sleep(window).await;
    let after = outbound(client).await?;
    let g = |rid| bytes_of(&after, rid).saturating_sub(bytes_of(&before, rid));
    Ok([g("q"), g("h"), g("f")])
}

async fn layers_needed(client: &Client) -> TestResult<String> {
    Ok(run_js(client, "return window.vela.layersNeeded();", vec![])
        .await?
        .to_string())
}

async fn scenario(h: &Harness) -> TestResult {
    let alice = h.open("alice", &format!("/?room={ROOM}")).await?;
    let bob = h.open("bob", &format!("/?room={ROOM}")).await?;
    let a = join(&alice, ROOM, "alice").await?;
    join(&bob, ROOM, "bob").await?;
    // Bob's tile of alice is grid-sized (under 640 px wide): the top layer
    // (1280 wide) is not needed, the half one is.
    poll(
        "bob has alice's tile",
        Duration::from_secs(10),
        async || Ok(tile_width(&bob, &a, None).await.map_err(|e| e.to_string())),
    )
    .await?;
    frames_grow(&bob, &a, 10, Duration::from_secs(15)).await?;
    poll(
        "the publisher pauses the top layer",
        Duration::from_secs(10),
        async || {
            let g = growth(&alice, Duration::from_secs(1)).await?;
            let needed = layers_needed(&alice).await?;
            Ok(if g[0] > 0 && g[2] == 0 {
                Ok(g)
            } else {
                Err(format!(
                    "bytes per layer in 1 s {g:?}, layers_needed {needed}"
                ))
            })
        },
    )
    .await?;
    let g = growth(&alice, Duration::from_secs(2)).await?;
    eprintln!("grid-sized tile: bytes per layer in 2 s {g:?}");
    if g[2] != 0 {
        return Err(format!("the paused top layer still grows: {g:?}").into());
    }

    // Bob shows alice large: the top layer is needed again. The server's
    // part is to say so; Chromium then starts the layer when its own send
    // estimate and CPU allow, which on a loaded 2-core machine has taken
    // over 10 s.
    tile_width(&bob, &a, Some(960)).await?;
    poll(
        "the server asks the publisher for the top layer",
        Duration::from_secs(10),
        async || {
            let needed = layers_needed(&alice).await?;
            Ok(if needed.contains("\"f\"") {
                Ok(())
            } else {
                Err(format!("layers_needed {needed}"))
            })
        },
    )
    .await?;
    let g = poll(
        "the publisher resumes the top layer",
        Duration::from_secs(20),
        async || {
            let g = growth(&alice, Duration::from_secs(1)).await?;
            let needed = layers_needed(&alice).await?;
            Ok(if g[2] > 0 {
                Ok(g)
            } else {
                Err(format!(
                    "bytes per layer in 1 s {g:?}, layers_needed {needed}"
                ))
            })
        },
    )
    .await?;
    eprintln!("large tile: bytes per layer in 1 s {g:?}");
    // (Which layer bob then gets depends on his bandwidth estimate too:
    // browser_layers.rs checks that.) The video goes on.
    frames_grow(&bob, &a, 10, Duration::from_secs(5)).await?;

    // Hidden tile: no video for bob, nothing sent by alice.
    run_js(
        &bob,
        "return window.vela.setTileLayout(args[0], null, true);",
        vec![json!(a)],
    )
    .await?;
    poll(
        "a hidden tile pauses every layer",
        Duration::from_secs(10),
        async || {
            let g = growth(&alice, Duration::from_secs(1)).await?;
            Ok(if g == [0, 0, 0] {
                Ok(())
            } else {
                Err(format!("{g:?}"))
            })
        },
    )
    .await?;
    let f1 = inbound(&bob, &a).await?.frames;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let f2 = inbound(&bob, &a).await?.frames;
    if f2 > f1 + 2 {
        return Err(format!("a hidden tile still decodes: {f1} -> {f2}").into());
    }
    Ok(())
}
