//! Joining rooms with the access token of a signed-in device: over the
//! WebSocket (with a `room` field) and over WHIP/WHEP (room from the path).
//! The participant carries the account and the device.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::{Peer, Ws, base, dev_token, with_server};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_joins_with_access_tokens() {
    with_server(LIMIT, async |s, api| {
        let phone = api.user("sam", "phone").await;
        api.call(
            "PATCH",
            "/api/v1/me",
            Some(&phone.access),
            Some(json!({"display_name": "Sam S."})),
        )
        .await
        .ok(200);
        let desk = api
            .login("sam", "correct horse battery", "desktop", "PC")
            .await;

        // Without a room: refused, naming the field.
        let mut ws = Ws::connect(s).await;
        ws.send(json!({"type": "join", "token": phone.access}))
            .await;
        let e = ws.expect("error").await;
        assert_eq!(e["code"], 400);
        assert!(e["message"].as_str().unwrap().starts_with("room:"));

        let mut a = Ws::connect(s).await;
        a.send(json!({"type": "join", "token": phone.access, "room": "team"}))
            .await;
        let joined = a.expect("joined").await;
        let me = &joined["participant"];
        assert_eq!(me["account"], phone.account.to_string());
        assert_eq!(me["device"], phone.device.to_string());
        assert_eq!(me["identity"], format!("sam/{}", phone.device));
        assert_eq!(me["name"], "Sam S.");
        // The second device of the same account is a second participant.
        let mut b = Ws::connect(s).await;
        b.send(json!({"type": "join", "token": desk.access, "room": "team", "name": "Sam (desk)"}))
            .await;
        let joined_b = b.expect("joined").await;
        assert_eq!(
            joined_b["participants"][0]["device"],
            phone.device.to_string()
        );
        assert_eq!(joined_b["participant"]["name"], "Sam (desk)");
        let seen = a.expect("participant_joined").await;
        assert_eq!(seen["participant"]["device"], desk.device.to_string());

        // Room tokens still work, and carry no account.
        let t = dev_token(s, "team", "guest").await;
        let mut g = Ws::connect(s).await;
        g.send(json!({"type": "join", "token": t})).await;
        let joined_g = g.expect("joined").await;
        assert!(joined_g["participant"].get("account").is_none());
        // A room token for another room than the message names: 403.
        let mut g2 = Ws::connect(s).await;
        g2.send(json!({"type": "join", "token": t, "room": "elsewhere"}))
            .await;
        assert_eq!(g2.expect("error").await["code"], 403);
        // A revoked device cannot join.
        api.post("/api/v1/auth/logout", Some(&desk.access), json!({}))
            .await
            .ok(204);
        assert_eq!(b.expect("left").await["reason"], "removed");
        let mut r = Ws::connect(s).await;
        r.send(json!({"type": "join", "token": desk.access, "room": "team"}))
            .await;
        assert_eq!(r.expect("error").await["code"], 401);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_and_whep_accept_access_tokens() {
    with_server(LIMIT, async |s, api| {
        let phone = api.user("tess", "phone").await;
        let desk = api
            .login("tess", "correct horse battery", "desktop", "PC")
            .await;
        let other = api.user("uma", "web").await;
        let whip = format!("{}/whip/stage", base(s));
        let publisher = Peer::http(&whip, &phone.access, true).await.unwrap();
        let location = publisher.location.clone().unwrap();
        let viewer = Peer::http(&format!("{}/whep/stage", base(s)), &other.access, false)
            .await
            .unwrap();
        assert!(
            viewer
                .wait(Duration::from_secs(10), |p| p.video_frames() > 10)
                .await,
            "the viewer receives the publisher's video"
        );
        // Publishing counts as being in a call.
        let me = api.get("/api/v1/presence", &phone.access).await.ok(200);
        assert_eq!(me["me"]["status"], "in_call");
        // Another account may not end it; another device of the same account may.
        api.call("DELETE", &location, Some(&other.access), None)
            .await
            .err(403, None);
        assert_eq!(
            api.call("DELETE", &location, Some(&desk.access), None)
                .await
                .status,
            200
        );
        let mut status = String::new();
        for _ in 0..40 {
            let me = api.get("/api/v1/presence", &phone.access).await.ok(200);
            status = me["me"]["status"].as_str().unwrap().to_owned();
            if status != "in_call" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_ne!(status, "in_call", "still in a call after the DELETE");
        // A bad access token is 401, as a bad room token is.
        let e = Peer::http(&whip, "not-a-token", true).await.err().unwrap();
        assert_eq!(e.0, 401);
        publisher.close().await;
        viewer.close().await;
    })
    .await;
}
