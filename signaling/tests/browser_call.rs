//! End to end: three headless Chromium participants join one room through the
//! page served at `/` (`window.vela`), see and hear each other, and one leaves.
//! The server runs two media shards and the room is on the second, so the
//! browsers use that shard's own port (every other browser test runs the
//! default single shard).
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver`; see `browser/mod.rs`.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod browser;

use std::collections::BTreeMap;
use std::time::Duration;

use browser::{Harness, TestResult, count, poll, run_js};
use fantoccini::Client;
use serde_json::{Value, json};
use vela_media::core::{RoomId, RoomOptions};

const NAMES: [&str; 3] = ["P1", "P2", "P3"];
/// Frames each participant must have decoded from every other one.
const MIN_FRAMES: u64 = 10;
/// Audio packets each participant must have received from every other one.
const MIN_AUDIO_PACKETS: u64 = 20;

/// `window.vela.join(room, name)`; returns the participant id the server gave.
const JOIN: &str = r#"
const [room, name] = args;
await window.vela.join(room, name);
if (!window.vela.joined || !window.vela.participantId) throw new Error('join resolved but vela.joined=' + window.vela.joined);
return window.vela.participantId;
"#;

/// `{video: {pid: framesDecoded}, audio: {pid: packetsReceived}}` plus the connection state.
const STATS: &str = r#"
const stats = await window.vela.stats();
stats.connectionState = window.vela.pc ? window.vela.pc.connectionState : null;
return stats;
"#;

/// `[{participantId, name}]` of the remote tiles.
const REMOTE_TILES: &str = r#"
return window.vela.remoteTiles();
"#;

/// Leaves the room; returns whether the page still thinks it is joined.
const LEAVE: &str = r#"
window.vela.leave();
return window.vela.joined;
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_participants_see_and_hear_each_other_then_one_leaves() {
    let mut config = browser::test_config();
    config.media.shards = 2;
    browser::run_with("browser_call", Duration::from_secs(120), config, scenario).await;
}

struct Participant {
    name: &'static str,
    client: Client,
    id: String,
}

/// Opens an empty room first, so the next new room (the call's) goes to the
/// second media shard.
async fn fill_first_shard(h: &Harness) -> TestResult {
    let media = h.media().ok_or("no server")?;
    let lobby = RoomId::new("lobby")?;
    media.create_room(&lobby, RoomOptions::default()).await?;
    Ok(())
}

async fn scenario(h: &Harness) -> TestResult {
    fill_first_shard(h).await?;
    let room = "e2e".to_owned();
    let mut participants = Vec::new();
    for name in NAMES {
        let client = h.open(name, &format!("/?room={room}&name={name}")).await?;
        participants.push((name, client));
    }
    let mut joined = Vec::new();
    for (name, client) in participants {
        let id = run_js(&client, JOIN, vec![json!(room), json!(name)])
            .await
            .map_err(|e| format!("{name}: join: {e}"))?;
        let id = id
            .as_str()
            .ok_or_else(|| format!("{name}: participantId is not a string: {id}"))?
            .to_owned();
        eprintln!("{name} joined as {id}");
        joined.push(Participant { name, client, id });
    }
    let shard = h
        .media()
        .and_then(|m| m.shard_of_room(&RoomId::new(&room).ok()?));
    if shard != Some(1) {
        return Err(format!("the room is on shard {shard:?}, not the second").into());
    }
    let ids: Vec<&str> = joined.iter().map(|p| p.id.as_str()).collect();
    if ids[0] == ids[1] || ids[1] == ids[2] || ids[0] == ids[2] {
        return Err(format!("participant ids are not distinct: {ids:?}").into());
    }

    // Everyone decodes video and receives audio from both others.
    let everyone: Vec<&Participant> = joined.iter().collect();
    let seen = poll(
        "every participant receives video and audio from both others",
        Duration::from_secs(15),
        async || media_flowing(&everyone).await,
    )
    .await?;
    eprintln!("media flowing: {}", describe(&seen));
    // For a person to look at the call: VELA_SCREENSHOT_DIR=/tmp/shots.
    if let Ok(dir) = std::env::var("VELA_SCREENSHOT_DIR") {
        for p in &joined {
            let png = p.client.screenshot().await?;
            std::fs::create_dir_all(&dir)?;
            std::fs::write(format!("{dir}/{}.png", p.name), png)?;
        }
    }

    // Every tile shows the other participant's name.
    for p in &joined {
        let tiles = remote_tiles(p).await?;
        for other in joined.iter().filter(|o| o.id != p.id) {
            match tiles.get(&other.id) {
                Some(name) if name == other.name => {}
                Some(name) => {
                    return Err(format!(
                        "{}: the tile of {} ({}) is labelled {name:?}",
                        p.name, other.name, other.id
                    )
                    .into());
                }
                None => {
                    return Err(format!(
                        "{}: no tile for {} ({}); tiles: {tiles:?}",
                        p.name, other.name, other.id
                    )
                    .into());
                }
            }
        }
    }

    // P3 leaves: the others drop its tile.
    let (rest, leaver) = joined.split_at(2);
    let leaver = &leaver[0];
    let still_joined = run_js(&leaver.client, LEAVE, vec![]).await?;
    if still_joined != Value::Bool(false) {
        return Err(format!(
            "{}: vela.joined is {still_joined} after leave()",
            leaver.name
        )
        .into());
    }
    eprintln!("{} left", leaver.name);
    for p in rest {
        poll(
            &format!("{} drops the tile of {}", p.name, leaver.name),
            Duration::from_secs(10),
            async || {
                let tiles = remote_tiles(p).await?;
                Ok(if tiles.contains_key(&leaver.id) {
                    Err(format!("tiles {tiles:?}"))
                } else {
                    Ok(())
                })
            },
        )
        .await?;
    }

    // The remaining two keep receiving each other.
    let before = collect_stats(rest).await?;
    let after = poll(
        "P1 and P2 keep receiving each other after P3 left",
        Duration::from_secs(10),
        async || {
            let now = collect_stats(rest).await?;
            for p in rest {
                for other in rest.iter().filter(|o| o.id != p.id) {
                    let frames =
                        |s: &BTreeMap<String, Value>| count(&s[p.name], "video", &other.id);
                    if frames(&now) < frames(&before) + 5 {
                        return Ok(Err(describe(&now)));
                    }
                }
            }
            Ok(Ok(now))
        },
    )
    .await?;
    eprintln!("after {} left: {}", leaver.name, describe(&after));
    Ok(())
}

/// `Ok(stats)` once everyone got enough from everyone else, else `Err(what was seen)`.
async fn media_flowing(
    participants: &[&Participant],
) -> TestResult<Result<BTreeMap<String, Value>, String>> {
    let mut all = BTreeMap::new();
    for p in participants {
        all.insert(p.name.to_owned(), run_js(&p.client, STATS, vec![]).await?);
    }
    for p in participants {
        for other in participants.iter().filter(|o| o.id != p.id) {
            let stats = &all[p.name];
            if count(stats, "video", &other.id) <= MIN_FRAMES
                || count(stats, "audio", &other.id) <= MIN_AUDIO_PACKETS
            {
                return Ok(Err(describe(&all)));
            }
        }
    }
    Ok(Ok(all))
}

async fn collect_stats(participants: &[Participant]) -> TestResult<BTreeMap<String, Value>> {
    let mut all = BTreeMap::new();
    for p in participants {
        all.insert(p.name.to_owned(), run_js(&p.client, STATS, vec![]).await?);
    }
    Ok(all)
}

/// participantId -> name of `p`'s remote tiles.
async fn remote_tiles(p: &Participant) -> TestResult<BTreeMap<String, String>> {
    let tiles = run_js(&p.client, REMOTE_TILES, vec![]).await?;
    let list = tiles
        .as_array()
        .ok_or_else(|| format!("{}: remoteTiles() returned {tiles}", p.name))?;
    Ok(list
        .iter()
        .map(|t| {
            let field = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            (field("participantId"), field("name"))
        })
        .collect())
}

fn describe(all: &BTreeMap<String, Value>) -> String {
    serde_json::to_string(all).unwrap_or_default()
}
