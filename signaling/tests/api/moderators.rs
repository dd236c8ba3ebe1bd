//! What a room's moderator may not do: mint tokens with more than its own
//! token has (grants, lifetime), or take over another participant's session
//! with a token minted for the same identity; taking over needs the
//! session's resume token, or the same account and device.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::{Ws, with_server};
use serde_json::{Value, json};
use vela_signaling::token::{TokenKeys, VideoGrant};

const LIMIT: Duration = Duration::from_secs(60);

fn keys() -> TokenKeys {
    TokenKeys::new(vela_config::DEV_API_KEY, vela_config::DEV_API_SECRET)
}

fn token(identity: &str, grant: VideoGrant, ttl: u64) -> String {
    keys()
        .issue(identity, None, grant, Duration::from_secs(ttl))
        .unwrap()
}

fn moderator(publish: bool) -> String {
    token(
        "mod",
        VideoGrant {
            room: Some("ops".into()),
            room_join: true,
            room_admin: true,
            can_publish: Some(publish),
            ..VideoGrant::default()
        },
        600,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moderator_mints_no_more_than_its_own_token() {
    with_server(LIMIT, async |_, api| {
        let m = moderator(false);
        let own_exp = keys().verify(&m).unwrap().exp;
        let mint = |body: Value| api.post("/api/v1/tokens", Some(&m), body);

        // Asked for a day, given no more than the moderator's 10 minutes;
        // without canPublish itself, it grants none.
        let t =
            mint(json!({"identity": "x", "room": "ops", "ttl_secs": 86_400, "room_admin": true}))
                .await
                .ok(200);
        assert!(t["ttl_secs"].as_u64().unwrap() <= 600, "{t}");
        let c = keys().verify(t["token"].as_str().unwrap()).unwrap();
        assert!(c.exp <= own_exp, "{} > {own_exp}", c.exp);
        assert!(c.video.room_admin);
        assert!(!c.can_publish());
        assert!(c.can_subscribe());
        mint(json!({"identity": "x", "room": "ops", "can_publish": true}))
            .await
            .err(403, None);
        mint(json!({"identity": "x", "room": "elsewhere"}))
            .await
            .err(403, None);

        // roomCreate alone (a service token) mints joins, not moderators.
        let svc = token(
            "svc",
            VideoGrant {
                room_create: true,
                ..VideoGrant::default()
            },
            600,
        );
        api.post(
            "/api/v1/tokens",
            Some(&svc),
            json!({"identity": "y", "room": "any", "room_admin": true}),
        )
        .await
        .err(403, None);
        api.post(
            "/api/v1/tokens",
            Some(&svc),
            json!({"identity": "y", "room": "any"}),
        )
        .await
        .ok(200);
    })
    .await;
}

async fn join(s: &vela_signaling::RunningServer, msg: Value) -> (Ws, Value) {
    let mut ws = Ws::connect(s).await;
    ws.send(msg).await;
    let first = ws.recv().await.unwrap();
    (ws, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taking_over_a_participant_needs_proof_of_being_it() {
    with_server(LIMIT, async |s, api| {
        let alice_token = common::dev_token(s, "ops", "alice").await;
        let (mut alice, joined) = join(s, json!({"type": "join", "token": alice_token})).await;
        assert_eq!(joined["type"], "joined");
        let alice_id = joined["participant"]["id"].as_str().unwrap().to_owned();
        let resume = joined["resume_token"].as_str().unwrap().to_owned();

        // The moderator mints a token for "alice" and tries to slip in as
        // her: refused, without and with a wrong resume token.
        let minted = api
            .post(
                "/api/v1/tokens",
                Some(&moderator(true)),
                json!({"identity": "alice", "room": "ops"}),
            )
            .await
            .ok(200);
        let as_alice = minted["token"].as_str().unwrap();
        for extra in [json!(null), json!("not-her-token")] {
            let mut msg = json!({"type": "join", "token": as_alice, "take_over": alice_id});
            if !extra.is_null() {
                msg["resume_token"] = extra;
            }
            let (_, r) = join(s, msg).await;
            assert_eq!((r["type"].as_str(), r["code"].as_u64()), (Some("error"), Some(403)), "{r}");
        }
        // Alice noticed nothing.
        let quiet = tokio::time::timeout(Duration::from_millis(300), alice.recv()).await;
        assert!(quiet.is_err(), "alice got {quiet:?}");

        // With her resume token (the same client, e.g. after a reload), the
        // take-over is admitted (it completes when the new connection's
        // media connects).
        let (_, r) = join(
            s,
            json!({"type": "join", "token": alice_token, "take_over": alice_id, "resume_token": resume}),
        )
        .await;
        assert_eq!(r["type"], "joined", "{r}");
        assert_eq!(r["participant"]["id"], alice_id.as_str());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_takes_over_only_from_the_same_device_outside_calls() {
    with_server(LIMIT, async |s, api| {
        let phone = api.user("ann", "phone").await;
        let desk = api
            .login("ann", "correct horse battery", "desktop", "d")
            .await;
        let (first, joined) = join(
            s,
            json!({"type": "join", "token": phone.access, "room": "team"}),
        )
        .await;
        assert_eq!(joined["type"], "joined");
        let id = joined["participant"]["id"].as_str().unwrap().to_owned();
        // Another device of the same account: not outside a call.
        let (_, r) = join(
            s,
            json!({"type": "join", "token": desk.access, "room": "team", "take_over": id}),
        )
        .await;
        assert_eq!(r["code"], 403, "{r}");
        // The same device: yes.
        let (_, r) = join(
            s,
            json!({"type": "join", "token": phone.access, "room": "team", "take_over": id}),
        )
        .await;
        assert_eq!(r["type"], "joined", "{r}");
        assert_eq!(r["participant"]["id"], id.as_str());
        drop(first);
    })
    .await;
}
