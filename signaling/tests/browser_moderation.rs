//! End to end: moderation from the web page. A moderator (joined through the
//! page's form with "Moderator" ticked: a development token with the
//! roomAdmin grant) and a participant join one room in two headless
//! Chromium sessions; the moderator mutes the participant's microphone with
//! the button on its tile (the server stops forwarding it; the participant's
//! page shows its mic muted), then removes it (the participant's page says so
//! and does not reconnect; the moderator's page drops it).
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver`; see `browser/mod.rs`.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod browser;

use std::time::Duration;

use browser::{Harness, TestResult, count, poll, run_js};
use fantoccini::{Client, Locator};
use serde_json::{Value, json};

const ROOM: &str = "moderation";
/// Frames the moderator must have decoded from the participant first.
const MIN_FRAMES: u64 = 10;
/// Audio packets the moderator must have received from the participant first.
const MIN_AUDIO_PACKETS: u64 = 20;
/// How long the participant's inbound audio must stay flat once muted.
const FLAT_FOR: Duration = Duration::from_secs(2);

/// `window.vela.join(room, name)` (no moderator); returns the participant id
/// and whether the page may moderate.
const JOIN: &str = r#"
const [room, name] = args;
await window.vela.join(room, name);
if (!window.vela.joined || !window.vela.participantId) throw new Error('join resolved but vela.joined=' + window.vela.joined);
return { id: window.vela.participantId, canAdmin: window.vela.canAdmin };
"#;

/// What the page shows of its session (joined through the form or not).
const SESSION: &str = r#"
const notice = document.querySelector('#join-notice');
return {
  joined: window.vela.joined, id: window.vela.participantId, canAdmin: window.vela.canAdmin,
  leftReason: window.vela.leftReason, wsOpen: !!window.vela.ws,
  status: document.querySelector('#status').textContent,
  joinNotice: notice.hidden ? null : notice.textContent,
  joinFormShown: !document.querySelector('#join-form').hidden,
};
"#;

/// `{video: {pid: framesDecoded}, audio: {pid: packetsReceived}}`.
const STATS: &str = r#"
return await window.vela.stats();
"#;

/// The moderation controls on the remote tile of participant `args[0]`.
const CONTROLS: &str = r#"
const tile = document.querySelector('.tile[data-participant="' + args[0] + '"]');
if (!tile) return null;
return {
  tracks: [...tile.querySelectorAll('.mod button.mod-mute')].map((b) => ({
    kind: b.dataset.kind, track: b.dataset.track, muted: b.dataset.muted === 'true', text: b.textContent, disabled: b.disabled,
  })),
  remove: !!tile.querySelector('.mod button.mod-remove'),
  error: (tile.querySelector('.mod-error:not([hidden])') || {}).textContent || null,
};
"#;

/// Whether the page shows any moderation control at all.
const ANY_CONTROLS: &str = r#"
return document.querySelectorAll('.tile .mod button').length;
"#;

/// The participant's own microphone as its page shows it.
const OWN_MIC: &str = r#"
const video = document.querySelector('.tile.local video');
const stream = video && video.srcObject;
const track = stream && stream.getAudioTracks()[0];
const notice = document.querySelector('#call-notice');
return {
  button: document.querySelector('#mute-audio').textContent,
  badge: !document.querySelector('.tile.local .badge.mic').hidden,
  trackEnabled: track ? track.enabled : null,
  notice: notice.hidden ? null : notice.textContent,
};
"#;

/// The participant's publishing permission as its page shows it.
const BLOCKED: &str = r#"
const notice = document.querySelector('#call-notice');
return {
  publish: window.vela.permissions && window.vela.permissions.publish,
  buttonsDisabled: document.querySelector('#mute-audio').disabled && document.querySelector('#mute-video').disabled,
  notice: notice.hidden ? null : notice.textContent,
};
"#;

/// The moderator's view of the others: tiles and participants.
const OTHERS: &str = r#"
return {
  tiles: window.vela.remoteTiles().map((t) => t.participantId),
  participants: window.vela.participants().map((p) => p.id),
};
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moderator_mutes_then_removes_a_participant_from_the_page() {
    browser::run("browser_moderation", Duration::from_secs(90), scenario).await;
}

async fn scenario(h: &Harness) -> TestResult {
    // The moderator joins through the form, with "Moderator" ticked.
    let moderator = h
        .open("moderator", &format!("/?room={ROOM}&name=Moderator"))
        .await?;
    moderator
        .find(Locator::Css("#moderator"))
        .await?
        .click()
        .await?;
    moderator.find(Locator::Css("#join")).await?.click().await?;
    let mod_session = poll(
        "the moderator joins through the form",
        Duration::from_secs(20),
        async || {
            let s = run_js(&moderator, SESSION, vec![]).await?;
            Ok(if s["joined"] == true && s["id"].is_string() {
                Ok(s)
            } else {
                Err(s.to_string())
            })
        },
    )
    .await?;
    if mod_session["canAdmin"] != true {
        return Err(format!("the moderator's page may not moderate: {mod_session}").into());
    }
    let moderator_id = mod_session["id"].as_str().unwrap().to_owned();
    eprintln!("moderator joined as {moderator_id}");

    // A participant joins without the grant.
    let participant = h
        .open("participant", &format!("/?room={ROOM}&name=Pat"))
        .await?;
    let joined = run_js(&participant, JOIN, vec![json!(ROOM), json!("Pat")])
        .await
        .map_err(|e| format!("participant: join: {e}"))?;
    let pid = joined["id"].as_str().ok_or("no participant id")?.to_owned();
    if joined["canAdmin"] != false {
        return Err(format!("a participant without roomAdmin may moderate: {joined}").into());
    }
    eprintln!("participant joined as {pid}");

    // The moderator receives the participant's audio and video.
    let seen = poll(
        "the moderator receives the participant's audio and video",
        Duration::from_secs(15),
        async || {
            let s = run_js(&moderator, STATS, vec![]).await?;
            Ok(
                if count(&s, "video", &pid) > MIN_FRAMES
                    && count(&s, "audio", &pid) > MIN_AUDIO_PACKETS
                {
                    Ok(s)
                } else {
                    Err(s.to_string())
                },
            )
        },
    )
    .await?;
    eprintln!("media flowing to the moderator: {seen}");

    // The moderator's tile of the participant has a mute button per track and Remove.
    let controls = poll(
        "the moderator's page shows moderation controls for the participant",
        Duration::from_secs(10),
        async || {
            let c = run_js(&moderator, CONTROLS, vec![json!(pid)]).await?;
            let kinds: Vec<&str> = c["tracks"]
                .as_array()
                .map(|t| t.iter().filter_map(|t| t["kind"].as_str()).collect())
                .unwrap_or_default();
            Ok(
                if kinds.contains(&"audio") && kinds.contains(&"video") && c["remove"] == true {
                    Ok(c)
                } else {
                    Err(c.to_string())
                },
            )
        },
    )
    .await?;
    eprintln!("moderation controls: {controls}");
    let shown = run_js(&participant, ANY_CONTROLS, vec![]).await?;
    if shown != json!(0) {
        return Err(format!("the participant's page shows {shown} moderation buttons").into());
    }
    screenshots(&[
        ("moderator-before", &moderator),
        ("participant-before", &participant),
    ])
    .await?;

    // A refused request shows on the tile (here: a track the participant does not have).
    run_js(
        &moderator,
        "await window.vela.moderate(args[0], 'mute', 'TR999999', true);",
        vec![json!(pid)],
    )
    .await?;
    let refused = run_js(&moderator, CONTROLS, vec![json!(pid)]).await?;
    if !refused["error"]
        .as_str()
        .is_some_and(|e| e.contains("failed"))
    {
        return Err(format!("a refused mute shows no error on the tile: {refused}").into());
    }
    eprintln!("a refused mute shows: {}", refused["error"]);

    // Mute mic.
    let mute =
        format!(r#".tile[data-participant="{pid}"] .mod button.mod-mute[data-kind="audio"]"#);
    let button = moderator.find(Locator::Css(&mute)).await?;
    let text = button.text().await?;
    if text != "Mute mic" {
        return Err(format!("the participant's mic button reads {text:?}").into());
    }
    button.click().await?;
    eprintln!("moderator clicked Mute mic");

    // The participant's page mutes its microphone and says why.
    let mic = poll(
        "the participant's page shows its mic muted by the moderator",
        Duration::from_secs(10),
        async || {
            let m = run_js(&participant, OWN_MIC, vec![]).await?;
            Ok(
                if m["button"] == "Unmute mic"
                    && m["trackEnabled"] == false
                    && m["badge"] == true
                    && m["notice"].as_str().is_some_and(|n| n.contains("muted"))
                {
                    Ok(m)
                } else {
                    Err(m.to_string())
                },
            )
        },
    )
    .await?;
    eprintln!("participant's mic: {mic}");

    // The moderator's button flips to Unmute mic, without an error.
    poll(
        "the moderator's button reads Unmute mic",
        Duration::from_secs(10),
        async || {
            let c = run_js(&moderator, CONTROLS, vec![json!(pid)]).await?;
            let audio = c["tracks"]
                .as_array()
                .and_then(|t| t.iter().find(|t| t["kind"] == "audio"))
                .cloned()
                .unwrap_or(Value::Null);
            Ok(if !c["error"].is_null() {
                return Err(format!("the moderator's page shows an error: {c}").into());
            } else if audio["text"] == "Unmute mic" && audio["muted"] == true {
                Ok(())
            } else {
                Err(c.to_string())
            })
        },
    )
    .await?;

    // The moderator's inbound audio from the participant stops growing; video goes on.
    let flat = poll(
        "the participant's audio stops reaching the moderator (flat for 2 s) while its video goes on",
        Duration::from_secs(12),
        async || {
            let before = run_js(&moderator, STATS, vec![]).await?;
            tokio::time::sleep(FLAT_FOR).await;
            let after = run_js(&moderator, STATS, vec![]).await?;
            let (a0, a1) = (count(&before, "audio", &pid), count(&after, "audio", &pid));
            let (v0, v1) = (count(&before, "video", &pid), count(&after, "video", &pid));
            Ok(if a1 == a0 && v1 > v0 + 5 {
                Ok(format!("audio packets {a0} -> {a1}, video frames {v0} -> {v1}"))
            } else {
                Err(format!("audio packets {a0} -> {a1}, video frames {v0} -> {v1}"))
            })
        },
    )
    .await?;
    eprintln!("after the mute, over {FLAT_FOR:?}: {flat}");
    screenshots(&[
        ("moderator-muted", &moderator),
        ("participant-muted", &participant),
    ])
    .await?;

    // A data message from the server API shows on the participant's page.
    let (token, _) = admin_token(h).await?;
    let response = h
        .http
        .post(h.url(&format!("/api/v1/rooms/{ROOM}/data")))
        .bearer_auth(&token)
        .json(&json!({ "payload": "aGVsbG8gZnJvbSB0aGUgc2VydmVy", "topic": "chat" }))
        .send()
        .await?;
    if !response.status().is_success() {
        return Err(format!("POST data: HTTP {}", response.status()).into());
    }
    poll(
        "the participant's page shows the server's data message",
        Duration::from_secs(10),
        async || {
            let m = run_js(&participant, "return window.vela.messages;", vec![]).await?;
            Ok(
                if m.as_array().is_some_and(|l| {
                    l.iter()
                        .any(|x| x["text"] == "hello from the server" && x["topic"] == "chat")
                }) {
                    Ok(())
                } else {
                    Err(m.to_string())
                },
            )
        },
    )
    .await?;

    // Block publishing: the participant's page says so and disables its buttons.
    let block = format!(r#".tile[data-participant="{pid}"] .mod button.mod-publish"#);
    moderator.find(Locator::Css(&block)).await?.click().await?;
    eprintln!("moderator clicked Block publishing");
    poll(
        "the participant's page shows publishing disabled",
        Duration::from_secs(10),
        async || {
            let s = run_js(&participant, BLOCKED, vec![]).await?;
            Ok(
                if s["publish"] == false
                    && s["buttonsDisabled"] == true
                    && s["notice"]
                        .as_str()
                        .is_some_and(|n| n.contains("disabled your publishing"))
                {
                    Ok(())
                } else {
                    Err(s.to_string())
                },
            )
        },
    )
    .await?;
    poll(
        "the moderator's button reads Allow publishing",
        Duration::from_secs(10),
        async || {
            let text = moderator.find(Locator::Css(&block)).await?.text().await?;
            Ok(if text == "Allow publishing" {
                Ok(())
            } else {
                Err(text)
            })
        },
    )
    .await?;

    // Remove.
    let remove = format!(r#".tile[data-participant="{pid}"] .mod button.mod-remove"#);
    moderator.find(Locator::Css(&remove)).await?.click().await?;
    eprintln!("moderator clicked Remove");

    let gone = poll(
        "the participant's page says it was removed",
        Duration::from_secs(10),
        async || {
            let s = run_js(&participant, SESSION, vec![]).await?;
            Ok(
                if s["leftReason"] == "removed"
                    && s["joined"] == false
                    && s["status"] == "Removed by a moderator"
                    && s["joinNotice"] == "Removed by a moderator"
                    && s["joinFormShown"] == true
                {
                    Ok(s)
                } else {
                    Err(s.to_string())
                },
            )
        },
    )
    .await?;
    eprintln!("participant: {gone}");
    poll(
        "the moderator's page drops the participant",
        Duration::from_secs(10),
        async || {
            let o = run_js(&moderator, OTHERS, vec![]).await?;
            let has = |k: &str| {
                o[k].as_array()
                    .is_some_and(|l| l.iter().any(|x| x == pid.as_str()))
            };
            Ok(if has("tiles") || has("participants") {
                Err(o.to_string())
            } else {
                Ok(())
            })
        },
    )
    .await?;
    screenshots(&[
        ("moderator-after", &moderator),
        ("participant-after", &participant),
    ])
    .await?;

    // The removed page does not come back: a while later it is still out,
    // and the server has only the moderator in the room.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = run_js(&participant, SESSION, vec![]).await?;
    if later["joined"] != false || later["wsOpen"] != false || later["leftReason"] != "removed" {
        return Err(format!("the removed participant's page came back: {later}").into());
    }
    let in_room = server_participants(h).await?;
    if in_room != [moderator_id.clone()] {
        return Err(format!(
            "the server's room has {in_room:?}, expected only the moderator {moderator_id}"
        )
        .into());
    }
    let view = run_js(&moderator, SESSION, vec![]).await?;
    if view["joined"] != true {
        return Err(format!("the moderator's session ended: {view}").into());
    }
    Ok(())
}

/// The participant ids the server API lists in the room (with a roomAdmin
/// development token of the test's own).
async fn server_participants(h: &Harness) -> TestResult<Vec<String>> {
    let (token, _) = admin_token(h).await?;
    let response = h
        .http
        .get(h.url(&format!("/api/v1/rooms/{ROOM}/participants")))
        .bearer_auth(&token)
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    let list = body["participants"]
        .as_array()
        .ok_or_else(|| format!("GET participants: HTTP {status}, body {body}"))?;
    Ok(list
        .iter()
        .filter_map(|p| p["id"].as_str().map(str::to_owned))
        .collect())
}

/// A development token with roomAdmin for the room, for the test's own API calls.
async fn admin_token(h: &Harness) -> TestResult<(String, Value)> {
    let url = reqwest::Url::parse_with_params(
        &h.url("/api/dev-token"),
        [("room", ROOM), ("identity", "test-admin"), ("admin", "1")],
    )?;
    let body: Value = h.http.get(url).send().await?.json().await?;
    let token = body["token"]
        .as_str()
        .ok_or_else(|| format!("GET /api/dev-token?admin=1: {body}"))?
        .to_owned();
    Ok((token, body))
}

/// For a person to look at the pages: VELA_SCREENSHOT_DIR=/tmp/shots.
async fn screenshots(pages: &[(&str, &Client)]) -> TestResult {
    let Ok(dir) = std::env::var("VELA_SCREENSHOT_DIR") else {
        return Ok(());
    };
    std::fs::create_dir_all(&dir)?;
    for (name, client) in pages {
        let png = client.screenshot().await?;
        std::fs::write(format!("{dir}/{name}.png"), png)?;
    }
    Ok(())
}
