//! The server API over HTTP with real participants (str0m over loopback
//! UDP): every operation works with its grant, is refused without a token
//! (401) or with the wrong grant (403), and acts on the live room.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use base64::Engine;
use common::{SessionClient, with_server};
use serde_json::{Value, json};
use vela_signaling::token::{TokenKeys, VideoGrant};

const LIMIT: Duration = Duration::from_secs(90);

fn keys() -> TokenKeys {
    TokenKeys::new(vela_config::DEV_API_KEY, vela_config::DEV_API_SECRET)
}

/// A service token with `grant`.
fn token(identity: &str, grant: VideoGrant) -> String {
    keys()
        .issue(identity, None, grant, Duration::from_secs(600))
        .unwrap()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Pumps both clients for `d`.
async fn pump(a: &mut SessionClient, b: &mut SessionClient, d: Duration) {
    tokio::join!(a.pump(d), b.pump(d));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_needs_its_grant() {
    with_server(LIMIT, async |_, api| {
        // What each operation needs, on room "ops".
        let ops: [(&str, &str, Option<Value>); 11] = [
            ("POST", "/api/v1/rooms", Some(json!({"name": "ops"}))),
            ("GET", "/api/v1/rooms", None),
            ("GET", "/api/v1/rooms/ops", None),
            ("DELETE", "/api/v1/rooms/ops", None),
            ("GET", "/api/v1/rooms/ops/participants", None),
            ("GET", "/api/v1/rooms/ops/participants/alice", None),
            (
                "PATCH",
                "/api/v1/rooms/ops/participants/alice",
                Some(json!({"permission": {"can_publish": false}})),
            ),
            ("DELETE", "/api/v1/rooms/ops/participants/alice", None),
            (
                "POST",
                "/api/v1/rooms/ops/participants/alice/tracks/1/mute",
                Some(json!({"muted": true})),
            ),
            (
                "POST",
                "/api/v1/rooms/ops/data",
                Some(json!({"payload": b64("x")})),
            ),
            (
                "POST",
                "/api/v1/tokens",
                Some(json!({"identity": "x", "room": "ops"})),
            ),
        ];
        let join_only = token(
            "alice",
            VideoGrant {
                room: Some("ops".into()),
                room_join: true,
                ..VideoGrant::default()
            },
        );
        let admin_elsewhere = token(
            "mod",
            VideoGrant {
                room: Some("other".into()),
                room_admin: true,
                ..VideoGrant::default()
            },
        );
        let api_user = api.user("carol", "web").await;
        for (method, path, body) in &ops {
            let r = api.call(method, path, None, body.clone()).await;
            assert_eq!(
                r.status, 401,
                "{method} {path} without a token: {:?}",
                r.body
            );
            let r = api
                .call(method, path, Some("not-a-jwt"), body.clone())
                .await;
            assert_eq!(r.status, 401, "{method} {path} with garbage: {:?}", r.body);
            for t in [&join_only, &admin_elsewhere, &api_user.access] {
                let r = api.call(method, path, Some(t), body.clone()).await;
                assert_eq!(
                    r.status, 403,
                    "{method} {path} with the wrong grant: {:?}",
                    r.body
                );
                assert!(r.body["message"].is_string());
            }
        }
        // roomList does not let one create, roomCreate does not let one moderate.
        let list = token(
            "svc",
            VideoGrant {
                room_list: true,
                ..VideoGrant::default()
            },
        );
        api.call(
            "POST",
            "/api/v1/rooms",
            Some(&list),
            Some(json!({"name": "x"})),
        )
        .await
        .err(403, None);
        let create = token(
            "svc",
            VideoGrant {
                room_create: true,
                ..VideoGrant::default()
            },
        );
        api.get("/api/v1/rooms/ops/participants", &create)
            .await
            .err(403, None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_participants_moderation_data_and_tokens() {
    with_server(LIMIT, async |s, api| {
        let svc = token(
            "svc",
            VideoGrant {
                room_create: true,
                room_list: true,
                ..VideoGrant::default()
            },
        );
        let admin = token(
            "mod",
            VideoGrant {
                room: Some("ops".into()),
                room_admin: true,
                ..VideoGrant::default()
            },
        );

        // Rooms: create (twice: the same room), list, get; bad input.
        let r = api
            .post(
                "/api/v1/rooms",
                Some(&svc),
                json!({"name": "ops", "max_participants": 2, "empty_timeout": 60, "metadata": "standup"}),
            )
            .await
            .ok(200);
        assert_eq!(r["name"], "ops");
        assert_eq!(r["max_participants"], 2);
        assert_eq!(r["empty_timeout_secs"], 60);
        assert_eq!(r["num_participants"], 0);
        let again = api
            .post("/api/v1/rooms", Some(&svc), json!({"name": "ops"}))
            .await
            .ok(200);
        assert_eq!(again["metadata"], "standup");
        api.post("/api/v1/rooms", Some(&svc), json!({"name": ""}))
            .await
            .err(400, Some("name"));
        api.post("/api/v1/rooms", Some(&svc), json!({"name": "call-9"}))
            .await
            .err(400, Some("name"));
        api.post("/api/v1/rooms", Some(&svc), json!({"name": "x", "max_participants": -1}))
            .await
            .err(400, Some("max_participants"));
        api.post("/api/v1/rooms", Some(&svc), json!({"name": "x", "colour": 1}))
            .await
            .err(400, Some("colour"));
        let list = api.get("/api/v1/rooms", &svc).await.ok(200);
        assert_eq!(list["rooms"].as_array().unwrap().len(), 1);
        let none = api.get("/api/v1/rooms?names=zzz", &svc).await.ok(200);
        assert!(none["rooms"].as_array().unwrap().is_empty());
        api.get("/api/v1/rooms/ops", &admin).await.ok(200);
        api.get("/api/v1/rooms/nope", &svc).await.err(404, None);

        // Tokens for identities without accounts; they join.
        let mint = |identity: &str| {
            json!({"identity": identity, "room": "ops", "name": identity.to_uppercase(), "ttl_secs": 600})
        };
        let ta = api.post("/api/v1/tokens", Some(&admin), mint("alice")).await.ok(200);
        let tb = api.post("/api/v1/tokens", Some(&svc), mint("bob")).await.ok(200);
        let tc = api.post("/api/v1/tokens", Some(&admin), mint("carol")).await.ok(200);
        api.post("/api/v1/tokens", Some(&admin), json!({"identity": "", "room": "ops"}))
            .await
            .err(400, Some("identity"));
        api.post("/api/v1/tokens", Some(&admin), json!({"identity": "x", "room": "ops", "ttl_secs": 0}))
            .await
            .err(400, Some("ttl_secs"));
        let token_of = |v: &Value| v["token"].as_str().unwrap().to_owned();
        let mut a = SessionClient::join_with(s, &token_of(&ta), true).await.unwrap();
        let mut b = SessionClient::join_with(s, &token_of(&tb), true).await.unwrap();
        assert_eq!(a.joined["participant"]["name"], "ALICE");
        assert_eq!(a.joined["can_admin"], false);
        // The room's limit (2) refuses a third.
        let refused = SessionClient::join_with(s, &token_of(&tc), false).await.err().unwrap();
        assert_eq!(refused["code"], 409, "{refused}");
        for _ in 0..50 {
            pump(&mut a, &mut b, Duration::from_millis(100)).await;
            if a.peer.audio_frames() > 20 && b.peer.audio_frames() > 20 && b.peer.video_frames() > 10 {
                break;
            }
        }
        assert!(b.peer.audio_frames() > 20, "media flows before moderation");

        // Participants.
        let ps = api.get("/api/v1/rooms/ops/participants", &admin).await.ok(200);
        let ps = ps["participants"].as_array().unwrap();
        assert_eq!(ps.len(), 2);
        let alice = api.get("/api/v1/rooms/ops/participants/alice", &admin).await.ok(200);
        assert_eq!(alice["identity"], "alice");
        assert_eq!(alice["permissions"]["publish"], true);
        let tracks = alice["tracks"].as_array().unwrap().clone();
        assert_eq!(tracks.len(), 2, "{alice}");
        let audio = tracks.iter().find(|t| t["kind"] == "audio").unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        api.get("/api/v1/rooms/ops/participants/nobody", &admin).await.err(404, None);
        let info = api.get("/api/v1/rooms/ops", &svc).await.ok(200);
        assert_eq!((info["num_participants"].as_u64(), info["num_tracks"].as_u64()), (Some(2), Some(4)));

        // Mute alice's microphone: bob stops hearing her, both are told.
        let m = api
            .post(
                &format!("/api/v1/rooms/ops/participants/alice/tracks/{audio}/mute"),
                Some(&admin),
                json!({"muted": true}),
            )
            .await
            .ok(200);
        assert_eq!(m["muted"], true);
        pump(&mut a, &mut b, Duration::from_millis(500)).await;
        assert!(a.saw("track_muted", "track_id", &audio), "the publisher is told");
        assert!(b.saw("track_muted", "track_id", &audio));
        let own = a.seen.iter().find(|v| v["type"] == "track_muted").unwrap();
        assert_eq!(own["kind"], "audio", "the publisher learns which of its tracks");
        assert_eq!(own["source"], "microphone", "not its screen share's sound");
        let heard = b.peer.audio_frames();
        pump(&mut a, &mut b, Duration::from_secs(1)).await;
        assert_eq!(b.peer.audio_frames(), heard, "nothing forwarded while muted");
        api.post(
            "/api/v1/rooms/ops/participants/alice/tracks/999/mute",
            Some(&admin),
            json!({"muted": true}),
        )
        .await
        .err(404, None);
        api.post(
            &format!("/api/v1/rooms/ops/participants/alice/tracks/{audio}/mute"),
            Some(&admin),
            json!({"muted": false}),
        )
        .await
        .ok(200);
        pump(&mut a, &mut b, Duration::from_secs(1)).await;
        assert!(b.peer.audio_frames() > heard + 10, "unmuted: heard again");

        // Permissions, live: alice may no longer publish.
        let p = api
            .call(
                "PATCH",
                "/api/v1/rooms/ops/participants/alice",
                Some(&admin),
                Some(json!({"permission": {"can_publish": false}})),
            )
            .await
            .ok(200);
        assert_eq!(p["permissions"]["publish"], false);
        assert_eq!(p["permissions"]["subscribe"], true);
        assert!(p["tracks"].as_array().unwrap().is_empty());
        pump(&mut a, &mut b, Duration::from_millis(500)).await;
        assert!(a.seen.iter().any(|v| v["type"] == "permissions_changed"
            && v["permissions"]["publish"] == false));
        assert!(b.saw("track_unpublished", "track_id", &audio));
        api.call(
            "PATCH",
            "/api/v1/rooms/ops/participants/alice",
            Some(&admin),
            Some(json!({"permission": {"can_fly": true}})),
        )
        .await
        .err(400, Some("permission.can_fly"));

        // Data from the server, to all and to one; from a participant.
        let d = api
            .post("/api/v1/rooms/ops/data", Some(&admin), json!({"payload": b64("hello"), "topic": "news"}))
            .await
            .ok(200);
        assert_eq!(d["recipients"], 2);
        let d = api
            .post(
                "/api/v1/rooms/ops/data",
                Some(&admin),
                json!({"payload": b64("psst"), "destination_identities": ["bob"]}),
            )
            .await
            .ok(200);
        assert_eq!(d["recipients"], 1);
        api.post("/api/v1/rooms/ops/data", Some(&admin), json!({"payload": "***"}))
            .await
            .err(400, Some("payload"));
        a.ws.send(json!({"type": "data", "payload": b64("from alice"), "topic": "chat"}))
            .await;
        pump(&mut a, &mut b, Duration::from_millis(500)).await;
        let got = |c: &SessionClient, text: &str| {
            c.seen
                .iter()
                .any(|v| v["type"] == "data" && v["payload"] == b64(text))
        };
        assert!(got(&a, "hello") && got(&b, "hello"));
        assert!(got(&b, "psst") && !got(&a, "psst"));
        assert!(got(&b, "from alice") && !got(&a, "from alice"));
        let from = b.seen.iter().find(|v| v["type"] == "data" && v["topic"] == "chat").unwrap();
        assert_eq!(from["participant_id"].as_str(), Some(a.id.as_str()));

        // Remove bob.
        api.delete("/api/v1/rooms/ops/participants/bob", &admin).await.ok(204);
        pump(&mut a, &mut b, Duration::from_millis(500)).await;
        assert!(b.saw("left", "reason", "removed"), "{:?}", b.seen);
        assert!(a.saw("participant_left", "reason", "removed"));
        api.get("/api/v1/rooms/ops/participants/bob", &admin).await.err(404, None);
        api.delete("/api/v1/rooms/ops/participants/bob", &admin).await.err(404, None);

        // Delete the room: alice leaves with room_deleted.
        api.delete("/api/v1/rooms/ops", &svc).await.ok(204);
        a.pump(Duration::from_millis(500)).await;
        assert!(a.saw("left", "reason", "room_deleted"), "{:?}", a.seen);
        api.get("/api/v1/rooms/ops", &svc).await.err(404, None);
        api.delete("/api/v1/rooms/ops", &svc).await.err(404, None);
        api.get("/api/v1/rooms/ops/participants", &admin).await.err(404, None);
        a.peer.close().await;
        b.peer.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_account_moderates_any_room_and_readyz_answers() {
    with_server(LIMIT, async |s, api| {
        let root = api.admin(s, "root", "web").await;
        api.post(
            "/api/v1/rooms",
            Some(&root.access),
            json!({"name": "any", "empty_timeout": 0}),
        )
        .await
        .ok(200);
        let rooms = api.get("/api/v1/rooms", &root.access).await.ok(200);
        assert_eq!(rooms["rooms"][0]["name"], "any");
        assert!(rooms["rooms"][0]["empty_timeout_secs"].is_null());
        api.get("/api/v1/rooms/any/participants", &root.access)
            .await
            .ok(200);
        let ready = reqwest::get(format!("http://{}/readyz", s.http_addr))
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
    })
    .await;
}
