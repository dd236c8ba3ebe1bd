//! Chat in a room: data messages of topic `chat` between two pages, typed
//! and sent through the page's own chat panel, shown with the sender's
//! name and a time; an unread count while the panel is closed; the server
//! API's chat messages show as from "Server". Times are the sender's (a
//! timestamp in the payload), shown in the reader's time zone; a payload
//! without one (the server API's) shows its arrival time. Also the
//! connection quality the tiles show: good on both ends of a loopback call
//! (the others' as the server measures them); and the account panel,
//! folded away during the call (the stage takes the window), back after.
//!
//! Plain loopback (no namespace). Needs Chromium and chromedriver.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod browser;
mod quality;

use std::time::Duration;

use browser::{Harness, TestResult, poll, run_js};
use fantoccini::{Client, Locator};
use quality::join;
use serde_json::{Value, json};

const ROOM: &str = "chat";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pages_chat_with_names_and_times() {
    browser::run("browser_chat", Duration::from_secs(60), scenario).await;
}

/// Waits until `client`'s chat has a message `text` from `from` (shown:
/// its name and time in the panel); returns it.
async fn expect_chat(client: &Client, from: &str, text: &str) -> TestResult<Value> {
    poll(&format!("chat message {text:?} from {from}"), Duration::from_secs(10), async || {
        let v = run_js(
            client,
            r#"const [from, text] = args;
const m = window.vela.chat().find((m) => m.from === from && m.text === text);
const shown = [...document.querySelectorAll('#chat-log .msg')].some((el) =>
  el.querySelector('.meta b').textContent === (m && m.own ? 'You' : from) &&
  el.querySelector('.text').textContent === text && /\d/.test(el.querySelector('time').textContent));
return { m: m || null, shown, all: window.vela.chat() };"#,
            vec![json!(from), json!(text)],
        )
        .await?;
        Ok(if v["shown"] == true { Ok(v["m"].clone()) } else { Err(v.to_string()) })
    })
    .await
}

async fn unread(client: &Client) -> TestResult<Value> {
    let v = run_js(
        client,
        "return [window.vela.chatUnread(), document.querySelector('#chat-toggle .count').hidden ? '' : document.querySelector('#chat-toggle .count').textContent];",
        vec![],
    )
    .await?;
    Ok(v)
}

async fn scenario(h: &Harness) -> TestResult {
    let alice = h.open("alice", &format!("/?room={ROOM}")).await?;
    let bob = h.open("bob", &format!("/?room={ROOM}")).await?;
    let a = join(&alice, ROOM, "alice").await?;
    let b = join(&bob, ROOM, "bob").await?;
    side_panel_folded(&alice).await?;
    for (page, other) in [(&alice, &b), (&bob, &a)] {
        poll("good connections shown on both tiles", Duration::from_secs(15), async || {
            let v = run_js(
                page,
                r#"const q = window.vela.connectionQuality();
const shown = [...document.querySelectorAll('.tile:not(.screen) .cq')].map((e) => e.hidden ? 'hidden' : e.className);
return { q, shown };"#,
                vec![],
            )
            .await?;
            let ok = v["q"]["local"]["level"] == "good"
                && v["q"][other.as_str()]["level"] == "good"
                && v["q"][other.as_str()]["source"] == "server"
                && v["shown"] == json!(["cq good", "cq good"]);
            Ok(if ok { Ok(()) } else { Err(v.to_string()) })
        })
        .await?;
    }

    // Alice opens the panel, types and presses Enter.
    alice
        .find(Locator::Css("#chat-toggle"))
        .await?
        .click()
        .await?;
    let input = alice.find(Locator::Css("#chat-input")).await?;
    input
        .send_keys("hello bob, can you see my slides?\u{E007}")
        .await?;
    let mine = expect_chat(&alice, "You", "hello bob, can you see my slides?").await?;
    if mine["own"] != true {
        return Err(format!("alice's own message: {mine}").into());
    }
    if input.prop("value").await?.as_deref() != Some("") {
        return Err("the input was not cleared".into());
    }
    // Bob's panel is closed: the message counts as unread, then shows.
    let m = expect_chat(&bob, "alice", "hello bob, can you see my slides?").await?;
    if m["participantId"] != a.as_str() || m["time"].as_str().is_none_or(|t| t.len() < 20) {
        return Err(format!("bob got {m}").into());
    }
    let u = unread(&bob).await?;
    if u != json!([1, "1"]) {
        return Err(format!("bob's unread count: {u}").into());
    }
    bob.find(Locator::Css("#chat-toggle"))
        .await?
        .click()
        .await?;
    let u = unread(&bob).await?;
    if u != json!([0, ""]) {
        return Err(format!("bob's unread count after opening: {u}").into());
    }
    // Bob answers (the panel's form, with its Send button).
    bob.find(Locator::Css("#chat-input"))
        .await?
        .send_keys("yes, all of them")
        .await?;
    bob.find(Locator::Css("#chat-form button[type=submit]"))
        .await?
        .click()
        .await?;
    expect_chat(&alice, "bob", "yes, all of them").await?;
    expect_chat(&bob, "You", "yes, all of them").await?;

    // The server API's message, topic chat, to the room.
    let (token, _) = admin_token(h).await?;
    let r = h
        .http
        .post(h.url(&format!("/api/v1/rooms/{ROOM}/data")))
        .bearer_auth(&token)
        .json(&json!({ "payload": "dGhlIHJvb20gY2xvc2VzIGF0IDY=", "topic": "chat" }))
        .send()
        .await?;
    if !r.status().is_success() {
        return Err(format!("POST data: HTTP {}", r.status()).into());
    }
    let server = expect_chat(&alice, "Server", "the room closes at 6").await?;
    expect_chat(&bob, "Server", "the room closes at 6").await?;
    if server["senderTime"] != false {
        return Err(format!("a plain payload has no sender's time: {server}").into());
    }
    if m["senderTime"] != true {
        return Err(format!("alice's message carried her time: {m}").into());
    }
    // A message sent three hours ago (say, held by a slow link, or a
    // sender whose clock is off): shown at the sender's time, not at its
    // arrival.
    let sent = run_js(
        &alice,
        r#"const t = Date.now() - 3 * 3600 * 1000;
window.vela.sendData(JSON.stringify({ id: 'old-1', timestamp: t, message: 'sent a while ago' }), 'chat');
return new Date(t).toISOString();"#,
        vec![],
    )
    .await?;
    let old = expect_chat(&bob, "alice", "sent a while ago").await?;
    let shown = run_js(
        &bob,
        r#"const el = [...document.querySelectorAll('#chat-log .msg')].find((e) => e.querySelector('.text').textContent === 'sent a while ago');
const t = el.querySelector('time');
return { dateTime: t.dateTime, text: t.textContent,
  local: new Date(t.dateTime).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) };"#,
        vec![],
    )
    .await?;
    if old["time"] != sent || shown["dateTime"] != sent || shown["text"] != shown["local"] {
        return Err(format!("sent at {sent}; bob has {old}, shows {shown}").into());
    }
    // With the chat open beside it the stage shrinks: the page stays as
    // wide as the window (no sideways scrolling), the tiles left of the chat.
    poll("bob's page fits the window with the chat open", Duration::from_secs(5), async || {
        let v = run_js(
            &bob,
            r#"const chat = document.querySelector('#chat').getBoundingClientRect();
const right = Math.max(...[...document.querySelectorAll('#tiles .tile')].map((t) => t.getBoundingClientRect().right));
return { scroll: document.documentElement.scrollWidth, window: window.innerWidth, tilesRight: Math.round(right), chatLeft: Math.round(chat.left) };"#,
            vec![],
        )
        .await?;
        let fits = v["scroll"].as_i64() <= v["window"].as_i64()
            && v["tilesRight"].as_i64() <= v["chatLeft"].as_i64();
        Ok(if fits { Ok(()) } else { Err(v.to_string()) })
    })
    .await?;
    let dir = std::env::var("VELA_SCREENSHOT_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/screenshots").into());
    std::fs::create_dir_all(&dir)?;
    std::fs::write(format!("{dir}/chat.png"), bob.screenshot().await?)?;

    // After leaving, the account panel is back beside the join form.
    run_js(&alice, "window.vela.leave(); return true;", vec![]).await?;
    poll(
        "the account panel back after leaving",
        Duration::from_secs(5),
        async || {
            let v = side_state(&alice).await?;
            Ok(if v["side"] != "none" && v["toggle"] == false {
                Ok(())
            } else {
                Err(v.to_string())
            })
        },
    )
    .await?;
    Ok(())
}

async fn side_state(page: &Client) -> TestResult<Value> {
    run_js(
        page,
        r#"const side = document.querySelector('#side'), tiles = document.querySelector('#tiles');
const tr = tiles.getBoundingClientRect(), sr = side.getBoundingClientRect();
return { side: getComputedStyle(side).display, toggle: !document.querySelector('#side-toggle').hidden,
  tilesRight: Math.round(tr.right), window: window.innerWidth, sideLeft: Math.round(sr.left), sideWidth: Math.round(sr.width) };"#,
        vec![],
    )
    .await
}

/// In a call the account panel is folded away and the stage reaches the
/// window's right edge; the header's Account button opens the panel over
/// the stage and closes it again.
async fn side_panel_folded(page: &Client) -> TestResult {
    let v = side_state(page).await?;
    let full = v["tilesRight"].as_i64().unwrap_or(0) >= v["window"].as_i64().unwrap_or(1) - 2;
    if v["side"] != "none" || v["toggle"] != true || !full {
        return Err(format!("in a call, the account panel: {v}").into());
    }
    page.find(Locator::Css("#side-toggle"))
        .await?
        .click()
        .await?;
    let v = side_state(page).await?;
    let over = v["sideWidth"].as_i64() > Some(100)
        && v["tilesRight"].as_i64().unwrap_or(0) >= v["window"].as_i64().unwrap_or(1) - 2;
    if v["side"] == "none" || !over {
        return Err(format!("the opened account panel: {v}").into());
    }
    page.find(Locator::Css("#side-toggle"))
        .await?
        .click()
        .await?;
    let v = side_state(page).await?;
    if v["side"] != "none" {
        return Err(format!("the account panel after closing it: {v}").into());
    }
    Ok(())
}

/// A token with roomAdmin for the room (the server API's data call).
async fn admin_token(h: &Harness) -> TestResult<(String, Value)> {
    let body: Value = h
        .http
        .get(h.url(&format!("/api/dev-token?room={ROOM}&identity=ops&admin=1")))
        .send()
        .await?
        .json()
        .await?;
    let token = body["token"].as_str().ok_or("no token")?.to_owned();
    Ok((token, body))
}
