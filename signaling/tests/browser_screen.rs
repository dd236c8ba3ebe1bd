//! Screen sharing on the web page: a page shares its screen (Chromium picks
//! "Entire screen" by itself), the other page shows it on the stage with
//! its frames decoding and the cameras in a strip; the sharer sees its own
//! share small, marked "You are presenting", with a Stop button. A
//! moderator muting the share (server API) pauses it on the sharer's page
//! and leaves its camera alone. Stopping the share (the own view's Stop,
//! the Share button, then the browser's own "Stop sharing") unpublishes it
//! and the stage goes. Screenshots of the call and of the share at two window
//! sizes go to target/screenshots (or VELA_SCREENSHOT_DIR).
//!
//! Plain loopback (no namespace). Needs Chromium and chromedriver.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod browser;
mod quality;

use std::time::Duration;

use browser::{Harness, TestResult, poll, run_js};
use fantoccini::{Client, Locator};
use quality::{frames_grow, join, metric};
use serde_json::Value;

const ROOM: &str = "screen";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shared_screen_takes_the_stage_and_leaves_it_when_stopped() {
    browser::run("browser_screen", Duration::from_secs(120), scenario).await;
}

/// Where screenshots go: VELA_SCREENSHOT_DIR, else target/screenshots.
fn screenshot_dir() -> String {
    std::env::var("VELA_SCREENSHOT_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/screenshots").into())
}

/// Saves `client`'s page as `<name>.png`, at `size` (CSS pixels) if given.
pub async fn screenshot(client: &Client, name: &str, size: Option<(u32, u32)>) -> TestResult {
    if let Some((w, h)) = size {
        client.set_window_size(w, h).await?;
        // Let the layout and the videos follow the new size.
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::write(format!("{dir}/{name}.png"), client.screenshot().await?)?;
    eprintln!("screenshot {dir}/{name}.png");
    Ok(())
}

/// What `viewer` shows of shares: `screenStats()` and `screenTiles()`, and
/// whether the tile area is in stage mode.
async fn viewer_state(viewer: &Client) -> TestResult<Value> {
    run_js(
        viewer,
        r#"return { stats: await window.vela.screenStats(), tiles: window.vela.screenTiles(),
  staged: document.querySelector('#tiles').classList.contains('staged'),
  cameras: window.vela.remoteTiles().map((t) => t.participantId) };"#,
        vec![],
    )
    .await
}

/// Waits until `viewer` shows `sharer`'s screen on the stage, decoding
/// `frames` more frames than `after`; returns the frames decoded then.
async fn expect_on_stage(
    viewer: &Client,
    sharer: &str,
    after: u64,
    frames: u64,
) -> TestResult<u64> {
    let seen = poll(
        "the share on the other page's stage, decoding",
        Duration::from_secs(20),
        async || {
            let v = viewer_state(viewer).await?;
            let s = &v["stats"][sharer];
            let decoded = s["framesDecoded"].as_u64().unwrap_or(0);
            let on_stage = v["tiles"].as_array().is_some_and(|t| {
                t.len() == 1 && t[0]["participantId"] == sharer && t[0]["stage"] == true
            });
            let camera_in_strip = v["cameras"]
                .as_array()
                .is_some_and(|c| c.iter().any(|p| p == sharer));
            Ok(
                if on_stage
                    && v["staged"] == true
                    && camera_in_strip
                    && decoded >= after + frames
                    && s["frameWidth"].as_u64() > Some(0)
                {
                    Ok(v)
                } else {
                    Err(v.to_string())
                },
            )
        },
    )
    .await?;
    eprintln!("on stage: {}", seen["stats"][sharer]);
    Ok(seen["stats"][sharer]["framesDecoded"].as_u64().unwrap_or(0))
}

/// Waits until `viewer` shows no share and `sharer` sends none; the
/// server's published tracks are back to `tracks`.
async fn expect_gone(h: &Harness, viewer: &Client, sharer: &Client, tracks: u64) -> TestResult {
    poll(
        "the share gone from both pages and the server",
        Duration::from_secs(15),
        async || {
            let v = viewer_state(viewer).await?;
            let own = run_js(sharer, "return await window.vela.shareState();", vec![]).await?;
            let published = metric(h, "tracks").await?;
            let gone = v["tiles"].as_array().is_some_and(|t| t.is_empty())
                && v["stats"].as_object().is_some_and(|s| s.is_empty())
                && v["staged"] == false
                && own.is_null()
                && published == tracks;
            Ok(if gone {
                Ok(())
            } else {
                Err(format!("viewer {v}, sharer {own}, tracks {published}"))
            })
        },
    )
    .await
}

/// What `sharer` sends: one layer of video marked for text, named a screen.
async fn expect_sending(sharer: &Client) -> TestResult<Value> {
    poll(
        "the sharer sends its screen",
        Duration::from_secs(15),
        async || {
            let s = run_js(sharer, "return await window.vela.shareState();", vec![]).await?;
            let named = s["sources"]
                .as_object()
                .is_some_and(|m| m.values().any(|v| v == "screen"));
            let ok = s["contentHint"] == "detail"
                && s["encodings"] == 1
                && named
                && s["framesEncoded"].as_u64() > Some(10);
            Ok(if ok { Ok(s) } else { Err(s.to_string()) })
        },
    )
    .await
}

/// Waits until `sharer` shows its own share: small, "You are presenting",
/// playing, paused by a moderator or not as `paused` says.
async fn expect_own_view(sharer: &Client, paused: bool) -> TestResult<Value> {
    poll(
        "the sharer's own view of its share",
        Duration::from_secs(10),
        async || {
            let s = run_js(sharer, "return await window.vela.shareState();", vec![]).await?;
            let v = &s["view"];
            let ok = v["shown"] == true
                && v["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("You are presenting") && t.contains("Stop"))
                && v["videoWidth"].as_u64() > Some(0)
                && v["width"]
                    .as_u64()
                    .is_some_and(|w| (100..=300).contains(&w))
                && v["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("Paused by a moderator") == paused)
                && s["pausedByModerator"] == paused
                && s["videoEnabled"] == !paused;
            Ok(if ok { Ok(s) } else { Err(s.to_string()) })
        },
    )
    .await
}

/// A moderator (a roomAdmin token of the test's own) mutes or unmutes
/// `pid`'s track of `source` through the server API; returns its id.
async fn mute_source(h: &Harness, pid: &str, source: &str, muted: bool) -> TestResult<String> {
    let body: Value = h
        .http
        .get(h.url(&format!("/api/dev-token?room={ROOM}&identity=ops&admin=1")))
        .send()
        .await?
        .json()
        .await?;
    let token = body["token"].as_str().ok_or("no admin token")?.to_owned();
    let list: Value = h
        .http
        .get(h.url(&format!("/api/v1/rooms/{ROOM}/participants")))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    let p = list["participants"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["id"] == pid))
        .ok_or_else(|| format!("{pid} not listed: {list}"))?;
    let track = p["tracks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["source"] == source))
        .and_then(|t| t["id"].as_str())
        .ok_or_else(|| format!("{pid} has no {source} track: {p}"))?
        .to_owned();
    let identity = p["identity"].as_str().ok_or("no identity")?;
    let r = h
        .http
        .post(h.url(&format!(
            "/api/v1/rooms/{ROOM}/participants/{identity}/tracks/{track}/mute"
        )))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "muted": muted }))
        .send()
        .await?;
    if !r.status().is_success() {
        return Err(format!("mute {track}: HTTP {}", r.status()).into());
    }
    Ok(track)
}

async fn click_share(client: &Client) -> TestResult {
    // A real click: getDisplayMedia needs a user gesture.
    client
        .find(Locator::Css("#share-screen"))
        .await?
        .click()
        .await?;
    Ok(())
}

async fn scenario(h: &Harness) -> TestResult {
    // Chromium picks the whole (virtual) screen without asking.
    h.set_chromium_args(Some(vec![
        "--auto-select-desktop-capture-source=Entire screen".into(),
    ]));
    let alice = h.open("alice", &format!("/?room={ROOM}")).await?;
    let bob = h.open("bob", &format!("/?room={ROOM}")).await?;
    let a = join(&alice, ROOM, "alice").await?;
    let b = join(&bob, ROOM, "bob").await?;
    frames_grow(&bob, &a, 10, Duration::from_secs(20)).await?;
    frames_grow(&alice, &b, 10, Duration::from_secs(20)).await?;
    let tracks = metric(h, "tracks").await?;
    screenshot(&bob, "call-2", None).await?;

    // Shared with the button; the other page shows it on the stage.
    click_share(&alice).await?;
    let sent = expect_sending(&alice).await?;
    eprintln!("alice shares: {sent}");
    let decoded = expect_on_stage(&bob, &a, 0, 20).await?;
    let button = alice
        .find(Locator::Css("#share-screen"))
        .await?
        .text()
        .await?;
    if button != "Stop sharing" {
        return Err(format!("the share button says {button:?}").into());
    }
    // One more track on the server (plus the sound, if the capture has any).
    let with_share = metric(h, "tracks").await?;
    if with_share <= tracks {
        return Err(format!("tracks {tracks} before the share, {with_share} with it").into());
    }
    // Cameras go on beside it.
    frames_grow(&bob, &a, 10, Duration::from_secs(10)).await?;
    screenshot(&bob, "screen-share-1280x720", None).await?;
    screenshot(&bob, "screen-share-480x800", Some((480, 800))).await?;
    // Still decoding at the narrow size, still on the stage.
    expect_on_stage(&bob, &a, decoded, 10).await?;
    bob.set_window_size(1280, 720).await?;

    // Alice sees her own share, small, marked, with a Stop button.
    let own = expect_own_view(&alice, false).await?;
    eprintln!("alice's own view: {}", own["view"]);
    screenshot(&alice, "screen-share-presenter", None).await?;

    // A moderator mutes the share: alice's page pauses the share, not her
    // camera (the message names the track's source).
    let screen = mute_source(h, &a, "screen", true).await?;
    expect_own_view(&alice, true).await?;
    let cam = run_js(
        &alice,
        r#"return { button: document.querySelector('#mute-video').textContent,
  camBadge: !document.querySelector('.tile.local .badge.cam').hidden,
  notice: document.querySelector('#call-notice').textContent };"#,
        vec![],
    )
    .await?;
    if cam["button"] != "Camera off"
        || cam["camBadge"] != false
        || !cam["notice"]
            .as_str()
            .is_some_and(|n| n.contains("screen share"))
    {
        return Err(format!("after the share's mute ({screen}), alice's page: {cam}").into());
    }
    // Her camera still reaches bob.
    frames_grow(&bob, &a, 10, Duration::from_secs(10)).await?;
    mute_source(h, &a, "screen", false).await?;
    expect_own_view(&alice, false).await?;
    let decoded = expect_on_stage(&bob, &a, 0, 0).await?;
    expect_on_stage(&bob, &a, decoded, 10).await?;
    eprintln!("muted and unmuted by a moderator: the camera untouched");

    // Stopped with the own view's Stop: unpublished, the stage goes.
    alice
        .find(Locator::Css("#stop-presenting"))
        .await?
        .click()
        .await?;
    expect_gone(h, &bob, &alice, tracks).await?;
    eprintln!("stopped with the own view's Stop: gone");

    // Shared again, stopped with the Share button.
    click_share(&alice).await?;
    expect_sending(&alice).await?;
    expect_on_stage(&bob, &a, 0, 10).await?;
    click_share(&alice).await?;
    expect_gone(h, &bob, &alice, tracks).await?;
    eprintln!("stopped with the button: gone");

    // Shared again, and stopped the way the browser's own "Stop sharing"
    // does: the capture track ends.
    click_share(&alice).await?;
    expect_sending(&alice).await?;
    expect_on_stage(&bob, &a, 0, 10).await?;
    run_js(
        &alice,
        r#"const v = window.vela.shareStream().getVideoTracks()[0];
v.stop(); v.dispatchEvent(new Event('ended')); return true;"#,
        vec![],
    )
    .await?;
    expect_gone(h, &bob, &alice, tracks).await?;
    eprintln!("stopped by the browser: gone");
    // The call goes on both ways.
    frames_grow(&bob, &a, 10, Duration::from_secs(10)).await?;
    frames_grow(&alice, &b, 10, Duration::from_secs(10)).await?;
    Ok(())
}
