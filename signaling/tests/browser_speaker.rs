//! Active speaker: two publishers with fake microphones; the speaking list
//! (and the highlighted tile) follows whichever microphone is enabled.
//!
//! Plain loopback (no namespace). Needs Chromium and chromedriver.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod browser;
mod quality;

use std::time::Duration;

use browser::{Harness, TestResult, poll, run_js};
use fantoccini::Client;
use quality::{join, strings};
use serde_json::json;

const ROOM: &str = "speaker";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_speaking_list_follows_the_unmuted_microphone() {
    browser::run("browser_speaker", Duration::from_secs(40), scenario).await;
}

async fn mic(client: &Client, on: bool) -> TestResult {
    run_js(
        client,
        "window.vela.setMicEnabled(args[0]); return true;",
        vec![json!(on)],
    )
    .await?;
    Ok(())
}

/// The speaking list and the highlighted tiles `client` shows.
async fn speaking(client: &Client) -> TestResult<(Vec<String>, Vec<String>)> {
    let v = run_js(
        client,
        "return [window.vela.speakers().map((s) => s.participant_id), window.vela.speakingTiles()];",
        vec![],
    )
    .await?;
    Ok((strings(&v[0]), strings(&v[1])))
}

/// Waits until both pages list exactly `who` as speaking and highlight it.
async fn expect_speaker(pages: [&Client; 2], who: &str, what: &str) -> TestResult {
    poll(what, Duration::from_secs(8), async || {
        let mut seen = Vec::new();
        for p in pages {
            let (list, tiles) = speaking(p).await?;
            let ok = list == [who] && tiles == [who];
            seen.push(format!("list {list:?} tiles {tiles:?}"));
            if !ok {
                return Ok(Err(seen.join("; ")));
            }
        }
        Ok(Ok(()))
    })
    .await
}

async fn scenario(h: &Harness) -> TestResult {
    let alice = h.open("alice", &format!("/?room={ROOM}")).await?;
    let bob = h.open("bob", &format!("/?room={ROOM}")).await?;
    let a = join(&alice, ROOM, "alice").await?;
    let b = join(&bob, ROOM, "bob").await?;
    mic(&bob, false).await?;
    expect_speaker([&alice, &bob], &a, "alice speaks, bob is silent").await?;
    eprintln!("alice is the speaker");

    mic(&alice, false).await?;
    mic(&bob, true).await?;
    expect_speaker([&alice, &bob], &b, "bob speaks, alice is silent").await?;
    eprintln!("bob is the speaker");

    mic(&bob, false).await?;
    poll("nobody speaks", Duration::from_secs(8), async || {
        let (l1, _) = speaking(&alice).await?;
        let (l2, _) = speaking(&bob).await?;
        Ok(if l1.is_empty() && l2.is_empty() {
            Ok(())
        } else {
            Err(format!("{l1:?} {l2:?}"))
        })
    })
    .await?;
    mic(&alice, true).await?;
    expect_speaker([&alice, &bob], &a, "alice speaks again").await?;
    Ok(())
}
