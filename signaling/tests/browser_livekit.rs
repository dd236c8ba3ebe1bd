//! LiveKit's browser SDK against vela (issue 20, item 5): `livekit-client`
//! (the npm package, pinned by signaling/tests/livekit/node/package-lock.json
//! and installed by scripts/livekit-sdks.sh) runs in one headless Chromium
//! and joins a room over `/rtc`; vela's own page joins the same room in
//! another. Each publishes its fake camera, and each must decode the other's
//! video: the LiveKit page through a `RemoteVideoTrack` attached to a
//! `<video>` (frames counted by `requestVideoFrameCallback` and by the
//! receiver's `framesDecoded`), vela's page through `window.vela.videoStats`.
//! Then a chat message each way (topic `chat`, the JSON LiveKit's chat
//! sends): the page's `sendData` reaches the SDK's `DataReceived`, the SDK's
//! `publishData` shows in the page's chat under the LiveKit participant's name.
//!
//! The SDK's UMD bundle is injected as a `<script>` into a plain page of the
//! server (`/healthz`: same origin as `/rtc`, and a secure context on
//! 127.0.0.1 so the camera works); nothing is fetched from elsewhere.
//!
//! Needs Chromium and chromedriver (see `browser/mod.rs`) and npm.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod browser;
mod quality;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use browser::{Harness, TestResult, poll, run_js};
use quality::{inbound, join, remote_ids};
use serde_json::json;

const ROOM: &str = "lkbrowser";
/// Video frames each side must decode of the other.
const MIN_FRAMES: u64 = 30;
/// How long each side may take to get there (a loaded 2-core machine).
const MEDIA_LIMIT: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn livekit_client_and_vela_page_see_each_other() {
    let bundle = livekit_client_bundle().await;
    browser::run(
        "browser_livekit",
        Duration::from_secs(150),
        async move |h| scenario(h, &bundle).await,
    )
    .await;
}

/// The workspace's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Installs LiveKit's SDKs with scripts/livekit-sdks.sh (at once when they
/// are up to date) and reads livekit-client's UMD bundle.
async fn livekit_client_bundle() -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(root().join("scripts/livekit-sdks.sh"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status(),
    )
    .await
    .expect("scripts/livekit-sdks.sh timed out")
    .expect("scripts/livekit-sdks.sh runs");
    assert!(out.success(), "scripts/livekit-sdks.sh failed");
    let path = root().join(
        "signaling/tests/livekit/node/node_modules/livekit-client/dist/livekit-client.umd.js",
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Loads the bundle into the page, joins `args[1]` (the server's ws URL)
/// with token `args[2]`, publishes the camera and keeps, per remote video
/// track, the frames its `<video>` presented (`window.lk.shown`).
const LIVEKIT_JOIN: &str = r#"
const [bundle, url, token] = args;
const script = document.createElement('script');
script.textContent = bundle;
document.documentElement.appendChild(script);
if (!window.LivekitClient) throw new Error('the livekit-client bundle defined no LivekitClient');
const { Room, RoomEvent, Track } = window.LivekitClient;
const room = new Room({ adaptiveStream: false, dynacast: false });
const lk = (window.lk = { room, shown: {}, tracks: {}, events: [], data: [] });
room.on(RoomEvent.TrackSubscribed, (track, publication, participant) => {
  lk.events.push('subscribed ' + participant.identity + ' ' + track.kind);
  if (track.kind !== Track.Kind.Video) return;
  const key = participant.identity;
  const video = track.attach();
  video.muted = true;
  video.width = 320;
  video.height = 240;
  document.documentElement.appendChild(video);
  lk.tracks[key] = track;
  lk.shown[key] = 0;
  const count = () => { lk.shown[key] += 1; video.requestVideoFrameCallback(count); };
  video.requestVideoFrameCallback(count);
  video.play().catch((e) => lk.events.push('play: ' + e));
});
room.on(RoomEvent.DataReceived, (payload, participant, kind, topic) => {
  lk.data.push({ from: participant ? participant.identity : null, topic: topic || null, text: new TextDecoder().decode(payload) });
});
room.on(RoomEvent.Disconnected, (reason) => lk.events.push('disconnected ' + reason));
await room.connect(url, token);
await room.localParticipant.setCameraEnabled(true);
return room.localParticipant.sid;
"#;

/// Per remote identity: frames presented and the receiver's framesDecoded.
const LIVEKIT_RECEIVED: &str = r#"
const out = {};
for (const [who, track] of Object.entries(window.lk.tracks)) {
  let decoded = 0;
  const report = await track.receiver.getStats();
  report.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') decoded = s.framesDecoded || 0; });
  out[who] = { shown: window.lk.shown[who], decoded };
}
return { received: out, state: window.lk.room.state, events: window.lk.events };
"#;

async fn scenario(h: &Harness, bundle: &str) -> TestResult {
    let vela = h.open("vela", &format!("/?room={ROOM}")).await?;
    let livekit = h.open("livekit", "/healthz").await?;

    let vela_pid = join(&vela, ROOM, "vela-page").await?;
    let token = h.dev_token(ROOM, "lk-web", "LiveKit web").await?;
    let ws_url = h.base_url.replacen("http://", "ws://", 1);
    let sid = run_js(
        &livekit,
        LIVEKIT_JOIN,
        vec![json!(bundle), json!(ws_url), json!(token)],
    )
    .await
    .map_err(|e| format!("livekit-client: join and publish: {e}"))?;
    eprintln!("vela's page is {vela_pid}; livekit-client joined as {sid}");

    // LiveKit's page decodes the vela page's camera.
    let seen = poll(
        "livekit-client decodes the vela page's video",
        MEDIA_LIMIT,
        async || {
            let v = run_js(&livekit, LIVEKIT_RECEIVED, vec![]).await?;
            let frames = v["received"].as_object().and_then(|m| {
                m.values().find_map(|r| {
                    let shown = r["shown"].as_u64().unwrap_or(0);
                    let decoded = r["decoded"].as_u64().unwrap_or(0);
                    (shown >= MIN_FRAMES && decoded >= MIN_FRAMES).then_some(r.clone())
                })
            });
            Ok(frames.ok_or_else(|| v.to_string()))
        },
    )
    .await?;
    eprintln!("livekit-client received: {seen}");

    // vela's page decodes the LiveKit participant's camera.
    let from = poll(
        "vela's page shows the LiveKit participant",
        MEDIA_LIMIT,
        async || {
            let ids = remote_ids(&vela).await?;
            Ok(match ids.as_slice() {
                [one] => Ok(one.clone()),
                _ => Err(format!("remote tiles {ids:?}")),
            })
        },
    )
    .await?;
    let got = poll(
        "vela's page decodes livekit-client's video",
        MEDIA_LIMIT,
        async || {
            let seen = inbound(&vela, &from).await?;
            Ok(if seen.frames >= MIN_FRAMES && seen.width > 0 {
                Ok(seen)
            } else {
                Err(format!("{seen:?}"))
            })
        },
    )
    .await?;
    eprintln!("vela's page received from {from}: {got:?}");

    // Chat from vela's page to livekit-client (on its subscriber connection's
    // `_reliable` channel). A message sent before that channel is open is
    // not delivered (docs/livekit.md): sent again every 2 s until one is seen.
    let mut sent = 0;
    let heard = poll(
        "livekit-client receives the vela page's chat message",
        Duration::from_secs(20),
        async || {
            let v = run_js(&livekit, "return window.lk.data;", vec![]).await?;
            if let Some(m) = v.as_array().and_then(|a| {
                a.iter().find(|m| {
                    m["topic"] == "chat"
                        && m["text"]
                            .as_str()
                            .is_some_and(|t| t.contains("hello from vela"))
                })
            }) {
                return Ok(Ok(m.clone()));
            }
            if sent % 8 == 0 {
                // `sendData` with LiveKit's chat JSON, as the page's chat
                // form does.
                run_js(
                    &vela,
                    r#"const message = JSON.stringify({ id: 'vela-' + args[0], timestamp: Date.now(), message: 'hello from vela ' + args[0] });
window.vela.sendData(message, 'chat');
return true;"#,
                    vec![json!(sent)],
                )
                .await?;
            }
            sent += 1;
            Ok(Err(format!("data seen: {v}")))
        },
    )
    .await?;
    eprintln!("livekit-client received: {heard}");

    // And back: LiveKit's chat JSON on topic `chat`, shown by vela's page.
    run_js(
        &livekit,
        r#"const message = JSON.stringify({ id: 'lk-1', timestamp: Date.now(), message: 'hello from livekit' });
await window.lk.room.localParticipant.publishData(new TextEncoder().encode(message), { reliable: true, topic: 'chat' });
return true;"#,
        vec![],
    )
    .await?;
    let shown = poll(
        "vela's page shows livekit-client's chat message",
        Duration::from_secs(10),
        async || {
            let v = run_js(&vela, "return window.vela.chat();", vec![]).await?;
            Ok(v.as_array()
                .and_then(|a| {
                    a.iter()
                        .find(|m| m["text"] == "hello from livekit" && m["from"] == "LiveKit web")
                        .cloned()
                })
                .ok_or_else(|| format!("chat: {v}")))
        },
    )
    .await?;
    eprintln!("vela's page shows: {shown}");

    // Both still flowing, and the LiveKit client still connected.
    let v = run_js(&livekit, LIVEKIT_RECEIVED, vec![]).await?;
    if v["state"] != "connected" {
        return Err(format!("livekit-client is no longer connected: {v}").into());
    }
    // What the SDK warned about (a request vela refused, a fallback): for
    // the log, so a reader sees where vela differs from LiveKit's server.
    let warnings = run_js(
        &livekit,
        "return (window.__velaLogs || []).filter((l) => / (warn|error|uncaught|unhandledrejection): /.test(l));",
        vec![],
    )
    .await?;
    eprintln!("livekit-client's warnings and errors: {warnings:#}");
    Ok(())
}
