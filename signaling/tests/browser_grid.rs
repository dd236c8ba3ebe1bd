//! The page's layout with 12 participants in a small window: the tiles of
//! one page fill the stage, the tiles beyond it are not shown and their
//! video is paused through `track_settings` (the server forwards exactly
//! the shown tiles' video: its subscriptions), turning the page moves the
//! video with it, a pinned tile takes the stage with the others in a strip.
//! Screenshots of a 6-person and a 12-person call go to target/screenshots.
//!
//! The 11 others are tabs of one Chromium publishing a small camera
//! without a microphone and subscribing to nothing (a token without
//! canSubscribe): cheap enough for 2 cores. Needs Chromium and chromedriver.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod browser;
mod quality;

use std::collections::BTreeSet;
use std::time::Duration;

use browser::{Harness, TestResult, poll, run_js};
use fantoccini::Client;
use quality::join;
use serde_json::{Value, json};
use vela_media::core::{ConnectionId, ParticipantId, RoomId};
use vela_signaling::token::{TokenKeys, VideoGrant};

const ROOM: &str = "grid";
const OTHERS: usize = 11;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_tiles_shown_receive_video() {
    browser::run("browser_grid", Duration::from_secs(180), scenario).await;
}

/// A token that publishes but subscribes to nothing.
fn publisher_token(identity: &str) -> String {
    TokenKeys::new(vela_config::DEV_API_KEY, vela_config::DEV_API_SECRET)
        .issue(
            identity,
            Some(identity),
            VideoGrant {
                room: Some(ROOM.into()),
                room_join: true,
                can_subscribe: Some(false),
                ..VideoGrant::default()
            },
            Duration::from_secs(600),
        )
        .unwrap()
}

fn screenshot_dir() -> String {
    std::env::var("VELA_SCREENSHOT_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/screenshots").into())
}

async fn screenshot(client: &Client, name: &str) -> TestResult {
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::write(format!("{dir}/{name}.png"), client.screenshot().await?)?;
    eprintln!("screenshot {dir}/{name}.png");
    Ok(())
}

/// The viewer's layout and, per remote participant, its video's server track id.
async fn page_state(viewer: &Client) -> TestResult<Value> {
    run_js(
        viewer,
        r#"const v = await window.vela.videoStats();
const tracks = {};
for (const [pid, s] of Object.entries(v)) tracks[pid] = { trackId: s.trackId, frames: s.framesDecoded };
return { layout: window.vela.layout(), tracks };"#,
        vec![],
    )
    .await
}

/// The server track ids forwarded to `viewer` now, and all it subscribes to.
async fn server_side(h: &Harness, viewer: ConnectionId) -> TestResult<(BTreeSet<String>, usize)> {
    let media = h.media().ok_or("no server")?;
    let subs = media
        .with_room(&RoomId::new(ROOM)?, move |sfu, _| {
            sfu.subscriptions_of(viewer)
        })
        .await?;
    let on = subs
        .iter()
        .filter(|(_, on)| *on)
        .map(|(t, _)| t.to_string())
        .collect();
    Ok((on, subs.len()))
}

/// Waits until the server forwards to the viewer exactly the video of the
/// remote tiles its page shows (and those decode); returns the shown ids.
async fn expect_only_shown(
    h: &Harness,
    viewer: &Client,
    conn: ConnectionId,
    what: &str,
) -> TestResult<Vec<String>> {
    let mut frames_before: Option<Value> = None;
    poll(what, Duration::from_secs(30), async || {
        let st = page_state(viewer).await?;
        let shown: Vec<String> = st["layout"]["shown"]
            .as_array()
            .ok_or("no layout")?
            .iter()
            .filter_map(|v| v.as_str())
            .filter(|k| *k != "local")
            .map(str::to_owned)
            .collect();
        let tracks = st["tracks"].as_object().ok_or("no tracks")?;
        let want: BTreeSet<String> = shown
            .iter()
            .filter_map(|pid| tracks.get(pid)?["trackId"].as_str().map(str::to_owned))
            .collect();
        let (on, total) = server_side(h, conn).await?;
        let pages = st["layout"]["pages"].as_u64().unwrap_or(0);
        // The shown tiles' video decodes: frames grow between two looks.
        let growing = frames_before.as_ref().is_some_and(|before| {
            shown.iter().all(|pid| tracks.get(pid).and_then(|t| t["frames"].as_u64()) > before.get(pid).and_then(|t| t["frames"].as_u64()))
        });
        frames_before = Some(st["tracks"].clone());
        let ok = total == OTHERS && pages >= 2 && want.len() == shown.len()
            && !shown.is_empty() && on == want && growing;
        Ok(if ok {
            Ok(shown)
        } else {
            Err(format!("shown {shown:?} (their tracks {want:?}), server forwards {on:?} of {total}, pages {pages}, growing {growing}"))
        })
    })
    .await
}

async fn scenario(h: &Harness) -> TestResult {
    let viewer = h.open("viewer", &format!("/?room={ROOM}")).await?;
    let v = join(&viewer, ROOM, "viewer").await?;
    let conn = ConnectionId(
        v.parse::<ParticipantId>()
            .map_err(|e| format!("{v}: {e}"))?
            .0,
    );

    // The others: tabs of one browser, each a small camera, no microphone.
    let others = h.open("others", &format!("/?room={ROOM}")).await?;
    let mut tabs = vec![others.window().await?];
    for _ in 1..OTHERS {
        let w = others.new_window(true).await?;
        tabs.push(w.handle);
    }
    for (i, tab) in tabs.iter().enumerate() {
        others.switch_to_window(tab.clone()).await?;
        if i > 0 {
            others.goto(&h.url(&format!("/?room={ROOM}"))).await?;
        }
        let name = format!("p{:02}", i + 1);
        run_js(
            &others,
            r#"const [room, name, token] = args;
await window.vela.join(room, name, token, { media: { video: { width: 320, height: 180, frameRate: 15 } } });
return window.vela.participantId;"#,
            vec![json!(ROOM), json!(name), json!(publisher_token(&name))],
        )
        .await
        .map_err(|e| format!("{name}: join: {e}"))?;
        if i == 4 {
            // Six in the call: the viewer's screenshot at its full size.
            poll(
                "six tiles on the viewer's page",
                Duration::from_secs(20),
                async || {
                    let st = page_state(&viewer).await?;
                    let n = st["layout"]["shown"].as_array().map_or(0, Vec::len);
                    Ok(
                        if n == 6
                            && st["tracks"].as_object().is_some_and(|t| {
                                t.values().all(|x| x["frames"].as_u64() > Some(0)) && t.len() == 5
                            })
                        {
                            Ok(())
                        } else {
                            Err(st.to_string())
                        },
                    )
                },
            )
            .await?;
            screenshot(&viewer, "call-6").await?;
        }
    }
    eprintln!("{OTHERS} others joined");

    // A small window: one page holds fewer than twelve tiles.
    viewer.set_window_size(640, 480).await?;
    let first =
        expect_only_shown(h, &viewer, conn, "only the first page's tiles get video").await?;
    let st = page_state(&viewer).await?;
    eprintln!(
        "page 1 of {}: {} tiles {:?}",
        st["layout"]["pages"],
        first.len() + 1,
        st["layout"]["tiles"]
    );
    screenshot(&viewer, "call-12-640x480").await?;
    // The tiles fill the area: the largest tile is most of its width or height.
    let sizes = &st["layout"]["tiles"];
    let w0 = sizes[0]["w"].as_u64().unwrap_or(0);
    if w0 < 150 {
        return Err(format!("tiles too small: {sizes}").into());
    }

    // The next page: its tiles get video, the first page's no longer.
    run_js(&viewer, "window.vela.setPage(1); return true;", vec![]).await?;
    let second =
        expect_only_shown(h, &viewer, conn, "only the second page's tiles get video").await?;
    if second.iter().any(|p| first.contains(p)) {
        return Err(format!("pages overlap: {first:?} {second:?}").into());
    }

    // A pinned tile takes the stage; the strip holds what fits in a row.
    let pinned = second[0].clone();
    run_js(
        &viewer,
        "window.vela.pinTile(args[0]); return true;",
        vec![json!(pinned)],
    )
    .await?;
    let strip =
        expect_only_shown(h, &viewer, conn, "the pinned tile and the strip get video").await?;
    let l = page_state(&viewer).await?["layout"].clone();
    if l["staged"] != true || l["pinned"] != pinned.as_str() || !strip.contains(&pinned) {
        return Err(format!("pinned {pinned}: {l}").into());
    }
    screenshot(&viewer, "call-12-pinned").await?;
    run_js(&viewer, "window.vela.pinTile(null); return true;", vec![]).await?;
    expect_only_shown(h, &viewer, conn, "back to the first page").await?;
    Ok(())
}
