//! Session resume: a dropped WebSocket does not end the session; a new socket
//! sending `resume` takes it over (same participant, media untouched, the
//! others see no leave); without a resume the participant leaves with
//! `connection_lost` after `media.reconnect_timeout_ms`. Also `track_settings`.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::{Duration, Instant};

use common::{SessionClient, Ws, with_config};
use serde_json::json;
use vela_config::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_socket_resumes_or_leaves_after_the_reconnect_timeout() {
    let config = |c: &mut Config| c.media.reconnect_timeout_ms = 3000;
    with_config(Duration::from_secs(60), config, async |s, _| {
        let mut a = SessionClient::join(s, "resume", "alice", true).await;
        let mut b = SessionClient::join(s, "resume", "bob", true).await;
        let token = a.joined["resume_token"].as_str().unwrap().to_owned();
        assert!(token.len() >= 20, "joined carries a resume token");
        SessionClient::pump_until(&mut [&mut a, &mut b], 40, |x| x.peer.video_frames() > 20).await;
        assert!(a.peer.video_frames() > 20 && b.peer.video_frames() > 20);

        // track_settings: bob turns alice's video off and on; a bad id is refused.
        let room = vela_media::core::RoomId::new("resume").unwrap();
        let video = s
            .media
            .participants(room)
            .await
            .unwrap()
            .iter()
            .filter(|p| p.id.to_string() == a.id)
            .flat_map(|p| p.tracks.iter())
            .find(|t| t.kind == vela_media::core::TrackKind::Video)
            .map(|t| t.id.to_string())
            .expect("alice's video track id");
        b.ws.send(json!({"type": "track_settings", "track_id": video, "enabled": false}))
            .await;
        b.ws.send(json!({"type": "track_settings", "track_id": video, "enabled": true, "width": 320, "height": 180}))
            .await;
        b.ws.send(json!({"type": "track_settings", "track_id": "nope", "enabled": true}))
            .await;
        let e = b.ws.expect("error").await;
        assert_eq!(e["code"], 400, "{e}");

        // Alice's socket drops (no close frame); a new one resumes.
        let frames = a.peer.video_frames();
        drop(std::mem::replace(&mut a.ws, Ws::connect(s).await));
        tokio::join!(
            a.peer.wait(Duration::from_millis(700), |_| false),
            b.pump(Duration::from_millis(700))
        );
        // A wrong token is refused.
        let mut wrong = Ws::connect(s).await;
        wrong
            .send(json!({"type": "resume", "participant_id": a.id, "resume_token": "x"}))
            .await;
        assert_eq!(wrong.expect("error").await["code"], 404);
        a.ws.send(json!({"type": "resume", "participant_id": a.id, "resume_token": token}))
            .await;
        let joined = a.ws.expect("joined").await;
        assert_eq!(joined["participant"]["id"].as_str(), Some(a.id.as_str()));
        assert_eq!(joined["participants"][0]["id"].as_str(), Some(b.id.as_str()));
        let token = joined["resume_token"].as_str().unwrap().to_owned();
        tokio::join!(
            a.pump(Duration::from_millis(1000)),
            b.pump(Duration::from_millis(1000))
        );
        assert!(a.peer.video_frames() > frames, "media went on");
        assert!(!b.saw("participant_left", "participant_id", &a.id), "bob saw no leave");
        // The resumed socket works: ping.
        a.ws.send(json!({"type": "ping"})).await;
        a.ws.expect("pong").await;

        // Dropped again and not resumed: alice leaves after the timeout.
        drop(std::mem::replace(&mut a.ws, Ws::connect(s).await));
        let dropped = Instant::now();
        let left = loop {
            b.pump(Duration::from_millis(200)).await;
            if let Some(v) = b
                .seen
                .iter()
                .find(|v| v["type"] == "participant_left" && v["participant_id"] == a.id.as_str())
            {
                break v.clone();
            }
            assert!(dropped.elapsed() < Duration::from_secs(10), "alice never left");
        };
        assert_eq!(left["reason"], "connection_lost");
        let after = dropped.elapsed();
        assert!(
            after >= Duration::from_millis(2500),
            "left after {after:?}, before the reconnect timeout"
        );
        // Too late to resume.
        a.ws.send(json!({"type": "resume", "participant_id": a.id, "resume_token": token}))
            .await;
        assert_eq!(a.ws.expect("error").await["code"], 404);
    })
    .await;
}
