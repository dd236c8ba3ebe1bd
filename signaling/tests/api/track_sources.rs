//! What a track carries (`source` on tracks, docs/protocol.md): named by
//! mid in the publisher's `offer`, shown to the others and in the server
//! API; a stopped m-line unpublishes its track alone; bad names are refused.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Ws, dev_token, with_server};
use serde_json::{Value, json};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Input, Output, Rtc};
use tokio::net::UdpSocket;
use vela_signaling::token::{TokenKeys, VideoGrant};

/// Joins `room` as `identity` over a bare socket; returns it with `joined`.
async fn join(s: &vela_signaling::RunningServer, room: &str, identity: &str) -> (Ws, Value) {
    let token = dev_token(s, room, identity).await;
    let mut ws = Ws::connect(s).await;
    ws.send(json!({"type": "join", "token": token})).await;
    let joined = ws.expect("joined").await;
    (ws, joined)
}

/// Runs `rtc` over `socket` until the task is aborted (ICE, DTLS: the
/// server publishes tracks once connected); media is not needed here.
fn drive(rtc: Arc<Mutex<Rtc>>, socket: UdpSocket) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let local = socket.local_addr().unwrap();
        let mut buf = vec![0u8; 2048];
        loop {
            let mut out = Vec::new();
            let wait = {
                let mut rtc = rtc.lock().unwrap();
                loop {
                    match rtc.poll_output() {
                        Ok(Output::Transmit(t)) => out.push(t),
                        Ok(Output::Timeout(t)) => {
                            break t.saturating_duration_since(Instant::now());
                        }
                        Ok(Output::Event(_)) => {}
                        Err(_) => return,
                    }
                }
            };
            for t in out {
                let _ = socket.send_to(&t.contents, t.destination).await;
            }
            let wait = wait.clamp(Duration::from_millis(1), Duration::from_millis(20));
            tokio::select! {
                r = socket.recv_from(&mut buf) => {
                    if let Ok((n, src)) = r
                        && let Ok(rcv) = Receive::new(Protocol::Udp, src, local, &buf[..n]) {
                        let _ = rtc.lock().unwrap().handle_input(Input::Receive(Instant::now(), rcv));
                    }
                }
                _ = tokio::time::sleep(wait) => {
                    let _ = rtc.lock().unwrap().handle_input(Input::Timeout(Instant::now()));
                }
            }
        }
    })
}

/// The next message of `ty` within 10 s, skipping others.
async fn next_of(ws: &mut Ws, ty: &str) -> Value {
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = tokio::time::timeout_at(end, ws.recv())
            .await
            .unwrap_or_else(|_| panic!("no {ty} in 10 s"))
            .unwrap_or_else(|| panic!("socket closed before {ty}"));
        if m["type"] == ty {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_screen_share_is_named_shown_and_unpublished_alone() {
    with_server(Duration::from_secs(60), async |s, api| {
        let (mut bob, _) = join(s, "share", "bob").await;
        let (mut alice, joined) = join(s, "share", "alice").await;
        let alice_id = joined["participant"]["id"].as_str().unwrap().to_owned();

        // Alice publishes a microphone (not named: by its kind), a screen
        // and the screen's audio.
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut rtc = Rtc::builder().build(Instant::now());
        rtc.add_local_candidate(Candidate::host(socket.local_addr().unwrap(), "udp").unwrap());
        let mut change = rtc.sdp_api();
        let mic = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let screen = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let screen_audio =
            change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let (offer, pending) = change.apply().unwrap();
        let sdp = offer.to_sdp_string();

        // Refused, changing nothing: an unknown source, a source on a bad mid.
        for sources in [
            json!({screen.to_string(): "webcam"}),
            json!({"": "screen"}),
            json!({"a-mid-much-too-long-for-sdp": "screen"}),
        ] {
            alice
                .send(json!({"type": "offer", "sdp": sdp, "sources": sources}))
                .await;
            let e = next_of(&mut alice, "error").await;
            assert_eq!(e["code"], 400, "{sources}: {e}");
            assert!(e["message"].as_str().unwrap().contains("sources"), "{e}");
        }

        // A camera source named on an audio m-line does not fit: by its kind.
        alice
            .send(json!({"type": "offer", "sdp": sdp, "sources": {
                mic.to_string(): "camera",
                screen.to_string(): "screen",
                screen_audio.to_string(): "screen_audio",
            }}))
            .await;
        let answer = next_of(&mut alice, "answer").await;
        rtc.sdp_api()
            .accept_answer(
                pending,
                SdpAnswer::from_sdp_string(answer["sdp"].as_str().unwrap()).unwrap(),
            )
            .unwrap();
        let rtc = Arc::new(Mutex::new(rtc));
        let driver = drive(rtc.clone(), socket);

        let mut published = Vec::new();
        while published.len() < 3 {
            let m = next_of(&mut bob, "track_published").await;
            assert_eq!(m["participant_id"], alice_id.as_str());
            published.push(m["track"].clone());
        }
        let by_source = |src: &str| -> Value {
            published
                .iter()
                .find(|t| t["source"] == src)
                .unwrap_or_else(|| panic!("no {src} track in {published:?}"))
                .clone()
        };
        let (mic_t, screen_t, sa_t) = (
            by_source("microphone"),
            by_source("screen"),
            by_source("screen_audio"),
        );
        assert_eq!(mic_t["kind"], "audio");
        assert_eq!(screen_t["kind"], "video");
        assert_eq!(sa_t["kind"], "audio");

        // The server API shows the same.
        let admin = TokenKeys::new(vela_config::DEV_API_KEY, vela_config::DEV_API_SECRET)
            .issue(
                "mod",
                None,
                VideoGrant {
                    room: Some("share".into()),
                    room_admin: true,
                    ..VideoGrant::default()
                },
                Duration::from_secs(600),
            )
            .unwrap();
        let list = api
            .get("/api/v1/rooms/share/participants", &admin)
            .await
            .ok(200);
        let people = list["participants"].as_array().unwrap();
        let a = people.iter().find(|p| p["identity"] == "alice").unwrap();
        let mut sources: Vec<&str> = a["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["source"].as_str().unwrap())
            .collect();
        sources.sort_unstable();
        assert_eq!(sources, ["microphone", "screen", "screen_audio"]);

        // A third participant sees them in `joined`.
        let (_carol, cj) = join(s, "share", "carol").await;
        let a = cj["participants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["identity"] == "alice")
            .unwrap()
            .clone();
        assert!(
            a["tracks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["source"] == "screen"),
            "{a}"
        );

        // The share ends: its two m-lines stop sending; the microphone stays.
        let offer = {
            let mut rtc = rtc.lock().unwrap();
            let mut change = rtc.sdp_api();
            change.set_direction(screen, Direction::Inactive);
            change.set_direction(screen_audio, Direction::Inactive);
            change.apply().unwrap().0
        };
        alice
            .send(json!({"type": "offer", "sdp": offer.to_sdp_string()}))
            .await;
        next_of(&mut alice, "answer").await;
        let mut gone = Vec::new();
        while gone.len() < 2 {
            let m = next_of(&mut bob, "track_unpublished").await;
            assert_eq!(m["participant_id"], alice_id.as_str());
            gone.push(m["track_id"].clone());
        }
        gone.sort_by_key(|v| v.to_string());
        let mut want = vec![screen_t["id"].clone(), sa_t["id"].clone()];
        want.sort_by_key(|v| v.to_string());
        assert_eq!(gone, want);
        let list = api
            .get("/api/v1/rooms/share/participants", &admin)
            .await
            .ok(200);
        let a = list["participants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["identity"] == "alice")
            .unwrap()
            .clone();
        let left: Vec<&Value> = a["tracks"].as_array().unwrap().iter().collect();
        assert_eq!(left.len(), 1, "{a}");
        assert_eq!(left[0]["id"], mic_t["id"]);
        assert_eq!(left[0]["source"], "microphone");
        driver.abort();
    })
    .await;
}
