//! Presence with two users and three devices (plus an outsider): how devices
//! aggregate, who is told, and the heartbeat timeout.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::{Duration, Instant};

use common::{Api, DeviceClient, Login, Seen, Ws, presences_of, with_config};
use serde_json::json;
use vela_config::Config;

const LIMIT: Duration = Duration::from_secs(60);
const TIMEOUT_MS: u64 = 400;
const BEAT: Option<Duration> = Some(Duration::from_millis(100));

/// Alice with a phone and a desktop, Bob with a web page, mutual contacts:
/// `(alice's phone, alice's desktop, bob)`.
async fn alice_and_bob(api: &Api) -> (Login, Login, Login) {
    let alice_phone = api.user("alice", "phone").await;
    let alice_desk = api
        .login("alice", "correct horse battery", "desktop", "Mac")
        .await;
    let bob = api.user("bob", "web").await;
    api.link(&alice_phone, &bob).await;
    (alice_phone, alice_desk, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_three_devices_aggregation_privacy_and_pushes() {
    let config = |c: &mut Config| c.presence.heartbeat_timeout_ms = TIMEOUT_MS;
    with_config(LIMIT, config, async |s, api| {
        let (alice_phone, alice_desk, bob) = alice_and_bob(api).await;
        let carol = api.user("carol", "web").await;
        let alice = alice_phone.account;

        let mut bob_sock = DeviceClient::connect(s, &bob.access, BEAT).await;
        let contacts = bob_sock.ready["contacts"].as_array().unwrap().clone();
        assert_eq!(contacts.len(), 1);
        assert_eq!(contacts[0]["username"], "alice");
        assert_eq!(contacts[0]["presence"]["status"], "offline");
        assert_eq!(
            contacts[0]["presence"]["last_seen"],
            serde_json::Value::Null
        );
        let mut carol_sock = DeviceClient::connect(s, &carol.access, BEAT).await;
        assert_eq!(carol_sock.ready["contacts"], json!([]));

        // First device: online, pushed to bob.
        let mut phone = DeviceClient::connect(s, &alice_phone.access, BEAT).await;
        assert_eq!(phone.ready["presence"]["status"], "online");
        bob_sock.expect_presence(alice, "online").await;
        // Second device: still online, nothing new.
        let desk = DeviceClient::connect(s, &alice_desk.access, BEAT).await;
        // The desktop sets do-not-disturb and a text: dnd beats online.
        desk.send(json!({"type": "set_presence", "status": "dnd", "text": "focus time"}));
        let p = bob_sock.expect_presence(alice, "dnd").await;
        assert_eq!(p["text"], "focus time");
        assert_eq!(p["last_seen"], serde_json::Value::Null);
        // Alice's other device hears it too.
        phone.expect_presence(alice, "dnd").await;
        // The phone goes away: dnd still wins, no push.
        phone.send(json!({"type": "set_presence", "status": "away"}));
        // The desktop joins a room with its access token: in_call beats dnd.
        let mut room = Ws::connect(s).await;
        room.send(json!({"type": "join", "token": alice_desk.access, "room": "daily"}))
            .await;
        let joined = room.expect("joined").await;
        assert_eq!(joined["participant"]["account"], alice.to_string());
        bob_sock.expect_presence(alice, "in_call").await;
        room.send(json!({"type": "leave"})).await;
        room.expect("left").await;
        bob_sock.expect_presence(alice, "dnd").await;
        // Back to online on the desktop: online beats the phone's away.
        desk.send(json!({"type": "set_presence", "status": "online"}));
        let p = bob_sock.expect_presence(alice, "online").await;
        assert_eq!(p["text"], "focus time");
        // Clearing the text is pushed even though the status stays.
        desk.send(json!({"type": "set_presence", "text": ""}));
        bob_sock
            .wait_for("text cleared", |m| {
                m["type"] == "presence" && m["account_id"] == alice && m["text"] == ""
            })
            .await;
        // Over HTTP the same rule holds: the desktop goes away, the phone is
        // away: the account is away.
        let p = api
            .put(
                "/api/v1/presence",
                &alice_desk.access,
                json!({"status": "away"}),
            )
            .await
            .ok(200);
        assert_eq!(p["status"], "away");
        bob_sock.expect_presence(alice, "away").await;
        api.put("/api/v1/presence", &alice_desk.access, json!({}))
            .await
            .err(400, None);
        api.put(
            "/api/v1/presence",
            &alice_desk.access,
            json!({"status": "busy"}),
        )
        .await
        .err(400, Some("status"));

        // Who may look: oneself and mutual contacts; anyone else gets 404.
        let path = format!("/api/v1/presence/{alice}");
        assert_eq!(api.get(&path, &bob.access).await.ok(200)["status"], "away");
        assert_eq!(
            api.get(&path, &alice_phone.access).await.ok(200)["status"],
            "away"
        );
        api.get(&path, &carol.access).await.err(404, None);
        api.get("/api/v1/presence/99999", &carol.access)
            .await
            .err(404, None);
        let overview = api.get("/api/v1/presence", &bob.access).await.ok(200);
        assert_eq!(overview["me"]["status"], "online");
        assert_eq!(overview["contacts"][0]["account_id"], alice);
        let overview = api.get("/api/v1/presence", &carol.access).await.ok(200);
        assert_eq!(overview["contacts"], json!([]));
        // Carol was told nothing about alice or bob.
        let seen = carol_sock.collect(Duration::from_millis(200)).await;
        assert!(presences_of(&seen, alice).is_empty(), "{seen:?}");
        assert!(presences_of(&seen, bob.account).is_empty(), "{seen:?}");

        // Bob ends the link: neither sees the other any more.
        api.delete(&format!("/api/v1/mutual-contacts/{alice}"), &bob.access)
            .await
            .ok(204);
        bob_sock.expect("mutual_contact_removed").await;
        phone.expect("mutual_contact_removed").await;
        api.get(&path, &bob.access).await.err(404, None);
        api.get(
            &format!("/api/v1/presence/{}", bob.account),
            &alice_phone.access,
        )
        .await
        .err(404, None);
        desk.send(json!({"type": "set_presence", "status": "dnd"}));
        phone.expect_presence(alice, "dnd").await;
        let seen = bob_sock.collect(Duration::from_millis(300)).await;
        assert!(presences_of(&seen, alice).is_empty(), "{seen:?}");

        // Carol asks alice; once alice accepts, carol sees her presence.
        let r = api
            .post(
                "/api/v1/contact-requests",
                Some(&carol.access),
                json!({"username": "alice"}),
            )
            .await
            .ok(201);
        let request = phone.expect("contact_request").await;
        assert_eq!(request["request"]["from"]["username"], "carol");
        let id = r["request"]["id"].as_i64().unwrap();
        api.post(
            &format!("/api/v1/contact-requests/{id}/accept"),
            Some(&alice_phone.access),
            json!({}),
        )
        .await
        .ok(200);
        let added = carol_sock.expect("mutual_contact_added").await;
        assert_eq!(added["contact"]["username"], "alice");
        assert_eq!(added["contact"]["presence"]["status"], "dnd");
        desk.send(json!({"type": "set_presence", "status": "online"}));
        carol_sock.expect_presence(alice, "online").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_timeout_not_blips_turns_a_device_offline() {
    // Longer than above, so that reconnecting after a 150 ms blip fits in easily.
    const TIMEOUT_MS: u64 = 600;
    let config = |c: &mut Config| c.presence.heartbeat_timeout_ms = TIMEOUT_MS;
    with_config(LIMIT, config, async |s, api| {
        let (alice_phone, alice_desk, bob) = alice_and_bob(api).await;
        let alice = alice_phone.account;
        let mut bob_sock = DeviceClient::connect(s, &bob.access, BEAT).await;

        let phone = DeviceClient::connect(s, &alice_phone.access, BEAT).await;
        bob_sock.expect_presence(alice, "online").await;

        // A blip: the connection drops and comes back within the timeout.
        phone.drop_connection();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let phone = DeviceClient::connect(s, &alice_phone.access, BEAT).await;
        let seen = bob_sock
            .collect(Duration::from_millis(3 * TIMEOUT_MS))
            .await;
        assert!(
            presences_of(&seen, alice).is_empty(),
            "a blip was pushed: {seen:?}"
        );

        // A lost connection: offline only after the timeout, with a last-seen time.
        let lost = Instant::now();
        phone.drop_connection();
        let before = vela_signaling::ids::now_ms();
        let p = bob_sock.expect_presence(alice, "offline").await;
        let after_ms = lost.elapsed().as_millis() as u64;
        assert!(
            after_ms >= TIMEOUT_MS - 120,
            "offline after only {after_ms} ms"
        );
        let last_seen = p["last_seen"].as_i64().unwrap();
        assert!(
            last_seen <= before && last_seen > before - 1000,
            "{last_seen} vs {before}"
        );
        let q = api
            .get(&format!("/api/v1/presence/{alice}"), &bob.access)
            .await
            .ok(200);
        assert_eq!(
            (q["status"].as_str(), q["last_seen"].as_i64()),
            (Some("offline"), Some(last_seen))
        );

        // A socket that stays open but falls silent goes offline too...
        let desk = DeviceClient::connect(s, &alice_desk.access, None).await;
        bob_sock.expect_presence(alice, "online").await;
        let silent = Instant::now();
        bob_sock.expect_presence(alice, "offline").await;
        assert!(silent.elapsed() >= Duration::from_millis(TIMEOUT_MS - 50));
        // ...and comes back with its next heartbeat.
        desk.heartbeat(BEAT);
        bob_sock.expect_presence(alice, "online").await;

        // Two devices: when the dnd phone is lost, the account falls back to
        // the desktop's status after the timeout.
        let phone = DeviceClient::connect(s, &alice_phone.access, BEAT).await;
        phone.send(json!({"type": "set_presence", "status": "dnd"}));
        bob_sock.expect_presence(alice, "dnd").await;
        phone.drop_connection();
        bob_sock.expect_presence(alice, "online").await;
        // Logging out is immediate, no timeout.
        let out = Instant::now();
        api.post("/api/v1/auth/logout", Some(&alice_desk.access), json!({}))
            .await
            .ok(204);
        bob_sock.expect_presence(alice, "offline").await;
        assert!(out.elapsed() < Duration::from_millis(TIMEOUT_MS));
        let seen = bob_sock.collect(Duration::from_millis(100)).await;
        assert!(!seen.iter().any(|s| matches!(s, Seen::Closed(_))));
    })
    .await;
}
