//! The WebSocket protocol end to end: sessions join, publish, are offered each
//! other's tracks, receive media over UDP, and leave.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::{SessionClient, Ws, dev_token, start, with_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sessions_see_and_receive_each_other_then_one_leaves() {
    with_server(Duration::from_secs(90), async |s, _| {
        let mut a = SessionClient::join(s, "ws1", "alice", true).await;
        assert_eq!(a.joined["room"], "ws1");
        assert_eq!(a.joined["participants"].as_array().unwrap().len(), 0);
        let mut b = SessionClient::join(s, "ws1", "bob", true).await;
        assert_eq!(b.joined["participants"][0]["identity"], "alice");
        let mut c = SessionClient::join(s, "ws1", "carol", true).await;
        assert_eq!(c.joined["participants"].as_array().unwrap().len(), 2);

        // Answer the server's offers for a while; media starts flowing.
        // Each receives two publishers: two audio and two video m-lines.
        SessionClient::pump_until(&mut [&mut a, &mut b, &mut c], 40, |x| {
            x.peer.video_frames() > 40 && x.peer.audio_frames() > 80
        })
        .await;
        for x in [&a, &b, &c] {
            assert!(
                x.peer.video_frames() > 40 && x.peer.audio_frames() > 80,
                "{} got video {} audio {}",
                x.id,
                x.peer.video_frames(),
                x.peer.audio_frames()
            );
            assert!(
                x.seen.iter().any(|v| v["type"] == "offer"),
                "server renegotiated"
            );
        }
        assert!(a.saw("participant_joined", "type", "participant_joined"));
        assert!(a.seen.iter().any(|v| v["type"] == "track_published"
            && v["participant_id"] == b.id.as_str()
            && v["track"]["kind"] == "video"));

        // Mute by kind is announced to the others.
        a.ws.send(serde_json::json!({"type": "mute", "kind": "audio", "muted": true}))
            .await;
        // Carol leaves.
        c.ws.send(serde_json::json!({"type": "leave"})).await;
        let left = c.ws.expect("left").await;
        assert_eq!(left["reason"], "client_leave");
        tokio::join!(
            a.pump(Duration::from_millis(700)),
            b.pump(Duration::from_millis(700))
        );
        for x in [&a, &b] {
            x.assert_saw_leave(&c.id);
        }
        assert!(b.seen.iter().any(|v| v["type"] == "track_muted"
            && v["participant_id"] == a.id.as_str()
            && v["muted"] == true));
        // The two who stayed keep receiving each other.
        let before = a.peer.video_frames();
        tokio::join!(
            a.pump(Duration::from_secs(1)),
            b.pump(Duration::from_secs(1))
        );
        assert!(a.peer.video_frames() > before + 10);

        let stats = s.media.stats().await.unwrap();
        assert_eq!(stats.participants, 2);
        let metrics = common::scrape_metrics(s).await;
        let value = |name: &str| -> u64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&format!("vela_{name} ")))
                .unwrap_or_else(|| panic!("{name} in {metrics}"))
                .parse()
                .unwrap()
        };
        assert_eq!(value("participants"), 2);
        assert_eq!(value("rooms"), 1);
        assert!(value("packets_forwarded_total") > 200);
        assert!(value("packets_forwarded_total") >= value("media_frames_forwarded_total"));
        a.peer.close().await;
        b.peer.close().await;
        c.peer.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_identity_replaces_the_older_session() {
    with_server(Duration::from_secs(30), async |s, _| {
        let token = dev_token(s, "dup", "alice").await;
        let mut first = Ws::connect(s).await;
        first
            .send(serde_json::json!({"type": "join", "token": token}))
            .await;
        first.expect("joined").await;
        let mut second = Ws::connect(s).await;
        second
            .send(serde_json::json!({"type": "join", "token": token}))
            .await;
        second.expect("joined").await;
        let left = first.expect("left").await;
        assert_eq!(left["reason"], "duplicate_identity");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_every_session() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let s = start().await;
        let token = dev_token(&s, "bye", "alice").await;
        let mut ws = Ws::connect(&s).await;
        ws.send(serde_json::json!({"type": "join", "token": token}))
            .await;
        ws.expect("joined").await;
        let stop = tokio::spawn(s.shutdown());
        let left = ws.expect("left").await;
        assert_eq!(left["reason"], "server_shutdown");
        stop.await.unwrap();
    })
    .await
    .expect("test timed out");
}

/// The last level `x` was told of participant `of` (`connection_quality`).
fn quality_of(x: &SessionClient, of: &str) -> Option<String> {
    x.seen
        .iter()
        .filter(|v| v["type"] == "connection_quality")
        .flat_map(|v| v["updates"].as_array().cloned().unwrap_or_default())
        .filter(|u| u["participant_id"] == of)
        .map(|u| {
            let score = u["score"].as_f64().unwrap_or(0.0);
            assert!((1.0..=4.5).contains(&score), "a score out of range: {u}");
            u["quality"].as_str().unwrap_or_default().to_owned()
        })
        .next_back()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_told_connection_quality_of_everyone_in_the_room() {
    with_server(Duration::from_secs(60), async |s, _| {
        let mut a = SessionClient::join(s, "cq1", "alice", true).await;
        let mut b = SessionClient::join(s, "cq1", "bob", true).await;
        let (ia, ib) = (a.id.clone(), b.id.clone());
        // Loopback: both good, each told of both (itself included) within
        // a few of the server's 2 s looks.
        let told = SessionClient::pump_until(&mut [&mut a, &mut b], 100, |x| {
            [&ia, &ib]
                .iter()
                .all(|p| quality_of(x, p).as_deref() == Some("good"))
        })
        .await;
        assert!(told, "alice saw {:?}\nbob saw {:?}", a.seen, b.seen);
        // Only changes are sent: a steady room says nothing more.
        let count = |x: &SessionClient| {
            x.seen
                .iter()
                .filter(|v| v["type"] == "connection_quality")
                .count()
        };
        let before = count(&a);
        a.pump(Duration::from_secs(5)).await;
        assert_eq!(count(&a), before, "no change, no message: {:?}", a.seen);
    })
    .await;
}
