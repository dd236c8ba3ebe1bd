//! End to end in the page: Ann (one tab) calls Ben (two tabs of one
//! browser, signed in once). Both of Ben's tabs ring; one accepts; audio and
//! video flow both ways (getStats); the other tab stops ringing (answered
//! elsewhere). Ben moves the call to the other tab, and Ann's received media
//! resumes within one second (measured in her page from getStats every
//! 100 ms), without Ben leaving and rejoining. Both histories show the call
//! as answered, with the device that answered. Then an audio call: audio
//! flows and neither side opens its camera.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver`; see `browser/mod.rs`.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod browser;

use std::time::Duration;

use browser::{Harness, TestResult, poll, run_js};
use fantoccini::Client;
use fantoccini::wd::WindowHandle;
use serde_json::{Value, json};

const PW: &str = "correct horse battery";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_rings_every_tab_is_answered_in_one_and_moves_to_the_other() {
    browser::run("browser_calls", Duration::from_secs(180), scenario).await;
}

/// Ben's browser: one WebDriver session, two tabs.
struct Tabs {
    client: Client,
    first: WindowHandle,
    second: WindowHandle,
}

impl Tabs {
    async fn js(&self, second: bool, body: &str, args: Vec<Value>) -> TestResult<Value> {
        let w = if second { &self.second } else { &self.first };
        self.client.switch_to_window(w.clone()).await?;
        run_js(&self.client, body, args).await
    }
}

/// Waits until `check` (run in the page) returns a truthy `ok`.
async fn until(what: &str, c: &Client, body: &str, args: Vec<Value>) -> TestResult<Value> {
    poll(what, Duration::from_secs(20), async || {
        let v = run_js(c, body, args.clone()).await?;
        Ok(if v["ok"] == true {
            Ok(v)
        } else {
            Err(v.to_string())
        })
    })
    .await
}

async fn until_tab(what: &str, t: &Tabs, second: bool, body: &str) -> TestResult<Value> {
    poll(what, Duration::from_secs(20), async || {
        let v = t.js(second, body, vec![]).await?;
        Ok(if v["ok"] == true {
            Ok(v)
        } else {
            Err(v.to_string())
        })
    })
    .await
}

/// Media from the other side: `{ok, video, audio}` summed over remote participants.
const MEDIA_IN: &str = r#"
const s = await window.vela.stats();
const video = Object.values(s.video).reduce((a, b) => a + b, 0);
const audio = Object.values(s.audio).reduce((a, b) => a + b, 0);
return { ok: video > 30 && audio > 50, video, audio, joined: window.vela.joined };
"#;

/// In an audio call: no camera track is sent, the camera button is off, and
/// the other side's audio arrives.
const AUDIO_ONLY: &str = r#"
const pc = window.vela.pc;
if (!pc || !window.vela.joined) return { ok: false, joined: window.vela.joined };
const cameras = pc.getSenders().filter((x) => x.track && x.track.kind === 'video').length;
const s = await window.vela.stats();
const audio = Object.values(s.audio).reduce((a, b) => a + b, 0);
const button = document.querySelector('#mute-video').disabled;
return { ok: cameras === 0 && button && audio > 50, cameras, button, audio };
"#;

/// Starts sampling inbound video frames and audio packets every 100 ms.
const START_SAMPLER: &str = r#"
const pc = window.vela.pc;
const seen = { video: new Map(), audio: new Map() };
const progress = { video: [], audio: [] };
window.__sampler = { seen, progress, start: performance.now(), timer: setInterval(async () => {
  let report;
  try { report = await window.vela.pc.getStats(); } catch (e) { return; }
  const now = performance.now();
  const moved = { video: false, audio: false };
  report.forEach((s) => {
    if (s.type !== 'inbound-rtp') return;
    const kind = s.kind || s.mediaType;
    const value = kind === 'video' ? (s.framesDecoded || 0) : (s.packetsReceived || 0);
    const key = s.ssrc;
    const before = seen[kind] && seen[kind].get(key);
    if (!seen[kind]) return;
    if ((before === undefined && value > 0) || (before !== undefined && value > before)) moved[kind] = true;
    seen[kind].set(key, value);
  });
  for (const k of ['video', 'audio']) if (moved[k]) progress[k].push(now);
}, 100) };
return true;
"#;

/// Stops the sampler; the longest stretch without progress, per kind (ms).
const STOP_SAMPLER: &str = r#"
const s = window.__sampler;
clearInterval(s.timer);
const end = performance.now();
const gap = (times) => {
  let longest = 0, last = s.start;
  for (const t of times) { longest = Math.max(longest, t - last); last = t; }
  return Math.max(longest, end - last);
};
return { video: gap(s.progress.video), audio: gap(s.progress.audio), samples: s.progress.video.length, span: end - s.start };
"#;

async fn scenario(h: &Harness) -> TestResult {
    let ann = h.open("ann", "/?room=x").await?;
    let ben = h.open("ben", "/?room=x").await?;
    run_js(
        &ann,
        "return (await window.vela.signUp(args[0], args[1], 'Ann')).id;",
        vec![json!("ann"), json!(PW)],
    )
    .await?;
    let ben_id = run_js(
        &ben,
        "return (await window.vela.signUp(args[0], args[1], 'Ben')).id;",
        vec![json!("ben"), json!(PW)],
    )
    .await?
    .as_i64()
    .ok_or("ben has no id")?;
    let ben_device = run_js(&ben, "return window.vela.account().device.id;", vec![]).await?;
    // Contacts with live presence: Ann asks, Ben accepts.
    run_js(
        &ann,
        "await window.vela.requestContact('ben'); return true;",
        vec![],
    )
    .await?;
    let request = until(
        "ben sees the request",
        &ben,
        "const r = window.vela.requests(); return { ok: !!r.incoming[0], id: r.incoming[0] && r.incoming[0].id };",
        vec![],
    )
    .await?["id"]
        .clone();
    run_js(
        &ben,
        "await window.vela.acceptRequest(args[0]); return true;",
        vec![request],
    )
    .await?;
    until(
        "ann sees ben online with call buttons",
        &ann,
        "const li = document.querySelector('#contacts li[data-account=\"' + args[0] + '\"]');
         return { ok: !!li && li.dataset.status === 'online' && !!li.querySelector('button[data-call=video]') };",
        vec![json!(ben_id)],
    )
    .await?;

    // Ben opens a second tab: the same browser, so the same sign-in.
    let first = ben.window().await?;
    let second = ben.new_window(true).await?.handle;
    ben.switch_to_window(second.clone()).await?;
    ben.goto(&h.url("/?room=x")).await?;
    let tabs = Tabs {
        client: ben.clone(),
        first,
        second,
    };
    until_tab(
        "ben's second tab is signed in",
        &tabs,
        true,
        "const a = window.vela.account(); return { ok: !!a && a.presence && a.presence.status === 'online' };",
    )
    .await?;

    // Ann presses "Video" on Ben.
    run_js(
        &ann,
        "document.querySelector('#contacts li[data-account=\"' + args[0] + '\"] button[data-call=video]').click(); return true;",
        vec![json!(ben_id)],
    )
    .await?;
    for second in [false, true] {
        until_tab(
            &format!("ben's tab {} rings", u8::from(second) + 1),
            &tabs,
            second,
            "const c = window.vela.calls(); return { ok: c.incomingShown && c.ringing.length === 1 && c.ringing[0].caller === 'Ann', c };",
        )
        .await?;
    }
    let call_id = tabs
        .js(false, "return window.vela.calls().ringing[0].id;", vec![])
        .await?;
    // Tab 1 accepts (the prompt's button); tab 2 stops ringing.
    tabs.js(
        false,
        "document.querySelector('#incoming-accept').click(); return true;",
        vec![],
    )
    .await?;
    until_tab(
        "ben's second tab stops ringing: answered elsewhere",
        &tabs,
        true,
        "const c = window.vela.calls();
         return { ok: !c.incomingShown && c.ringing.length === 0 && c.notes.some((n) => n.what === 'answered_elsewhere'), c };",
    )
    .await?;
    until_tab(
        "ben's first tab is in the call",
        &tabs,
        false,
        "return { ok: window.vela.joined };",
    )
    .await?;

    // Media flows both ways.
    let got = until("ann receives ben's audio and video", &ann, MEDIA_IN, vec![]).await?;
    eprintln!("ann receives {got}");
    let got = until_tab("ben receives ann's audio and video", &tabs, false, MEDIA_IN).await?;
    eprintln!("ben receives {got}");
    let tiles_before = run_js(&ann, "return window.vela.remoteTiles();", vec![]).await?;

    // Ben moves the call to the second tab; Ann's page measures the gap.
    run_js(&ann, START_SAMPLER, vec![]).await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    tabs.js(
        true,
        "await window.vela.takeOver(args[0]); return window.vela.joined;",
        vec![call_id.clone()],
    )
    .await?;
    until_tab(
        "ben's first tab drops out",
        &tabs,
        false,
        "return { ok: !window.vela.joined };",
    )
    .await?;
    let got = until_tab("the second tab receives ann's media", &tabs, true, MEDIA_IN).await?;
    eprintln!("ben's second tab receives {got}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let gaps = run_js(&ann, STOP_SAMPLER, vec![]).await?;
    eprintln!("handover as ann saw it: {gaps}");
    let (video_gap, audio_gap) = (
        gaps["video"].as_f64().unwrap_or(1e9),
        gaps["audio"].as_f64().unwrap_or(1e9),
    );
    if video_gap >= 1000.0 || audio_gap >= 1000.0 {
        return Err(format!("ann's media paused too long during the handover: {gaps}").into());
    }
    let tiles_after = run_js(&ann, "return window.vela.remoteTiles();", vec![]).await?;
    if tiles_after != tiles_before {
        return Err(format!("ann saw ben change: {tiles_before} -> {tiles_after}").into());
    }
    until("ann still receives ben", &ann, MEDIA_IN, vec![]).await?;
    let left = tabs
        .js(
            false,
            "return document.querySelector('#status').textContent;",
            vec![],
        )
        .await?;
    if !left.as_str().unwrap_or("").contains("handed_over") {
        return Err(format!("ben's first tab says {left}").into());
    }
    if let Ok(dir) = std::env::var("VELA_SCREENSHOT_DIR") {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(format!("{dir}/calls-ann.png"), ann.screenshot().await?)?;
        tabs.client.switch_to_window(tabs.second.clone()).await?;
        std::fs::write(format!("{dir}/calls-ben.png"), ben.screenshot().await?)?;
    }

    // Ann hangs up; both histories show the call, answered on Ben's device.
    run_js(&ann, "await window.vela.hangUp(); return true;", vec![]).await?;
    until_tab(
        "ben's second tab leaves the call",
        &tabs,
        true,
        "return { ok: !window.vela.joined };",
    )
    .await?;
    let check =
        "const h = await window.vela.history(); const r = h.find((x) => x.call_id === args[0]);
                 return { ok: !!r && r.outcome === 'answered', r };";
    let ra = until("ann's history", &ann, check, vec![call_id.clone()]).await?;
    if ra["r"]["direction"] != "outgoing" || ra["r"]["video"] != true {
        return Err(format!("ann's history entry: {ra}").into());
    }
    for second in [false, true] {
        let rb = poll("ben's history", Duration::from_secs(10), async || {
            let v = tabs.js(second, check, vec![call_id.clone()]).await?;
            Ok(if v["ok"] == true {
                Ok(v)
            } else {
                Err(v.to_string())
            })
        })
        .await?;
        if rb["r"]["device_id"] != ben_device || rb["r"]["direction"] != "incoming" {
            return Err(format!("ben's history entry: {rb} (device {ben_device})").into());
        }
        let shown = tabs
            .js(
                second,
                "return document.querySelector('#call-history li').dataset.outcome;",
                vec![],
            )
            .await?;
        if shown != "answered" {
            return Err(format!("ben's page shows {shown}").into());
        }
    }

    // An audio call: neither side opens its camera.
    let audio_call = run_js(
        &ann,
        "const c = await window.vela.call([args[0]], false); return c.id;",
        vec![json!(ben_id)],
    )
    .await?;
    until_tab(
        "ben's tab rings for the audio call",
        &tabs,
        false,
        "const c = window.vela.calls(); return { ok: c.ringing.length === 1 && c.ringing[0].video === false, c };",
    )
    .await?;
    tabs.js(
        false,
        "await window.vela.acceptCall(args[0]); return true;",
        vec![audio_call],
    )
    .await?;
    let got = until("ann hears ben without cameras", &ann, AUDIO_ONLY, vec![]).await?;
    eprintln!("audio call, ann: {got}");
    until_tab("ben hears ann without cameras", &tabs, false, AUDIO_ONLY).await?;
    run_js(&ann, "await window.vela.hangUp(); return true;", vec![]).await?;
    Ok(())
}
