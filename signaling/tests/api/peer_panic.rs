//! A panic inside one participant's WebRTC stack, on the real server (UDP,
//! the media driver, WebSockets): that participant is told it left, the
//! others that it left, the server stays ready and counts the panic in
//! `/metrics`, and the others' media keeps flowing. The panic is injected
//! with the core's test hook (feature `test-hooks`).

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::{SessionClient, with_server};
use vela_media::core::{ConnectionId, RoomId, RtcCall};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_one_peer_closes_it_alone_and_is_counted() {
    with_server(Duration::from_secs(90), async |s, _| {
        let mut a = SessionClient::join(s, "pp1", "alice", true).await;
        let mut b = SessionClient::join(s, "pp1", "bob", true).await;
        let mut c = SessionClient::join(s, "pp1", "carol", true).await;
        SessionClient::pump_until(&mut [&mut a, &mut b, &mut c], 40, |x| {
            x.peer.video_frames() > 20 && x.peer.audio_frames() > 40
        })
        .await;
        for x in [&a, &b, &c] {
            assert!(
                x.peer.video_frames() > 20 && x.peer.audio_frames() > 40,
                "{} got video {} audio {}",
                x.id,
                x.peer.video_frames(),
                x.peer.audio_frames()
            );
        }

        // Carol's next datagram makes her WebRTC stack panic.
        // Her only connection has her participant's number (`PA<n>`).
        let carol: ConnectionId = c.id.parse().unwrap();
        let room = RoomId::new("pp1").unwrap();
        let injected = s
            .media
            .with_room(&room, move |sfu, _| sfu.inject_panic(carol, RtcCall::Input))
            .await
            .unwrap();
        assert!(injected);
        let left = tokio::time::timeout(Duration::from_secs(5), c.ws.expect("left"))
            .await
            .expect("carol is told at once");
        assert_eq!(left["reason"], "connection_lost");

        tokio::join!(
            a.pump(Duration::from_millis(700)),
            b.pump(Duration::from_millis(700))
        );
        for x in [&a, &b] {
            x.assert_saw_leave(&c.id);
            assert!(!x.saw_type("left"), "{} stays", x.id);
        }
        let metrics = common::scrape_metrics(s).await;
        assert!(
            metrics.contains("\nvela_media_peers_panicked_total 1\n"),
            "{metrics}"
        );
        assert!(metrics.contains("\nvela_participants 2\n"), "{metrics}");
        let ready = reqwest::get(format!("http://{}/readyz", s.http_addr))
            .await
            .unwrap();
        assert_eq!(ready.status(), 200, "the media driver runs on");

        // The two who stayed keep receiving each other.
        let (va, vb) = (a.peer.video_frames(), b.peer.video_frames());
        tokio::join!(
            a.pump(Duration::from_secs(1)),
            b.pump(Duration::from_secs(1))
        );
        assert!(a.peer.video_frames() > va + 10, "bob to alice flows");
        assert!(b.peer.video_frames() > vb + 10, "alice to bob flows");
        c.peer.close().await;
    })
    .await;
}
