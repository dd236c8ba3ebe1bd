//! Devices on the web page: before joining, a preview with a microphone
//! level meter and the browser's cameras to choose from; the choice is
//! remembered and used by the join; during the call, switching the camera
//! replaces the track its sender sends: the other page keeps receiving
//! the same track (its server id), frames keep decoding, and nothing is
//! renegotiated or republished.
//!
//! Chromium with three fake cameras. Plain loopback. Needs Chromium and chromedriver.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod browser;
mod quality;

use std::time::Duration;

use browser::{Harness, TestResult, poll, run_js};
use fantoccini::{Client, Locator};
use quality::{frames_grow, join, metric, record_messages, recorded};
use serde_json::{Value, json};

const ROOM: &str = "devices";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_camera_chosen_before_and_switched_during_the_call() {
    browser::run("browser_devices", Duration::from_secs(90), scenario).await;
}

async fn devices(client: &Client) -> TestResult<Value> {
    run_js(client, "return window.vela.devices();", vec![]).await
}

/// Picks `device` in `client`'s select of `kind`, as a person does.
async fn choose(client: &Client, kind: &str, device: &str) -> TestResult {
    // As a person would: only once the list offers it (opening the panel
    // lists the devices again, asynchronously; a value set before that
    // matched no option, and the page was asked for no device at all).
    poll(
        "the device is offered",
        Duration::from_secs(5),
        async || {
            let offered = run_js(
                client,
                r#"const [kind, id] = args;
return [...document.querySelector('#sel-' + kind).options].some((o) => o.value === id);"#,
                vec![json!(kind), json!(device)],
            )
            .await?;
            Ok(if offered == true {
                Ok(())
            } else {
                Err(format!("{kind} {device} not in the list yet"))
            })
        },
    )
    .await?;
    run_js(
        client,
        r#"const [kind, id] = args;
const sel = document.querySelector('#sel-' + kind);
sel.value = id;
sel.dispatchEvent(new Event('change'));
return true;"#,
        vec![json!(kind), json!(device)],
    )
    .await?;
    Ok(())
}

/// The server id and decoded frames of `from`'s video on `client`.
async fn received(client: &Client, from: &str) -> TestResult<(String, u64)> {
    let v = run_js(client, "return await window.vela.videoStats();", vec![]).await?;
    Ok((
        v[from]["trackId"].as_str().unwrap_or_default().to_owned(),
        v[from]["framesDecoded"].as_u64().unwrap_or(0),
    ))
}

async fn scenario(h: &Harness) -> TestResult {
    h.set_chromium_args(Some(vec![
        "--use-fake-device-for-media-stream=device-count=3".into(),
    ]));
    let alice = h.open("alice", &format!("/?room={ROOM}")).await?;

    // Before joining: the preview lists the cameras; the meter moves.
    alice
        .find(Locator::Css("#devices-box summary"))
        .await?
        .click()
        .await?;
    let listed = poll(
        "the preview with two cameras and a moving meter",
        Duration::from_secs(15),
        async || {
            let d = devices(&alice).await?;
            let cams = d["options"]["videoinput"].as_array().map_or(0, Vec::len);
            let ok = d["preview"] == true
                && cams >= 2
                && d["peak"].as_f64() > Some(0.01)
                && d["camera"].is_string();
            Ok(if ok { Ok(d) } else { Err(d.to_string()) })
        },
    )
    .await?;
    eprintln!("before joining: {listed}");
    let cams: Vec<String> = listed["options"]["videoinput"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let first = listed["camera"].as_str().unwrap().to_owned();
    // Chromium's second fake camera is a depth camera (16-bit grey) that
    // does not encode; its third gives ordinary frames.
    let labels = listed["labels"]["videoinput"].as_array().unwrap();
    let third = labels
        .iter()
        .position(|l| l == "fake_device_2")
        .ok_or("no third fake camera")?;
    let other = cams[third].clone();
    if other == first {
        return Err(format!("the preview opened the third camera: {listed}").into());
    }
    choose(&alice, "videoinput", &other).await?;
    poll(
        "the preview shows the chosen camera",
        Duration::from_secs(10),
        async || {
            let d = devices(&alice).await?;
            Ok(
                if d["camera"] == other.as_str() && d["prefs"]["videoinput"] == other.as_str() {
                    Ok(())
                } else {
                    Err(d.to_string())
                },
            )
        },
    )
    .await?;

    // Remembered across a reload.
    alice.refresh().await?;
    let d = devices(&alice).await?;
    if d["prefs"]["videoinput"] != other.as_str() {
        return Err(format!("not remembered: {d}").into());
    }

    // The join uses it.
    let a = join(&alice, ROOM, "alice").await?;
    let d = devices(&alice).await?;
    if d["camera"] != other.as_str() {
        return Err(format!("joined with another camera: {d}").into());
    }
    let bob = h.open("bob", &format!("/?room={ROOM}")).await?;
    join(&bob, ROOM, "bob").await?;
    frames_grow(&bob, &a, 15, Duration::from_secs(20)).await?;
    let (track, _) = received(&bob, &a).await?;
    let tracks = metric(h, "tracks").await?;
    record_messages(&bob).await?;
    record_messages(&alice).await?;

    // During the call, from the panel: the first camera again.
    alice
        .find(Locator::Css("#devices-toggle"))
        .await?
        .click()
        .await?;
    choose(&alice, "videoinput", &first).await?;
    poll(
        "alice sends from the first camera",
        Duration::from_secs(10),
        async || {
            let d = devices(&alice).await?;
            Ok(if d["camera"] == first.as_str() && d["switches"] == 1 {
                Ok(())
            } else {
                Err(d.to_string())
            })
        },
    )
    .await?;
    frames_grow(&bob, &a, 30, Duration::from_secs(15)).await?;
    let (after, _) = received(&bob, &a).await?;
    if after != track || track.is_empty() {
        return Err(format!("bob receives {after:?} after the switch, {track:?} before").into());
    }
    // The same track on the server, nothing renegotiated or republished.
    let now = metric(h, "tracks").await?;
    let seen_b = recorded(&bob).await?;
    let seen_a = recorded(&alice).await?;
    let churn = |l: &[String]| {
        l.iter()
            .any(|t| t == "offer" || t == "answer" || t.starts_with("track_"))
    };
    if now != tracks || churn(&seen_b) || churn(&seen_a) {
        return Err(
            format!("tracks {tracks} -> {now}; bob saw {seen_b:?}; alice saw {seen_a:?}").into(),
        );
    }
    let dir = std::env::var("VELA_SCREENSHOT_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/screenshots").into());
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        format!("{dir}/devices-in-call.png"),
        alice.screenshot().await?,
    )?;
    Ok(())
}
