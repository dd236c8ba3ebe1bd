//! End to end in the page: two people sign up in two headless Chromiums,
//! become contacts, see each other's presence change live, join a room with
//! their accounts (and show as in a call), and stay signed in across a reload.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver`; see `browser/mod.rs`.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod browser;

use std::time::Duration;

use browser::{Harness, TestResult, poll, run_js};
use fantoccini::Client;
use serde_json::{Value, json};

const PW: &str = "correct horse battery";

const SIGN_UP: &str = r#"
const [u, p, d] = args;
const a = await window.vela.signUp(u, p, d);
return a.username;
"#;

/// Own account and presence as the page knows them.
const ACCOUNT: &str = r#"return window.vela.account();"#;

/// `{account id: status}` of the contacts as the page shows them.
const SHOWN_CONTACTS: &str = r#"
const out = {};
for (const li of document.querySelectorAll('#contacts li[data-account]')) out[li.dataset.account] = li.dataset.status;
return out;
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_people_sign_up_connect_and_see_each_others_presence() {
    browser::run("browser_accounts", Duration::from_secs(120), scenario).await;
}

async fn account(c: &Client) -> TestResult<Value> {
    run_js(c, ACCOUNT, vec![]).await
}

async fn wait_status(who: &str, c: &Client, of: i64, status: &str) -> TestResult {
    poll(
        &format!("{who} shows account {of} as {status}"),
        Duration::from_secs(10),
        async || {
            let shown = run_js(c, SHOWN_CONTACTS, vec![]).await?;
            Ok(if shown[of.to_string()] == status {
                Ok(())
            } else {
                Err(shown.to_string())
            })
        },
    )
    .await
}

async fn scenario(h: &Harness) -> TestResult {
    let ann = h.open("ann", "/?room=acct").await?;
    let ben = h.open("ben", "/?room=acct").await?;
    run_js(&ann, SIGN_UP, vec![json!("ann"), json!(PW), json!("Ann")]).await?;
    run_js(&ben, SIGN_UP, vec![json!("ben"), json!(PW), json!("Ben")]).await?;
    for (name, c) in [("ann", &ann), ("ben", &ben)] {
        poll(
            &format!("{name} is online"),
            Duration::from_secs(10),
            async || {
                let a = account(c).await?;
                Ok(if a["presence"]["status"] == "online" {
                    Ok(())
                } else {
                    Err(a.to_string())
                })
            },
        )
        .await?;
    }
    let ann_id = account(&ann).await?["id"].as_i64().ok_or("ann has no id")?;
    let ben_id = account(&ben).await?["id"].as_i64().ok_or("ben has no id")?;
    let device = account(&ann).await?["device"].clone();
    if device["kind"] != "web" || !device["label"].as_str().unwrap_or("").contains("Chrome") {
        return Err(format!("the page named its device {device}").into());
    }

    // Ann asks Ben; Ben accepts in his page.
    run_js(
        &ann,
        "await window.vela.requestContact('ben'); return true;",
        vec![],
    )
    .await?;
    let request = poll(
        "ben sees the request",
        Duration::from_secs(10),
        async || {
            let r = run_js(&ben, "return window.vela.requests();", vec![]).await?;
            Ok(match r["incoming"][0]["id"].as_i64() {
                Some(id) => Ok(id),
                None => Err(r.to_string()),
            })
        },
    )
    .await?;
    run_js(
        &ben,
        "await window.vela.acceptRequest(args[0]); return true;",
        vec![json!(request)],
    )
    .await?;
    wait_status("ann", &ann, ben_id, "online").await?;
    wait_status("ben", &ben, ann_id, "online").await?;

    // Ann sets do-not-disturb: Ben's page shows it.
    run_js(
        &ann,
        "await window.vela.setPresence('dnd'); return true;",
        vec![],
    )
    .await?;
    wait_status("ben", &ben, ann_id, "dnd").await?;

    // Both join the room with their accounts (no token given).
    for c in [&ann, &ben] {
        run_js(
            c,
            "await window.vela.join('acct', ''); return window.vela.joined;",
            vec![],
        )
        .await?;
    }
    wait_status("ben", &ben, ann_id, "in_call").await?;
    wait_status("ann", &ann, ben_id, "in_call").await?;
    // For a person to look at the page: VELA_SCREENSHOT_DIR=/tmp/shots.
    if let Ok(dir) = std::env::var("VELA_SCREENSHOT_DIR") {
        std::fs::create_dir_all(&dir)?;
        for (name, c) in [("accounts-ann", &ann), ("accounts-ben", &ben)] {
            std::fs::write(format!("{dir}/{name}.png"), c.screenshot().await?)?;
        }
    }
    poll(
        "ann's tile of ben is named Ben",
        Duration::from_secs(10),
        async || {
            let tiles = run_js(&ann, "return window.vela.remoteTiles();", vec![]).await?;
            Ok(if tiles[0]["name"] == "Ben" {
                Ok(())
            } else {
                Err(tiles.to_string())
            })
        },
    )
    .await?;

    // A reload keeps Ann signed in (and ends her call).
    ann.refresh().await?;
    poll(
        "ann is still signed in after a reload",
        Duration::from_secs(10),
        async || {
            let a = account(&ann).await?;
            Ok(
                if a["username"] == "ann" && a["presence"]["status"].is_string() {
                    Ok(())
                } else {
                    Err(a.to_string())
                },
            )
        },
    )
    .await?;
    wait_status("ben", &ben, ann_id, "dnd").await?;

    // Ben signs out: his device is revoked at once, his call ends, Ann sees him offline.
    run_js(
        &ben,
        "await window.vela.signOut(); return window.vela.account();",
        vec![],
    )
    .await?;
    wait_status("ann", &ann, ben_id, "offline").await?;
    let joined = run_js(&ben, "return window.vela.joined;", vec![]).await?;
    if joined != Value::Bool(false) {
        return Err(format!("ben is still in the room after signing out: {joined}").into());
    }
    Ok(())
}
