//! Durability: stop the server and start it again on the same SQLite file;
//! accounts, devices, tokens, contacts and revisions, links, requests and
//! presence texts are all still there. Kill it instead, and the calls it
//! had going on are in their members' histories after the next start (and
//! webhooks say they ended), and who was present has a last-seen time.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::calls;
use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Api, DeviceClient, Login, StoreFile, start_with};
use serde_json::json;

const PW: &str = "correct horse battery";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_a_restart() {
    let file = StoreFile::new("durability");
    tokio::time::timeout(Duration::from_secs(60), async {
        // ----- first life -----
        let s = start_with(file.config()).await;
        let api = Api::new(&s);
        let alice = api.user("alice", "phone").await;
        let desk = api.login("alice", PW, "desktop", "Old PC").await;
        let bob = api.user("bob", "web").await;
        let carol = api.user("carol", "web").await;
        api.link(&alice, &bob).await;
        api.post("/api/v1/contact-requests", Some(&carol.access), json!({"username": "alice"}))
            .await
            .ok(201);
        let mut ids = Vec::new();
        for name in ["Ann", "Ben", "Cat"] {
            let c = api
                .post(
                    "/api/v1/contacts",
                    Some(&alice.access),
                    json!({"display_name": name, "phones": [{"value": "+1 555 0100"}], "linked_account": bob.account}),
                )
                .await
                .ok(201);
            ids.push(c["id"].as_i64().unwrap());
        }
        api.put(
            &format!("/api/v1/contacts/{}", ids[0]),
            &alice.access,
            json!({"display_name": "Ann B", "version": 1, "favorite": true}),
        )
        .await
        .ok(200);
        api.delete(&format!("/api/v1/contacts/{}", ids[1]), &alice.access)
            .await
            .ok(200);
        api.put("/api/v1/presence", &alice.access, json!({"text": "on holiday"}))
            .await
            .ok(200);
        api.delete(&format!("/api/v1/devices/{}", desk.device), &alice.access)
            .await
            .ok(204);
        let sock = DeviceClient::connect(&s, &alice.access, None).await;
        let before_shutdown = vela_signaling::ids::now_ms();
        s.shutdown().await;
        drop(sock);

        // ----- second life, same file -----
        let s = start_with(file.config()).await;
        let api = Api::new(&s);
        // The old access token still works (same key, device not revoked).
        let me = api.get("/api/v1/me", &alice.access).await.ok(200);
        assert_eq!(me["username"], "alice");
        // The revoked device stays revoked.
        api.get("/api/v1/me", &desk.access).await.err(401, None);
        api.post("/api/v1/auth/refresh", None, json!({"refresh_token": desk.refresh}))
            .await
            .err(401, None);
        // The refresh token rotates as before.
        let refreshed = Login::from(
            api.post("/api/v1/auth/refresh", None, json!({"refresh_token": alice.refresh}))
                .await
                .ok(200),
        );
        assert_eq!(refreshed.device, alice.device);
        // The password still works; the username is still taken.
        let again = api.login("alice", PW, "web", "New tab").await;
        api.post("/api/v1/accounts", None, json!({"username": "alice", "password": PW}))
            .await
            .err(409, Some("username"));
        let devices = api.get("/api/v1/devices", &again.access).await.ok(200);
        let labels: Vec<&str> = devices["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["label"].as_str().unwrap())
            .collect();
        assert_eq!(labels, vec!["alice's phone", "New tab"]);

        // Contacts, versions, revisions and the tombstone.
        let list = api.get("/api/v1/contacts", &again.access).await.ok(200);
        assert_eq!(list["revision"], 5);
        let names: Vec<&str> = list["contacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["display_name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["Ann B", "Cat"]);
        let ann = &list["contacts"][0];
        assert_eq!((ann["version"].as_i64(), ann["favorite"].as_bool()), (Some(2), Some(true)));
        assert_eq!(list["contacts"][1]["linked_username"], "bob");
        let changes = api
            .get("/api/v1/contacts/changes?since=3", &again.access)
            .await
            .ok(200);
        let summary: Vec<(i64, bool)> = changes["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["id"].as_i64().unwrap(), c["deleted"].as_bool().unwrap_or(false)))
            .collect();
        assert_eq!(summary, vec![(ids[0], false), (ids[1], true)]);
        // A stale version is still stale; the next change is revision 6.
        api.put(
            &format!("/api/v1/contacts/{}", ids[0]),
            &again.access,
            json!({"display_name": "Lost", "version": 1}),
        )
        .await
        .err(409, None);
        let c = api
            .post("/api/v1/contacts", Some(&again.access), json!({"display_name": "Dan"}))
            .await
            .ok(201);
        assert_eq!(c["revision"], 6);

        // The link, the pending request, the status text and last-seen time.
        let p = api
            .get(&format!("/api/v1/presence/{}", alice.account), &bob.access)
            .await
            .ok(200);
        assert_eq!(p["status"], "offline");
        assert_eq!(p["text"], "on holiday");
        let last_seen = p["last_seen"].as_i64().unwrap();
        assert!(last_seen >= before_shutdown - 1000, "{last_seen} vs {before_shutdown}");
        api.get(&format!("/api/v1/presence/{}", alice.account), &carol.access)
            .await
            .err(404, None);
        let requests = api.get("/api/v1/contact-requests", &again.access).await.ok(200);
        assert_eq!(requests["incoming"][0]["from"]["username"], "carol");
        s.shutdown().await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_going_on_when_the_server_is_killed_are_in_the_history_after() {
    let file = StoreFile::new("crash");
    tokio::time::timeout(Duration::from_secs(90), async {
        // ----- first life: a separate process, killed -----
        let (mut child, addr) = common::start_binary(&file.path).await;
        let api = Api::at(format!("http://{addr}"));
        let ann = api.user("ann", "phone").await;
        let ben = api.user("ben", "phone").await;
        let cat = api.user("cat", "phone").await;
        let dan = api.user("dan", "phone").await;
        // Ann is online (a device socket) and Ben sees it.
        api.link(&ann, &ben).await;
        let online_at = vela_signaling::ids::now_ms();
        let (inner, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/ws"))
            .await
            .unwrap();
        let mut sock = common::Ws { inner };
        sock.send(json!({"type": "auth", "token": ann.access}))
            .await;
        sock.expect("ready").await;
        let p = api
            .get(&format!("/api/v1/presence/{}", ann.account), &ben.access)
            .await
            .ok(200);
        assert_eq!(p["status"], "online");
        // Ann calls Ben, who answers; Cat calls Dan, who is still rung.
        let answered = calls::call(&api, &ann, &[ben.account]).await;
        calls::act(&api, &ben, answered, "accept").await.ok(200);
        let ringing = calls::call(&api, &cat, &[dan.account]).await;
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let killed_at = vela_signaling::ids::now_ms();
        child.start_kill().unwrap();
        child.wait().await.unwrap();

        // ----- second life, same file, with a webhook receiver -----
        let (hook, hooks) = receiver().await;
        let on_file = file.config();
        let s = start_with(move |c| {
            on_file(c);
            c.webhooks.urls = vec![hook];
        })
        .await;
        let api = Api::new(&s);
        let ann_r = calls::record(&api, &ann, answered).await;
        let ben_r = calls::record(&api, &ben, answered).await;
        for (r, direction) in [(&ann_r, "outgoing"), (&ben_r, "incoming")] {
            assert_eq!(r["outcome"], "answered", "{r}");
            assert_eq!(r["direction"], direction, "{r}");
            // Ended at the last heartbeat before the kill, after the answer.
            let ended = r["ended_at"].as_i64().unwrap();
            assert!(ended >= r["answered_at"].as_i64().unwrap(), "{r}");
            assert!(ended <= killed_at, "{r}");
        }
        assert_eq!(ben_r["device_id"], ben.device);
        // Ann was last seen between coming online and the kill.
        let p = api
            .get(&format!("/api/v1/presence/{}", ann.account), &ben.access)
            .await
            .ok(200);
        assert_eq!(p["status"], "offline");
        let last_seen = p["last_seen"].as_i64().unwrap();
        assert!((online_at..=killed_at).contains(&last_seen), "{p}");
        drop(sock);
        // The unanswered call ends as a shutdown ends it: cancelled.
        assert_eq!(
            calls::record(&api, &cat, ringing).await["outcome"],
            "cancelled"
        );
        assert_eq!(
            calls::record(&api, &dan, ringing).await["outcome"],
            "cancelled"
        );
        // Integrations learn that both calls ended, as a shutdown would say.
        let ended = |id: i64| {
            hooks
                .lock()
                .unwrap()
                .iter()
                .find(|e| e["event"] == "call_ended" && e["call"]["id"] == id)
                .cloned()
        };
        for _ in 0..100 {
            if ended(answered).is_some() && ended(ringing).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let e = ended(answered).expect("call_ended for the answered call");
        assert_eq!(e["call"]["state"], "ended", "{e}");
        assert_eq!(e["call"]["ended_at"], ann_r["ended_at"], "{e}");
        let states: Vec<&str> = e["call"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["left", "left"], "{e}");
        let e = ended(ringing).expect("call_ended for the ringing call");
        assert_eq!(e["call"]["members"][1]["state"], "cancelled", "{e}");
        // Once each, and new calls take new ids.
        assert_eq!(calls::history(&api, &ann).await.len(), 1);
        assert_eq!(calls::history(&api, &dan).await.len(), 1);
        let next = calls::call(&api, &ann, &[cat.account]).await;
        assert!(next > ringing && next > answered);
        s.shutdown().await;

        // ----- third life: nothing left over to record again -----
        let s = start_with(file.config()).await;
        let api = Api::new(&s);
        assert_eq!(calls::history(&api, &ann).await.len(), 2);
        assert_eq!(calls::history(&api, &ben).await.len(), 1);
        s.shutdown().await;
    })
    .await
    .expect("test timed out");
}

/// A webhook receiver on loopback: the bodies it got.
async fn receiver() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let into = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let into = into.clone();
            async move {
                if let Ok(v) = serde_json::from_slice(&body) {
                    into.lock().unwrap().push(v);
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), got)
}
