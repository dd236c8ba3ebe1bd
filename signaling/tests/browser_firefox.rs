//! Firefox users get the same call as Chromium users (issue 23): headless
//! Firefox ESR (Debian's `firefox-esr`, driven by puppeteer-core over
//! WebDriver BiDi, see `browser/firefox.rs`) in the web page.
//!
//! - Two Firefox pages in a room: no error, each decodes the other's video
//!   and audio, shows who speaks, keeps the call through a resumed socket and
//!   an ICE restart; a small tile gets the small layer (received frame size
//!   and the server's `layers_needed`), a large one the top layer, a hidden
//!   tile and a locally muted participant stop what they stop.
//! - Firefox and Chromium in a room, simulcast both ways: each receives the
//!   other at the layer its tile size asks for, and `layers_needed` pauses
//!   the layers nobody needs on both publishers.
//! - WHIP from Firefox to WHEP in Chromium.
//!
//! Firefox gathers ICE candidates only in a network namespace with a default
//! route: each test makes one (`netns::Link::routed`) and the server
//! advertises its end of the link. Needs root, `firefox-esr`, Node.js with
//! `npm ci` in `browser/node`, Chromium and chromedriver (scripts/test.sh
//! installs them). The tests take turns: each runs two browsers and a
//! server on a 2-core machine.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod browser;
mod netns;
mod quality;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use browser::whip_whep::{INBOUND, delete, negotiate};
use browser::{Harness, Page, TestResult, poll, run_js};
use quality::{Inbound, bytes_of, frames_grow, inbound, join, outbound, tile_width};
use serde_json::{Value, json};

/// The camera's width: the top layer; the half and quarter layers follow.
const TOP: u64 = 1280;
const HALF: u64 = 640;
const LOW: u64 = 320;

/// One test at a time in this binary.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `scenario` with a server reachable from a routed namespace for Firefox.
async fn run_with_firefox(
    test: &str,
    limit: Duration,
    scenario: impl AsyncFnOnce(&Harness, &netns::Link) -> TestResult,
) {
    quality::require_root();
    let _turn = TURN.lock().await;
    let link = netns::Link::routed().expect("a network namespace with a default route");
    let config = browser::netns_config(&[IpAddr::V4(link.host_ip)]);
    browser::run_with(test, limit, config, async |h| scenario(h, &link).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_firefox_pages_call_with_adaptive_stream() {
    run_with_firefox("firefox_call", Duration::from_secs(90), two_firefox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn firefox_and_chromium_receive_each_other_at_their_tile_layers() {
    run_with_firefox("firefox_chromium", Duration::from_secs(90), mixed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whip_from_firefox_reaches_whep_in_chromium() {
    run_with_firefox("firefox_whip", Duration::from_secs(60), whip_to_whep).await;
}

/// Fails if the page's status line shows an error.
async fn no_error(page: &impl Page, who: &str) -> TestResult {
    let status = run_js(
        page,
        "const s = document.querySelector('#status'); return { text: s.textContent, error: s.classList.contains('error') };",
        vec![],
    )
    .await?;
    if status["error"] != Value::Bool(false) {
        return Err(format!("{who}: the status line shows an error: {}", status["text"]).into());
    }
    Ok(())
}

/// Audio received from the others: packets and decoded samples.
async fn audio_in(page: &impl Page) -> TestResult<(u64, u64)> {
    let v = run_js(
        page,
        r#"let packets = 0, samples = 0;
(await window.vela.pc.getStats()).forEach((s) => {
  if (s.type !== 'inbound-rtp' || s.kind !== 'audio') return;
  packets += s.packetsReceived || 0;
  samples += s.totalSamplesReceived || 0;
});
return [packets, samples];"#,
        vec![],
    )
    .await?;
    Ok((v[0].as_u64().unwrap_or(0), v[1].as_u64().unwrap_or(0)))
}

/// The rids the server last asked this page's video to keep sending.
async fn layers_needed(page: &impl Page) -> TestResult<Vec<String>> {
    let v = run_js(page, "return window.vela.layersNeeded();", vec![]).await?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// Bytes each layer `q`, `h`, `f` of the page's video sent over `window`.
async fn growth(page: &impl Page, window: Duration) -> TestResult<[u64; 3]> {
    let before = outbound(page).await?;
    tokio::time::sleep(window).await;
    let after = outbound(page).await?;
    let g = |rid| bytes_of(&after, rid).saturating_sub(bytes_of(&before, rid));
    Ok([g("q"), g("h"), g("f")])
}

/// Waits until `page` receives the video of `from` (published by
/// `publisher`) `width` pixels wide.
async fn receives_width(
    page: &impl Page,
    who: &str,
    (publisher, from): (&impl Page, &str),
    width: u64,
    limit: Duration,
) -> TestResult<Inbound> {
    poll(
        &format!("{who} receives {from}'s video {width} wide"),
        limit,
        async || {
            let s = inbound(page, from).await?;
            Ok(if s.width == width {
                Ok(s)
            } else {
                // What the publisher is asked for and sends, for the failure report.
                let needed = layers_needed(publisher).await?;
                let out = outbound(publisher).await?;
                Err(format!(
                    "{s:?}; publisher layers_needed {needed:?}, sends {out}"
                ))
            })
        },
    )
    .await
}

/// Waits until the server asks `page` for exactly `rids` and the layers it
/// leaves out send nothing for a second.
async fn publishes_only(page: &impl Page, who: &str, rids: &[&str], limit: Duration) -> TestResult {
    poll(
        &format!("{who} sends only the layers {rids:?}"),
        limit,
        async || {
            let needed = layers_needed(page).await?;
            if needed != rids {
                return Ok(Err(format!("layers_needed {needed:?}")));
            }
            let g = growth(page, Duration::from_secs(1)).await?;
            let paused = ["q", "h", "f"]
                .iter()
                .zip(g)
                .all(|(rid, bytes)| rids.contains(rid) || bytes == 0);
            Ok(if paused {
                eprintln!("{who}: layers_needed {needed:?}, bytes per layer in 1 s {g:?}");
                Ok(())
            } else {
                Err(format!(
                    "layers_needed {needed:?}, bytes per layer in 1 s {g:?}"
                ))
            })
        },
    )
    .await
}

async fn two_firefox(h: &Harness, link: &netns::Link) -> TestResult {
    const ROOM: &str = "ffcall";
    let host = IpAddr::V4(link.host_ip);
    let path = format!("/?room={ROOM}");
    let alice = h.open_firefox("alice", &link.ns, host, &path).await?;
    let bob = h.open_firefox("bob", &link.ns, host, &path).await?;
    let started = Instant::now();
    let a = join(&alice, ROOM, "alice").await?;
    let b = join(&bob, ROOM, "bob").await?;

    for (page, who, from) in [(&alice, "alice", &b), (&bob, "bob", &a)] {
        poll(
            &format!("{who} decodes {from}'s video and audio"),
            Duration::from_secs(20),
            async || {
                let v = inbound(page, from).await?;
                let (packets, samples) = audio_in(page).await?;
                Ok(if v.frames > 30 && packets > 50 && samples > 0 {
                    Ok(())
                } else {
                    Err(format!(
                        "video {v:?}, audio packets {packets}, samples {samples}"
                    ))
                })
            },
        )
        .await?;
    }
    eprintln!(
        "both decode video and audio after {:.1?}",
        started.elapsed()
    );
    // Both fake microphones play a tone: alice's page shows bob speaking.
    poll(
        "alice's page shows bob speaking",
        Duration::from_secs(10),
        async || {
            let v = run_js(&alice, "return window.vela.speakingTiles();", vec![]).await?;
            Ok(if v.as_array().is_some_and(|a| a.contains(&json!(b))) {
                Ok(())
            } else {
                Err(format!("speaking tiles {v}"))
            })
        },
    )
    .await?;

    // Bob's signaling socket drops and his page resumes the session; alice
    // restarts ICE (a new offer and answer). The call goes on both ways.
    run_js(&bob, "window.vela.dropSocket(); return true;", vec![]).await?;
    run_js(&alice, "window.vela.restartIce(); return true;", vec![]).await?;
    for (page, who, counter) in [(&bob, "bob", "resumes"), (&alice, "alice", "iceRestarts")] {
        poll(
            &format!("{who}'s page counts one of {counter}"),
            Duration::from_secs(10),
            async || {
                let c = run_js(page, "return window.vela.counters();", vec![]).await?;
                Ok(if c[counter] == json!(1) {
                    Ok(())
                } else {
                    Err(c.to_string())
                })
            },
        )
        .await?;
    }
    frames_grow(&alice, &b, 10, Duration::from_secs(10)).await?;
    frames_grow(&bob, &a, 10, Duration::from_secs(10)).await?;

    // Tiles shown 320 px wide (the grid's fill the stage: two are larger):
    // the quarter layer, and the server asks each publisher for nothing more.
    tile_width(&alice, &b, Some(320)).await?;
    tile_width(&bob, &a, Some(320)).await?;
    for (page, who, publisher, from) in [(&alice, "alice", &bob, &b), (&bob, "bob", &alice, &a)] {
        let s = receives_width(page, who, (publisher, from), LOW, Duration::from_secs(15)).await?;
        eprintln!("{who} gets {from}'s low layer: {s:?}");
    }
    publishes_only(&alice, "alice", &["q"], Duration::from_secs(10)).await?;
    publishes_only(&bob, "bob", &["q"], Duration::from_secs(10)).await?;
    no_error(&alice, "alice").await?;
    no_error(&bob, "bob").await?;

    // Alice shows bob large: bob's top layer, 1280 wide.
    tile_width(&alice, &b, Some(960)).await?;
    let shown = Instant::now();
    let s = receives_width(&alice, "alice", (&bob, &b), TOP, Duration::from_secs(25)).await?;
    eprintln!(
        "alice gets bob's top layer after {:.1?}: {s:?}",
        shown.elapsed()
    );
    frames_grow(&alice, &b, 10, Duration::from_secs(5)).await?;

    // Alice hides bob's tile: bob sends no video at all.
    run_js(
        &alice,
        "return window.vela.setTileLayout(args[0], null, true);",
        vec![json!(b)],
    )
    .await?;
    publishes_only(&bob, "bob", &[], Duration::from_secs(10)).await?;

    // Bob mutes alice on his page: her audio stops reaching him.
    run_js(
        &bob,
        "window.vela.setRemoteMuted(args[0], true);",
        vec![json!(a)],
    )
    .await?;
    poll(
        "alice's audio stops reaching bob",
        Duration::from_secs(10),
        async || {
            let (before, _) = audio_in(&bob).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (after, _) = audio_in(&bob).await?;
            Ok(if after == before {
                Ok(())
            } else {
                Err(format!("{} packets in 1 s", after - before))
            })
        },
    )
    .await?;
    no_error(&alice, "alice").await?;
    no_error(&bob, "bob").await?;
    Ok(())
}

async fn mixed(h: &Harness, link: &netns::Link) -> TestResult {
    const ROOM: &str = "mixed";
    let path = format!("/?room={ROOM}");
    let fox = h
        .open_firefox("firefox", &link.ns, IpAddr::V4(link.host_ip), &path)
        .await?;
    let chrome = h.open("chromium", &path).await?;
    let f = join(&fox, ROOM, "firefox").await?;
    let c = join(&chrome, ROOM, "chromium").await?;

    // Small tiles (320 px): each gets the other's quarter layer; both
    // publishers send it alone.
    tile_width(&chrome, &f, Some(320)).await?;
    tile_width(&fox, &c, Some(320)).await?;
    let s = receives_width(
        &chrome,
        "chromium",
        (&fox, &f),
        LOW,
        Duration::from_secs(20),
    )
    .await?;
    eprintln!("chromium gets firefox's low layer: {s:?}");
    let s = receives_width(&fox, "firefox", (&chrome, &c), LOW, Duration::from_secs(20)).await?;
    eprintln!("firefox gets chromium's low layer: {s:?}");
    publishes_only(&fox, "firefox", &["q"], Duration::from_secs(10)).await?;
    publishes_only(&chrome, "chromium", &["q"], Duration::from_secs(10)).await?;

    // Chromium shows Firefox large (its top layer), Firefox shows Chromium
    // at 600 px (its half layer).
    tile_width(&chrome, &f, Some(960)).await?;
    tile_width(&fox, &c, Some(600)).await?;
    let shown = Instant::now();
    let s = receives_width(
        &chrome,
        "chromium",
        (&fox, &f),
        TOP,
        Duration::from_secs(25),
    )
    .await?;
    eprintln!(
        "chromium gets firefox's top layer after {:.1?}: {s:?}",
        shown.elapsed()
    );
    let s = receives_width(
        &fox,
        "firefox",
        (&chrome, &c),
        HALF,
        Duration::from_secs(25),
    )
    .await?;
    eprintln!(
        "firefox gets chromium's half layer after {:.1?}: {s:?}",
        shown.elapsed()
    );
    frames_grow(&chrome, &f, 10, Duration::from_secs(5)).await?;
    frames_grow(&fox, &c, 10, Duration::from_secs(5)).await?;
    publishes_only(&chrome, "chromium", &["q", "h"], Duration::from_secs(10)).await?;

    // Firefox scales each of its layers by its rid.
    let out = outbound(&fox).await?;
    let widths: Vec<u64> = ["q", "h", "f"]
        .iter()
        .map(|rid| out[rid]["frameWidth"].as_u64().unwrap_or(0))
        .collect();
    eprintln!("firefox sends {out}");
    if widths != [LOW, HALF, TOP] {
        return Err(format!("firefox's layers q, h, f are {widths:?} wide").into());
    }
    no_error(&fox, "firefox").await?;
    no_error(&chrome, "chromium").await?;
    Ok(())
}

async fn whip_to_whep(h: &Harness, link: &netns::Link) -> TestResult {
    const ROOM: &str = "ffwhip";
    let publisher = h
        .open_firefox("whip-firefox", &link.ns, IpAddr::V4(link.host_ip), "/")
        .await?;
    let viewer = h.open("whep-chromium", "/").await?;
    let publishing = [ROOM, "ff-publisher", "Firefox"];
    let (whip, whip_location) = negotiate(h, &publisher, "whip", publishing).await?;
    let (whep, whep_location) = negotiate(h, &viewer, "whep", [ROOM, "viewer", "Viewer"]).await?;
    let seen = poll(
        "Chromium's WHEP viewer decodes Firefox's video and receives its audio",
        Duration::from_secs(20),
        async || {
            let seen = run_js(&viewer, INBOUND, vec![json!("whep")]).await?;
            let n = |k: &str| seen[k].as_u64().unwrap_or(0);
            Ok(
                if n("framesDecoded") > 10 && n("audioPackets") > 20 && n("frameWidth") > 0 {
                    Ok(seen)
                } else {
                    Err(seen.to_string())
                },
            )
        },
    )
    .await?;
    eprintln!("WHEP viewer received: {seen}");
    delete(h, "WHIP", &whip_location, &whip).await?;
    delete(h, "WHEP", &whep_location, &whep).await?;
    Ok(())
}
