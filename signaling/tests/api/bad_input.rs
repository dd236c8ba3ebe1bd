//! Every kind of bad input gets a clear error, and a call running beside it
//! keeps going.

use crate::common;

use std::time::Duration;

use common::{Peer, Ws, base, dev_token, with_server};
use vela_signaling::token::{TokenKeys, VideoGrant};

fn grant(room: &str, publish: bool) -> VideoGrant {
    VideoGrant {
        room: Some(room.into()),
        room_join: true,
        can_publish: Some(publish),
        can_subscribe: Some(true),
        ..VideoGrant::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_the_running_call_goes_on() {
    with_server(Duration::from_secs(90), async |s, _| {
        let http = reqwest::Client::new();
        let b = base(s);

        // A running call: WHIP publisher, WHEP viewer.
        let pub_token = dev_token(s, "call", "camera").await;
        let publisher = Peer::http(&format!("{b}/whip/call"), &pub_token, true)
            .await
            .unwrap();
        let viewer = Peer::dev_http(s, "call", "viewer", false).await.unwrap();
        assert!(
            viewer
                .wait(Duration::from_secs(15), |p| p.video_frames() > 10)
                .await
        );

        // --- HTTP (WHIP) ---
        let whip = format!("{b}/whip/call");
        let post = |token: Option<String>, ct: &'static str, body: String| {
            let mut r = http.post(&whip).header("content-type", ct).body(body);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            r.send()
        };
        let offer_like = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n".to_string();
        let check = |r: reqwest::Response, status: u16| async move {
            let got = r.status().as_u16();
            let body = r.text().await.unwrap();
            assert_eq!(got, status, "body: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON error body");
            assert!(
                !v["message"].as_str().unwrap().is_empty(),
                "a reason: {body}"
            );
            body
        };
        // No token, garbage token, wrong secret, expired, other room.
        check(
            post(None, "application/sdp", offer_like.clone())
                .await
                .unwrap(),
            401,
        )
        .await;
        check(
            post(
                Some("garbage".into()),
                "application/sdp",
                offer_like.clone(),
            )
            .await
            .unwrap(),
            401,
        )
        .await;
        let forged = TokenKeys::new("devkey", "some-other-secret-that-is-long-enough!")
            .issue("eve", None, grant("call", true), Duration::from_secs(60))
            .unwrap();
        check(
            post(Some(forged), "application/sdp", offer_like.clone())
                .await
                .unwrap(),
            401,
        )
        .await;
        let expired = {
            let claims = serde_json::json!({"iss": "devkey", "sub": "old", "exp": 1_000_000_000u64,
                "video": {"room": "call", "roomJoin": true}});
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(vela_config::DEV_API_SECRET.as_bytes()),
            )
            .unwrap()
        };
        let body = check(
            post(Some(expired), "application/sdp", offer_like.clone())
                .await
                .unwrap(),
            401,
        )
        .await;
        assert!(body.contains("expired"), "{body}");
        let other_room = dev_token(s, "elsewhere", "x").await;
        check(
            post(Some(other_room), "application/sdp", offer_like.clone())
                .await
                .unwrap(),
            403,
        )
        .await;
        // Wrong content type, malformed SDP, SDP without media, oversize body.
        let t = dev_token(s, "call", "someone").await;
        check(
            post(Some(t.clone()), "text/plain", offer_like.clone())
                .await
                .unwrap(),
            415,
        )
        .await;
        let body = check(
            post(Some(t.clone()), "application/sdp", "hello".into())
                .await
                .unwrap(),
            400,
        )
        .await;
        assert!(body.contains("malformed SDP"), "{body}");
        check(
            post(Some(t.clone()), "application/sdp", offer_like.clone())
                .await
                .unwrap(),
            400,
        )
        .await;
        // More tracks than limits.max_tracks_per_participant (16).
        let many_tracks = {
            let mut rtc = str0m::Rtc::builder().build(std::time::Instant::now());
            let mut change = rtc.sdp_api();
            for _ in 0..17 {
                change.add_media(
                    str0m::media::MediaKind::Audio,
                    str0m::media::Direction::SendOnly,
                    None,
                    None,
                    None,
                );
            }
            change.apply().unwrap().0.to_sdp_string()
        };
        let body = check(
            post(Some(t.clone()), "application/sdp", many_tracks)
                .await
                .unwrap(),
            400,
        )
        .await;
        assert!(
            body.contains("too many tracks: the offer sends 17, at most 16"),
            "{body}"
        );
        let huge = "a=x\r\n".repeat(20_000);
        let r = post(Some(t.clone()), "application/sdp", huge)
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
        // A subscribe-only token cannot publish.
        let viewer_only = state_token(s, "call", "watcher", false);
        check(
            post(Some(viewer_only), "application/sdp", offer_like.clone())
                .await
                .unwrap(),
            403,
        )
        .await;
        // Bad room name, unknown session, unsupported PATCH.
        let r = http
            .post(format!("{b}/whip/bad%20room"))
            .bearer_auth(&t)
            .header("content-type", "application/sdp")
            .body(offer_like.clone())
            .send()
            .await
            .unwrap();
        check(r, 400).await;
        let session = async |method: reqwest::Method, id: &str| {
            let url = format!("{b}/whip/call/{id}");
            http.request(method, url).bearer_auth(&t).send().await.unwrap()
        };
        check(session(reqwest::Method::DELETE, "PA999999").await, 404).await;
        check(session(reqwest::Method::DELETE, "nonsense").await, 404).await;
        let r = session(reqwest::Method::PATCH, "PA1").await;
        assert_eq!(r.status(), 405);

        // --- WebSocket ---
        let mut ws = Ws::connect(s).await;
        ws.send_text("{not json".into()).await;
        let e = ws.expect("error").await;
        assert_eq!(e["code"], 400);
        assert_eq!(ws.close_code().await, Some(1008));
        // Before a join, a refused message ends the socket (with its reason first).
        let mut ws = Ws::connect(s).await;
        ws.send(serde_json::json!({"type": "join", "token": "garbage"}))
            .await;
        let e = ws.expect("error").await;
        assert_eq!(e["code"], 401);
        assert_eq!(ws.close_code().await, Some(1008));
        let mut ws = Ws::connect(s).await;
        ws.send(serde_json::json!({"type": "ping"})).await;
        assert_eq!(ws.expect("error").await["code"], 400);
        // After a join, bad messages get errors and the session goes on.
        let mut ws = Ws::connect(s).await;
        ws.send(
            serde_json::json!({"type": "join", "token": dev_token(s, "call", "typist").await}),
        )
        .await;
        ws.expect("joined").await;
        for bad in [
            "{not json".to_string(),
            r#"{"type":"teleport"}"#.to_string(),
            r#"{"type":"offer"}"#.to_string(),
            r#"{"type":"offer","sdp":"nonsense"}"#.to_string(),
            r#"{"type":"answer","sdp":"v=0\r\n"}"#.to_string(),
            r#"{"type":"candidate","candidate":"candidate:garbage"}"#.to_string(),
            r#"{"type":"mute","track_id":"XX1","muted":true}"#.to_string(),
            r#"{"type":"mute","kind":"smell","muted":true}"#.to_string(),
            r#"{"type":"join","token":"x"}"#.to_string(),
            "[1,2,3]".to_string(),
        ] {
            ws.send_text(bad.clone()).await;
            let e = ws.expect("error").await;
            let code = e["code"].as_u64().unwrap();
            assert!((400..500).contains(&code), "{bad} -> {e}");
            assert!(!e["message"].as_str().unwrap().is_empty());
        }
        // An mDNS host candidate (Firefox, Chromium hide host addresses so)
        // is no error: ignored.
        ws.send(serde_json::json!({"type": "candidate",
            "candidate": "candidate:1 1 UDP 2122252543 5c1f2a7e-11aa-4b7e-9a1b-3f0e4d2c1b0a.local 51234 typ host"}))
            .await;
        ws.send(serde_json::json!({"type": "ping"})).await;
        let next = ws.recv().await.unwrap();
        assert_eq!(next["type"], "pong", "{next}");
        // Oversize message: closed with 1009.
        ws.send_text(format!(
            r#"{{"type":"offer","sdp":"{}"}}"#,
            "x".repeat(100_000)
        ))
        .await;
        assert_eq!(ws.close_code().await, Some(1009));

        // --- UDP garbage on the media port ---
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let before = s.media.stats().await.unwrap();
        let mut stun_unknown = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
        stun_unknown.extend_from_slice(&[7u8; 12]);
        stun_unknown.extend_from_slice(&[0x00, 0x06, 0x00, 0x03, b'a', b':', b'b', 0]);
        let rtp_like = {
            let mut v = vec![0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 42];
            v.extend_from_slice(&[0u8; 100]);
            v
        };
        let packets: Vec<Vec<u8>> = vec![
            vec![],
            vec![0xff; 1],
            b"hello world".to_vec(),
            vec![0x16, 0xfe, 0xfd, 0, 0, 0, 0],
            stun_unknown,
            rtp_like,
            vec![0xab; 1400],
        ];
        // Paced, so the kernel's receive buffer does not drop any.
        for _ in 0..20 {
            for p in &packets {
                udp.send_to(p, s.udp_addr).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let dropped = |x: &vela_media::core::SfuStats| x.datagrams_unrouted + x.datagrams_malformed;
        let mut after = s.media.stats().await.unwrap();
        for _ in 0..50 {
            if dropped(&after) >= dropped(&before) + 120 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            after = s.media.stats().await.unwrap();
        }
        assert!(
            dropped(&after) >= dropped(&before) + 120,
            "garbage was dropped and counted: {before:?} -> {after:?}"
        );

        // --- The call is unharmed ---
        let frames = viewer.video_frames();
        let audio = viewer.audio_frames();
        assert!(
            viewer
                .wait(Duration::from_secs(5), |p| p.video_frames() > frames + 20
                    && p.audio_frames() > audio + 40)
                .await,
            "media keeps flowing after the bad input"
        );
        let r = http.get(format!("{b}/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        publisher.close().await;
        viewer.close().await;
    })
    .await;
}

#[allow(clippy::unwrap_used)]
fn state_token(
    _s: &vela_signaling::RunningServer,
    room: &str,
    identity: &str,
    publish: bool,
) -> String {
    TokenKeys::new(vela_config::DEV_API_KEY, vela_config::DEV_API_SECRET)
        .issue(
            identity,
            None,
            grant(room, publish),
            Duration::from_secs(60),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_can_wait_in_an_unknown_room_and_a_stranger_is_refused() {
    with_server(Duration::from_secs(30), async |s, _| {
        // Rooms are created on first join (as LiveKit does by default).
        let mut ws = Ws::connect(s).await;
        ws.send(serde_json::json!({"type": "join", "token": dev_token(s, "fresh", "a").await}))
            .await;
        let j = ws.expect("joined").await;
        assert_eq!(j["room"], "fresh");
        // A token without roomJoin cannot join.
        let no_join = TokenKeys::new(vela_config::DEV_API_KEY, vela_config::DEV_API_SECRET)
            .issue(
                "b",
                None,
                VideoGrant {
                    room: Some("fresh".into()),
                    ..Default::default()
                },
                Duration::from_secs(60),
            )
            .unwrap();
        let mut ws2 = Ws::connect(s).await;
        ws2.send(serde_json::json!({"type": "join", "token": no_join}))
            .await;
        assert_eq!(ws2.expect("error").await["code"], 403);
        // The dev token endpoint checks its input too.
        let r = reqwest::get(format!(
            "{}/api/dev-token?room=bad%20room&identity=x",
            base(s)
        ))
        .await
        .unwrap();
        assert_eq!(r.status(), 400);
        let r = reqwest::get(format!("{}/api/dev-token?identity=x", base(s)))
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    })
    .await;
}
