//! Webhooks: a local HTTP receiver gets the events of a scripted session in
//! order, each signed (JWT with the body's SHA-256); a receiver that fails
//! at first gets them all after retries; call events arrive too; and the
//! metrics move while a call runs.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::calls;
use crate::common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use common::{Api, SessionClient};
use serde_json::{Value, json};
use vela_signaling::token::{TokenKeys, VideoGrant};
use vela_signaling::webhook::sign;

const LIMIT: Duration = Duration::from_secs(90);

/// What a receiver got: each delivery's body, and how many requests it refused.
#[derive(Default)]
struct Received {
    events: Vec<Value>,
    refused: u32,
    bad_signatures: u32,
}

/// A webhook receiver on loopback that answers 500 to its first `fail` requests.
async fn receiver(fail: u32) -> (String, Arc<Mutex<Received>>) {
    let got = Arc::new(Mutex::new(Received::default()));
    let state = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            async move {
                let mut r = state.lock().unwrap();
                if r.refused < fail {
                    r.refused += 1;
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                let ok = sign::verify(
                    vela_config::DEV_API_KEY,
                    vela_config::DEV_API_SECRET,
                    auth,
                    &body,
                )
                .is_ok()
                    && headers.get("content-type").and_then(|v| v.to_str().ok())
                        == Some("application/webhook+json");
                if !ok {
                    r.bad_signatures += 1;
                }
                r.events.push(serde_json::from_slice(&body).unwrap());
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), got)
}

/// `event` names of the room events a receiver got, `room_*`/`participant_*`/`track_*` only.
fn room_events(r: &Arc<Mutex<Received>>) -> Vec<String> {
    r.lock()
        .unwrap()
        .events
        .iter()
        .filter(|e| !e["event"].as_str().unwrap().starts_with("call_"))
        .map(|e| {
            let who = e["participant"]["identity"].as_str().unwrap_or("");
            let kind = e["track"]["kind"].as_str().unwrap_or("");
            format!("{} {who} {kind}", e["event"].as_str().unwrap())
                .trim_end()
                .to_owned()
        })
        .collect()
}

async fn wait_for(r: &Arc<Mutex<Received>>, n: usize) {
    for _ in 0..200 {
        if r.lock().unwrap().events.len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} in {text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_session_arrives_in_order_signed_and_after_retries() {
    tokio::time::timeout(LIMIT, async {
        let (good_url, good) = receiver(0).await;
        let (flaky_url, flaky) = receiver(3).await;
        let s = common::start_with(|c| {
            c.webhooks.urls = vec![good_url, flaky_url];
            c.webhooks.retry_initial_ms = 100;
            c.webhooks.max_attempts = 5;
        })
        .await;
        let api = Api::new(&s);
        let svc = TokenKeys::new(vela_config::DEV_API_KEY, vela_config::DEV_API_SECRET)
            .issue(
                "svc",
                None,
                VideoGrant {
                    room_create: true,
                    ..VideoGrant::default()
                },
                Duration::from_secs(600),
            )
            .unwrap();
        let before = common::scrape_metrics(&s).await;

        // The script: a room is made, alice and bob join and publish (audio
        // then video), alice leaves, the room is deleted under bob.
        api.post("/api/v1/rooms", Some(&svc), json!({"name": "hooks"}))
            .await
            .ok(200);
        let mut a = SessionClient::join(&s, "hooks", "alice", true).await;
        a.pump(Duration::from_millis(600)).await;
        let mut b = SessionClient::join(&s, "hooks", "bob", true).await;
        // Carol joins the room but her media never connects: as in LiveKit,
        // she never becomes a participant to the webhooks (no
        // participant_joined, and so no participant_left either).
        let carol_token = common::dev_token(&s, "hooks", "carol").await;
        let mut carol = common::Ws::connect(&s).await;
        carol
            .send(json!({"type": "join", "token": carol_token}))
            .await;
        carol.expect("joined").await;
        carol.send(json!({"type": "leave"})).await;
        SessionClient::pump_until(&mut [&mut a, &mut b], 40, |x| x.peer.video_frames() > 10).await;
        // During the call: the counters move, the join times are recorded.
        let during = common::scrape_metrics(&s).await;
        for m in [
            "vela_packets_forwarded_total",
            "vela_bytes_forwarded_total",
            "vela_media_frames_forwarded_total",
            "vela_join_time_seconds_count",
            // Sessions are tasks (the test's peers share the runtime too).
            "vela_runtime_tasks",
        ] {
            assert!(
                metric(&during, m) > metric(&before, m),
                "{m} moved during the call"
            );
        }
        assert_eq!(metric(&during, "vela_participants"), 2.0);
        assert_eq!(metric(&during, "vela_tracks"), 4.0);
        assert_eq!(metric(&during, "vela_join_time_seconds_count"), 2.0);
        assert!(metric(&during, "vela_join_time_seconds_sum") > 0.0);

        a.ws.send(json!({"type": "leave"})).await;
        b.pump(Duration::from_millis(500)).await;
        api.delete("/api/v1/rooms/hooks", &svc).await.ok(204);
        b.pump(Duration::from_millis(300)).await;

        let expected = [
            "room_started",
            "participant_joined alice",
            "track_published alice audio",
            "track_published alice video",
            "participant_joined bob",
            "track_published bob audio",
            "track_published bob video",
            "track_unpublished alice audio",
            "track_unpublished alice video",
            "participant_left alice",
            "track_unpublished bob audio",
            "track_unpublished bob video",
            "participant_left bob",
            "room_finished",
        ];
        wait_for(&good, expected.len()).await;
        wait_for(&flaky, expected.len()).await;
        assert_eq!(room_events(&good), expected);
        assert_eq!(room_events(&flaky), expected, "in order, after retries");
        for r in [&good, &flaky] {
            let r = r.lock().unwrap();
            assert_eq!(r.bad_signatures, 0, "every delivery is signed");
            let e = &r.events;
            assert!(e.iter().all(|e| e["room"]["name"] == "hooks"));
            assert!(
                e.iter()
                    .all(|e| e["id"].as_str().unwrap().starts_with("EV_"))
            );
            assert!(
                e.iter()
                    .all(|e| e["created_at"].as_u64().unwrap() > 1_700_000_000)
            );
            let left: Vec<&Value> = e
                .iter()
                .filter(|e| e["event"] == "participant_left")
                .collect();
            assert_eq!(left[0]["reason"], "client_leave");
            assert_eq!(left[1]["reason"], "room_deleted");
        }
        assert_eq!(flaky.lock().unwrap().refused, 3);
        // A delivery is counted when its answer is back, which may be after
        // the receiver recorded it.
        let after = common::metrics_until(&s, "28 deliveries", |m| {
            metric(m, "vela_webhooks_delivered_total") >= 28.0
        })
        .await;
        assert!(metric(&after, "vela_webhook_retries_total") >= 3.0);
        assert_eq!(metric(&after, "vela_webhook_failures_total"), 0.0);
        assert!(metric(&after, "vela_webhooks_delivered_total") >= 28.0);
        a.peer.close().await;
        b.peer.close().await;
        s.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_events_and_a_receiver_that_never_answers() {
    tokio::time::timeout(LIMIT, async {
        let (url, got) = receiver(0).await;
        let s = common::start_with(|c| {
            c.calls.ring_timeout_ms = 800;
            // A port nobody listens on: every attempt fails at once.
            c.webhooks.urls = vec![url, "http://127.0.0.1:9/never".into()];
            c.webhooks.retry_initial_ms = 100;
            c.webhooks.max_attempts = 2;
        })
        .await;
        let api = Api::new(&s);
        let ann = api.user("ann", "phone").await;
        let ben = api.user("ben", "phone").await;
        api.link(&ann, &ben).await;

        // Answered, then ended.
        let id = calls::call(&api, &ann, &[ben.account]).await;
        calls::act(&api, &ben, id, "accept").await.ok(200);
        calls::act(&api, &ann, id, "leave").await.ok(200);
        // Missed: nobody answers within the ring timeout.
        let missed = calls::call(&api, &ann, &[ben.account]).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;

        let call_events = |r: &Received| -> Vec<(String, i64)> {
            r.events
                .iter()
                .filter(|e| e["event"].as_str().unwrap().starts_with("call_"))
                .map(|e| {
                    (
                        e["event"].as_str().unwrap().to_owned(),
                        e["call"]["id"].as_i64().unwrap(),
                    )
                })
                .collect()
        };
        for _ in 0..100 {
            if call_events(&got.lock().unwrap()).len() >= 6 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        {
            let r = got.lock().unwrap();
            let seen = call_events(&r);
            let want: Vec<(String, i64)> = [
                ("call_ringing", id),
                ("call_answered", id),
                ("call_ended", id),
                ("call_ringing", missed),
                ("call_missed", missed),
                ("call_ended", missed),
            ]
            .iter()
            .map(|(e, i)| ((*e).to_owned(), *i))
            .collect();
            assert_eq!(seen, want);
            let ringing = r
                .events
                .iter()
                .find(|e| e["event"] == "call_ringing")
                .unwrap();
            assert_eq!(ringing["account_id"], ben.account);
            let answered = r
                .events
                .iter()
                .find(|e| e["event"] == "call_answered")
                .unwrap();
            assert_eq!(answered["account_id"], ben.account);
            assert!(answered["device_id"].is_i64());
            assert_eq!(r.bad_signatures, 0);
        }
        // The dead destination: each event tried twice, then counted as failed.
        let mut failures = 0.0;
        for _ in 0..60 {
            failures = metric(
                &common::scrape_metrics(&s).await,
                "vela_webhook_failures_total",
            );
            if failures >= 6.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(failures >= 6.0, "failures counted: {failures}");
        s.shutdown().await;
    })
    .await
    .expect("test timed out");
}
