//! Shared pieces of the call tests: a server with a short ring timeout,
//! people with several devices, and the call API.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

mod filtering;
mod group;
mod outcomes;
mod races;
mod room;

use std::time::Duration;

use serde_json::{Value, json};
use vela_signaling::RunningServer;

use crate::common::{Api, DeviceClient, Login, Seen, SessionClient, with_config};

pub const PW: &str = "correct horse battery";

/// Every call test runs under this limit.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Runs `test` within [`LIMIT`] against a server whose invitees ring for
/// `ring_ms`.
pub async fn with_calls(ring_ms: u64, test: impl AsyncFnOnce(&RunningServer, &Api)) {
    with_config(LIMIT, |c| c.calls.ring_timeout_ms = ring_ms, test).await;
}

/// Another device of an existing user.
pub async fn another_device(api: &Api, user: &Login, label: &str) -> Login {
    api.login(&user.username, PW, "desktop", label).await
}

/// Signs up each of `names` with a phone.
pub async fn users<const N: usize>(api: &Api, names: [&str; N]) -> [Login; N] {
    let mut logins = Vec::with_capacity(N);
    for name in names {
        logins.push(api.user(name, "phone").await);
    }
    logins.try_into().unwrap()
}

/// Signs up Ann (a phone) and Ben (a phone and a desk computer) and opens
/// a socket on each device: the people of most call tests, as
/// `(ann, ben, ben_desk, ann's phone, ben's phone, ben's desk)`.
pub async fn ann_and_ben(
    s: &RunningServer,
    api: &Api,
) -> (
    Login,
    Login,
    Login,
    DeviceClient,
    DeviceClient,
    DeviceClient,
) {
    let [ann, ben] = users(api, ["ann", "ben"]).await;
    let ben_desk = another_device(api, &ben, "desk").await;
    let a = socket(s, &ann).await;
    let b1 = socket(s, &ben).await;
    let b2 = socket(s, &ben_desk).await;
    (ann, ben, ben_desk, a, b1, b2)
}

/// A device socket with heartbeats.
pub async fn socket(s: &RunningServer, l: &Login) -> DeviceClient {
    DeviceClient::connect(s, &l.access, Some(Duration::from_secs(1))).await
}

/// `POST /api/v1/calls`; returns the response.
pub async fn invite(api: &Api, from: &Login, to: &[i64], video: bool) -> crate::common::Resp {
    api.post(
        "/api/v1/calls",
        Some(&from.access),
        json!({"to": to, "video": video}),
    )
    .await
}

/// Places a call that must succeed; returns its id.
pub async fn call(api: &Api, from: &Login, to: &[i64]) -> i64 {
    let v = invite(api, from, to, true).await.ok(201);
    v["call"]["id"].as_i64().unwrap()
}

/// `POST /api/v1/calls/{id}/{action}` with an empty JSON body.
pub async fn act(api: &Api, who: &Login, id: i64, action: &str) -> crate::common::Resp {
    api.post(
        &format!("/api/v1/calls/{id}/{action}"),
        Some(&who.access),
        json!({}),
    )
    .await
}

/// Waits for a push of `ty` about call `id`.
pub async fn expect_call(dev: &mut DeviceClient, ty: &str, id: i64) -> Value {
    dev.wait_for(&format!("{ty} of call {id}"), |m| {
        m["type"] == ty && (m["call"]["id"] == id || m["message"]["call_id"] == id)
    })
    .await
}

/// The `call_ended` outcome `dev` is told for call `id`.
pub async fn ended(dev: &mut DeviceClient, id: i64) -> String {
    expect_call(dev, "call_ended", id).await["outcome"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Each of `devs` is told call `id` ended with `outcome`.
pub async fn all_ended(devs: &mut [&mut DeviceClient], id: i64, outcome: &str) {
    for dev in devs.iter_mut() {
        assert_eq!(ended(dev, id).await, outcome, "the end of call {id}");
    }
}

/// `GET /api/v1/calls/{id}` as `who`.
pub async fn get_call(api: &Api, who: &Login, id: i64) -> Value {
    api.get(&format!("/api/v1/calls/{id}"), &who.access)
        .await
        .ok(200)
}

/// Nothing about call `id` of type `ty` arrives within `d`.
pub async fn none_of(dev: &mut DeviceClient, ty: &str, id: i64, d: Duration) {
    for s in dev.collect(d).await {
        if let Seen::Msg(m) = s {
            assert!(
                !(m["type"] == ty && m["call"]["id"] == id),
                "unexpected {ty}: {m}"
            );
        }
    }
}

/// The newest history entries of `who`.
pub async fn history(api: &Api, who: &Login) -> Vec<Value> {
    let v = api.get("/api/v1/calls/history", &who.access).await.ok(200);
    v["calls"].as_array().unwrap().clone()
}

/// The newest history entry of `who` for call `id` (waits for it a little).
pub async fn record(api: &Api, who: &Login, id: i64) -> Value {
    for _ in 0..50 {
        if let Some(r) = history(api, who)
            .await
            .into_iter()
            .find(|r| r["call_id"] == id)
        {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no history entry of call {id} for {}", who.username)
}

/// The outcome and the unseen mark of `who`'s history entry for call `id`.
pub async fn outcome_and_unseen(api: &Api, who: &Login, id: i64) -> (Option<String>, Option<bool>) {
    let r = record(api, who, id).await;
    (
        r["outcome"].as_str().map(str::to_owned),
        r["unseen"].as_bool(),
    )
}

/// The history of each of `who` records call `id` with `outcome`.
pub async fn all_recorded(api: &Api, who: &[&Login], id: i64, outcome: &str) {
    for w in who {
        let r = record(api, w, id).await;
        assert_eq!(
            r["outcome"], outcome,
            "{}'s record of call {id}",
            w.username
        );
    }
}

/// The state of `account` in a call object.
pub fn member_state(call: &Value, account: i64) -> String {
    call["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["account_id"] == account)
        .map(|m| m["state"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Joins the room `room` with an account's access token (taking over
/// `take_over`, if given) and starts media; `Err` carries the server's `error`.
pub async fn join_room(
    s: &RunningServer,
    token: &str,
    room: &str,
    take_over: Option<&str>,
    publish: bool,
) -> Result<SessionClient, Value> {
    SessionClient::join_room(s, token, Some(room), take_over, publish).await
}
