//! Devices: each login is one; a user lists, renames and revokes them, and
//! revoking closes the device's live connections at once; a device whose
//! session ran out is signed out by the server.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::{Api, DeviceClient, Login, StoreFile, Ws, start_with, with_config, with_server};
use serde_json::json;
use vela_config::Config;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_rename_and_revoke_devices() {
    with_server(LIMIT, async |s, api| {
        let phone = api.user("jane", "phone").await;
        let desk = api
            .login("jane", "correct horse battery", "desktop", "Work PC")
            .await;
        let web = api
            .login("jane", "correct horse battery", "web", "Firefox")
            .await;
        let other = api.user("kim", "web").await;

        let mut desk_sock = DeviceClient::connect(s, &desk.access, None).await;
        assert_eq!(desk_sock.ready["device_id"], desk.device);
        let _web_sock = DeviceClient::connect(s, &web.access, None).await;
        // The desktop is also in a room with its access token.
        let mut desk_room = Ws::connect(s).await;
        desk_room
            .send(json!({"type": "join", "token": desk.access, "room": "standup"}))
            .await;
        desk_room.expect("joined").await;

        let list = api.get("/api/v1/devices", &phone.access).await.ok(200);
        let devices = list["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 3);
        let find = |id: i64| devices.iter().find(|d| d["id"] == id).unwrap().clone();
        assert_eq!(find(phone.device)["current"], true);
        assert_eq!(find(phone.device)["connected"], false);
        assert_eq!(find(desk.device)["current"], false);
        assert_eq!(find(desk.device)["kind"], "desktop");
        assert_eq!(find(desk.device)["label"], "Work PC");
        assert_eq!(find(desk.device)["connected"], true);
        assert_eq!(find(desk.device)["status"], "in_call");
        assert_eq!(find(web.device)["status"], "online");

        let renamed = api
            .call(
                "PATCH",
                &format!("/api/v1/devices/{}", web.device),
                Some(&phone.access),
                Some(json!({"label": "Firefox on Linux"})),
            )
            .await
            .ok(200);
        assert_eq!(renamed["label"], "Firefox on Linux");
        api.call(
            "PATCH",
            &format!("/api/v1/devices/{}", web.device),
            Some(&phone.access),
            Some(json!({"label": ""})),
        )
        .await
        .err(400, Some("label"));

        // Someone else's device, or one that does not exist: 404.
        api.delete(&format!("/api/v1/devices/{}", desk.device), &other.access)
            .await
            .err(404, None);
        api.delete("/api/v1/devices/99999", &phone.access)
            .await
            .err(404, None);
        api.delete("/api/v1/devices/nope", &phone.access)
            .await
            .err(404, None);

        // Revoke the desktop from the phone: its socket and its room session close now.
        api.delete(&format!("/api/v1/devices/{}", desk.device), &phone.access)
            .await
            .ok(204);
        let m = desk_sock.expect("session_revoked").await;
        assert_eq!(m["device_id"], desk.device);
        assert_eq!(desk_sock.closed().await, Some(4002));
        assert_eq!(desk_room.expect("left").await["reason"], "removed");
        assert_eq!(desk_room.close_code().await, Some(4002));
        api.get("/api/v1/me", &desk.access).await.err(401, None);
        api.refresh(&desk.refresh).await.err(401, None);
        api.delete(&format!("/api/v1/devices/{}", desk.device), &phone.access)
            .await
            .err(404, None);
        // A revoked device cannot open a socket either.
        let mut ws = Ws::connect_path(s, "/api/v1/ws").await;
        ws.send(json!({"type": "auth", "token": desk.access})).await;
        assert_eq!(ws.expect("error").await["code"], 401);

        let ids = device_ids(api, &phone).await;
        assert_eq!(ids, vec![phone.device, web.device]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_session_ran_out_is_signed_out() {
    let file = StoreFile::new("expired");
    tokio::time::timeout(LIMIT, async {
        let s = start_with(file.config()).await;
        let api = Api::new(&s);
        let old = api.user("jane", "phone").await;
        s.shutdown().await;
        // A month later: the phone never came back, its refresh token expired.
        file.execute("UPDATE devices SET last_active_at = 1").await;
        file.execute("UPDATE refresh_tokens SET expires_at = 2")
            .await;

        // The server signs it out as it starts (and every 10 minutes).
        let s = start_with(file.config()).await;
        let api = Api::new(&s);
        let desk = api
            .login("jane", "correct horse battery", "desktop", "Desk")
            .await;
        let mut listed = Vec::new();
        for _ in 0..50 {
            let list = api.get("/api/v1/devices", &desk.access).await.ok(200);
            listed = list["devices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_i64().unwrap())
                .collect();
            if listed == [desk.device] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(listed, [desk.device], "the expired phone is gone");
        api.refresh(&old.refresh).await.err(401, None);
        s.shutdown().await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_socket_checks_its_token_and_input() {
    with_server(LIMIT, async |s, api| {
        let me = api.user("lena", "web").await;
        // A bad token: error, then close 4001.
        let mut ws = Ws::connect_path(s, "/api/v1/ws").await;
        ws.send(json!({"type": "auth", "token": "nope"})).await;
        assert_eq!(ws.expect("error").await["code"], 401);
        assert_eq!(ws.close_code().await, Some(4001));
        // Anything but auth first.
        let mut ws = Ws::connect_path(s, "/api/v1/ws").await;
        ws.send(json!({"type": "heartbeat"})).await;
        ws.expect("error").await;
        assert_eq!(ws.close_code().await, Some(4001));
        // A header works as well as the first message.
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{}/api/v1/ws", s.http_addr),
            )
            .unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", me.access).parse().unwrap(),
        );
        let (inner, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let mut ws = Ws { inner };
        let ready = ws.expect("ready").await;
        assert_eq!(ready["account_id"], me.account);
        assert_eq!(ready["presence"]["status"], "online");
        assert!(ready["heartbeat_interval_ms"].as_u64().unwrap() > 0);
        ws.send(json!({"type": "heartbeat"})).await;
        ws.expect("pong").await;
        ws.send_text("{bad json".into()).await;
        assert_eq!(ws.expect("error").await["code"], 400);
        ws.send(json!({"type": "set_presence", "status": "sleeping"}))
            .await;
        assert_eq!(ws.expect("error").await["field"], "status");
        ws.send(json!({"type": "set_presence", "text": "x".repeat(141)}))
            .await;
        assert_eq!(ws.expect("error").await["field"], "text");
        ws.send(json!({"type": "auth", "token": me.access})).await;
        ws.expect("error").await;
        ws.send(json!({"type": "ping"})).await;
        ws.expect("pong").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_another_accounts_device_changes_nothing() {
    with_server(LIMIT, async |s, api| {
        let bob = api.user("bob", "phone").await;
        let eve = api.user("eve", "web").await;
        let watcher = api.user("wes", "web").await;
        api.link(&bob, &watcher).await;
        let mut bob_sock =
            DeviceClient::connect(s, &bob.access, Some(Duration::from_secs(1))).await;
        let mut wes_sock =
            DeviceClient::connect(s, &watcher.access, Some(Duration::from_secs(1))).await;
        // What Bob's contact sees of him.
        let presence = format!("/api/v1/presence/{}", bob.account);
        let bob_is_online = async || {
            let p = api.get(&presence, &watcher.access).await.ok(200);
            assert_eq!(p["status"], "online", "{p}");
        };
        bob_is_online().await;

        // Eve tries to sign out Bob's device (ids are sequential): 404, and
        // nothing of Bob's changes.
        let path = format!("/api/v1/devices/{}", bob.device);
        api.delete(&path, &eve.access).await.err(404, None);
        api.call(
            "PATCH",
            &path,
            Some(&eve.access),
            Some(json!({"label": "pwned"})),
        )
        .await
        .err(404, None);
        // Bob's connection stays open and his contacts see no change.
        let seen = bob_sock.collect(Duration::from_millis(700)).await;
        assert!(
            seen.iter().all(|x| !matches!(x, common::Seen::Closed(_))),
            "{seen:?}"
        );
        let seen = wes_sock.collect(Duration::from_millis(700)).await;
        assert!(
            common::presences_of(&seen, bob.account).is_empty(),
            "bob's presence changed: {seen:?}"
        );
        bob_is_online().await;
        // His token, refresh token and device are as they were.
        let list = api.get("/api/v1/devices", &bob.access).await.ok(200);
        assert_eq!(list["devices"][0]["label"], "bob's phone");
        let r = api.refresh(&bob.refresh).await.ok(200);
        assert!(r["access_token"].is_string());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_beyond_the_device_limit_signs_out_the_least_recently_active() {
    let config = |c: &mut Config| c.limits.max_devices_per_account = 3;
    with_config(LIMIT, config, async |s, api| {
        let first = api.user("dana", "phone").await;
        let second = api.login("dana", "correct horse battery", "web", "b").await;
        let third = api.login("dana", "correct horse battery", "web", "c").await;
        // The first device is used again, so the second is the stalest.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let first = common::Login::from(api.refresh(&first.refresh).await.ok(200));
        let mut second_sock = DeviceClient::connect(s, &second.access, None).await;
        let fourth = api.login("dana", "correct horse battery", "web", "d").await;
        let revoked = second_sock.expect("session_revoked").await;
        assert_eq!(revoked["reason"], "device_limit");
        assert_eq!(second_sock.closed().await, Some(4002));
        let ids = device_ids(api, &fourth).await;
        assert_eq!(ids, vec![first.device, third.device, fourth.device]);
        api.get("/api/v1/me", &second.access).await.err(401, None);
    })
    .await;
}

/// The ids of the devices `who`'s account lists.
async fn device_ids(api: &Api, who: &Login) -> Vec<i64> {
    let list = api.get("/api/v1/devices", &who.access).await.ok(200);
    list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect()
}
