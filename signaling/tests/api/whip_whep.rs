//! WHIP publishes and WHEP views, over HTTP and real UDP on loopback, with a
//! str0m client on each side.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::{Peer, base, dev_token, with_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_publisher_reaches_whep_viewer_and_delete_ends_it() {
    with_server(Duration::from_secs(60), async |s, api| {
        let pub_token = dev_token(s, "live", "camera").await;
        let view_token = dev_token(s, "live", "viewer").await;
        let publisher = Peer::http(&format!("{}/whip/live", base(s)), &pub_token, true)
            .await
            .expect("whip accepted");
        let location = publisher.location.clone().expect("Location header");
        assert!(location.starts_with("/whip/live/"), "{location}");

        let viewer = Peer::http(&format!("{}/whep/live", base(s)), &view_token, false)
            .await
            .expect("whep accepted");
        assert!(
            viewer
                .location
                .as_deref()
                .unwrap_or("")
                .starts_with("/whep/live/")
        );
        assert!(
            viewer
                .wait(Duration::from_secs(15), |p| p.video_frames() > 20
                    && p.audio_frames() > 20)
                .await,
            "viewer receives audio {} and video {}",
            viewer.audio_frames(),
            viewer.video_frames()
        );
        assert!(
            publisher
                .stats
                .keyframe_requests
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0,
            "the viewer's arrival asked the publisher for a keyframe"
        );

        // DELETE needs the session's own token.
        let delete =
            async |token: Option<&str>| api.call("DELETE", &location, token, None).await.status;
        assert_eq!(delete(Some(&view_token)).await, 403);
        assert_eq!(delete(None).await, 401);
        assert_eq!(delete(Some(&pub_token)).await, 200);
        assert_eq!(delete(Some(&pub_token)).await, 404);

        // The publisher is gone: the viewer's media stops.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let frames = viewer.video_frames();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            viewer.video_frames(),
            frames,
            "no media after the publisher left"
        );

        publisher.close().await;
        viewer.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_publisher_feeds_a_waiting_viewer() {
    with_server(Duration::from_secs(60), async |s, _| {
        let viewer = Peer::dev_http(s, "late", "viewer", false)
            .await
            .expect("whep accepted into an empty room");
        assert!(
            viewer
                .wait(Duration::from_secs(10), |p| p.connected())
                .await
        );
        let publisher = Peer::dev_http(s, "late", "camera", true)
            .await
            .expect("whip accepted");
        assert!(
            viewer
                .wait(Duration::from_secs(15), |p| p.video_frames() > 10)
                .await,
            "viewer receives the later publisher"
        );
        publisher.close().await;
        viewer.close().await;
    })
    .await;
}
