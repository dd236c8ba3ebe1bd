//! LiveKit's RoomService over Twirp (issue 20, item 4), driven by LiveKit's
//! own server SDKs, installed at pinned versions by `scripts/livekit-sdks.sh`
//! (scripts/test.sh runs it; these tests run it too, so they also work
//! alone):
//! - Python's `livekit-api` (protobuf bodies): `livekit/room_service.py`
//!   creates and lists rooms, mints join tokens, lists, gets, mutes, updates
//!   and removes participants, sends data, deletes the rooms, and checks
//!   vela's webhooks with the SDK's `WebhookReceiver`;
//! - Node's `livekit-server-sdk` (JSON bodies): `livekit/node/room_service.mjs`,
//!   the same calls but webhooks.
//!
//! The participants, joined here over vela's own room protocol with real
//! media (str0m over loopback), are checked to have been told each change.
//! Also the JSON encoding and the Twirp errors, over plain HTTP.
//!
//! And the signal protocol at `/rtc` with LiveKit's real-time Python SDK
//! (`livekit`): `livekit/rtc_publish.py` publishes to a vela participant
//! and to `livekit/rtc_watch.py`, which subscribes and decodes; data
//! packets go between them and vela's participant both ways.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

#[path = "api/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{SessionClient, with_config};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use vela_signaling::token::{TokenKeys, VideoGrant};

const LIMIT: Duration = Duration::from_secs(240);

/// The workspace's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Installs LiveKit's SDKs (or finds them up to date) with
/// scripts/livekit-sdks.sh; returns the venv's python.
async fn livekit_sdks() -> PathBuf {
    // Both tests may ask at once: one runs the script at a time.
    static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = ONE.lock().await;
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(root().join("scripts/livekit-sdks.sh"))
            .stderr(Stdio::inherit())
            .output(),
    )
    .await
    .expect("scripts/livekit-sdks.sh timed out")
    .expect("scripts/livekit-sdks.sh runs");
    assert!(out.status.success(), "scripts/livekit-sdks.sh failed");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().expect("the venv's python").trim();
    root().join(last)
}

/// Pumps both clients' signaling for `d`.
async fn pump(a: &mut SessionClient, b: &mut SessionClient, d: Duration) {
    tokio::join!(a.pump(d), b.pump(d));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_api_manages_rooms_and_validates_webhooks() {
    let python = livekit_sdks().await;
    let hook_port = vela_testkit::free_port();
    let config = move |c: &mut vela_config::Config| {
        c.webhooks.urls = vec![format!("http://127.0.0.1:{hook_port}/hook")];
        // The receiver starts with the script: the first events may wait for it.
        c.webhooks.retry_initial_ms = 100;
        c.webhooks.retry_max_ms = 1000;
        c.webhooks.max_attempts = 30;
    };
    with_config(LIMIT, config, async |s, _| {
        let room = "lkapi";
        let mut child = tokio::process::Command::new(&python)
            .arg(root().join("signaling/tests/livekit/room_service.py"))
            .env("VELA_URL", common::base(s))
            .env("LIVEKIT_API_KEY", vela_config::DEV_API_KEY)
            .env("LIVEKIT_API_SECRET", vela_config::DEV_API_SECRET)
            .env("ROOM", room)
            .env("WEBHOOK_PORT", hook_port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the venv's python starts");
        let mut stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut next_line = async || {
            tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("the script said nothing for 60 s")
                .unwrap()
                .unwrap_or_default()
        };

        // Join tokens minted by the SDK, then the rooms.
        let mut tokens = std::collections::HashMap::new();
        loop {
            let line = next_line().await;
            if line == "created" {
                break;
            }
            let mut words = line.split(' ');
            assert_eq!(words.next(), Some("token"), "the script said {line:?}");
            let (who, jwt) = (words.next().unwrap(), words.next().unwrap());
            tokens.insert(who.to_owned(), jwt.to_owned());
        }
        let join = async |who: &str, publish: bool| {
            SessionClient::join_with(s, &tokens[who], publish)
                .await
                .unwrap_or_else(|e| panic!("{who}'s SDK-minted token refused: {e}"))
        };
        let mut alice = join("alice", true).await;
        let mut bob = join("bob", false).await;
        for _ in 0..100 {
            pump(&mut alice, &mut bob, Duration::from_millis(100)).await;
            if alice.peer.connected() && bob.peer.video_frames() > 5 {
                break;
            }
        }
        assert!(bob.peer.video_frames() > 5, "bob receives alice's video");
        stdin.write_all(b"joined\n").await.unwrap();
        stdin.flush().await.unwrap();

        // The script's steps, while both clients keep their signaling going.
        let mut said = Vec::new();
        loop {
            tokio::select! {
                line = next_line() => {
                    if line.is_empty() {
                        break;
                    }
                    said.push(line.clone());
                    if line == "done" {
                        break;
                    }
                }
                _ = pump(&mut alice, &mut bob, Duration::from_millis(100)) => {}
            }
        }
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("the script ends")
            .unwrap();
        assert!(status.success(), "the script failed after {said:?}");
        assert_eq!(said.last().map(String::as_str), Some("done"), "{said:?}");
        pump(&mut alice, &mut bob, Duration::from_millis(300)).await;

        // What the participants were told.
        let muted = said
            .iter()
            .find_map(|l| l.strip_prefix("muted "))
            .expect("the script muted a track");
        let vela_track = muted.replace("TR_", "TR");
        let told = |c: &SessionClient, ty: &str, check: &dyn Fn(&Value) -> bool| {
            c.seen.iter().any(|v| v["type"] == ty && check(v))
        };
        assert!(
            told(&alice, "track_muted", &|v| v["track_id"]
                == vela_track.as_str()
                && v["muted"] == true
                && v["kind"] == "video"),
            "alice is told her video was muted: {:?}",
            alice.seen
        );
        assert!(
            told(&bob, "track_muted", &|v| v["track_id"]
                == vela_track.as_str()),
            "bob is told alice's video was muted"
        );
        assert!(
            told(
                &bob,
                "permissions_changed",
                &|v| v["permissions"]["subscribe"] == false
                    && v["permissions"]["publish_data"] == false
            ),
            "bob is told his permissions changed: {:?}",
            bob.seen
        );
        use base64::Engine as _;
        let hello = base64::engine::general_purpose::STANDARD.encode("hello from livekit-api");
        assert!(
            told(&alice, "data", &|v| v["payload"] == hello.as_str()
                && v["topic"] == "greeting"
                && v.get("participant_id").is_none()),
            "alice gets the server's data message: {:?}",
            alice.seen
        );
        assert!(!bob.saw_type("data"), "bob was not a destination");
        assert!(bob.saw("left", "reason", "removed"), "bob is removed");
        assert!(
            alice.saw("participant_left", "participant_id", &bob.id),
            "alice sees bob leave"
        );
        assert!(
            alice.saw("left", "reason", "room_deleted"),
            "alice leaves with the room: {:?}",
            alice.seen
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_node_sdk_manages_rooms_over_json() {
    livekit_sdks().await;
    let node_dir = root().join("signaling/tests/livekit/node");
    with_config(
        LIMIT,
        |_| {},
        async |s, _| {
            let room = "lknode";
            let mut alice = SessionClient::join(s, room, "alice", true).await;
            let mut bob = SessionClient::join(s, room, "bob", false).await;
            for _ in 0..100 {
                pump(&mut alice, &mut bob, Duration::from_millis(100)).await;
                if alice.peer.connected() && bob.peer.video_frames() > 5 {
                    break;
                }
            }
            assert!(bob.peer.video_frames() > 5, "bob receives alice's video");
            let child = tokio::process::Command::new("node")
                .arg(node_dir.join("room_service.mjs"))
                .current_dir(&node_dir)
                .env("VELA_URL", common::base(s))
                .env("LIVEKIT_API_KEY", vela_config::DEV_API_KEY)
                .env("LIVEKIT_API_SECRET", vela_config::DEV_API_SECRET)
                .env("ROOM", room)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .expect("node starts");
            // The script runs while both clients keep their signaling going.
            let run = child.wait_with_output();
            tokio::pin!(run);
            let out = loop {
                tokio::select! {
                    out = &mut run => break out.unwrap(),
                    _ = pump(&mut alice, &mut bob, Duration::from_millis(100)) => {}
                }
            };
            let said = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "the script failed after {said:?}");
            assert_eq!(said.lines().last(), Some("done"), "{said:?}");
            pump(&mut alice, &mut bob, Duration::from_millis(300)).await;

            // What the participants were told.
            let muted = said
                .lines()
                .find_map(|l| l.strip_prefix("muted "))
                .expect("the script muted a track")
                .replace("TR_", "TR");
            assert!(
                alice.seen.iter().any(|v| v["type"] == "track_muted"
                    && v["track_id"] == muted.as_str()
                    && v["muted"] == true),
                "alice is told her video was muted: {:?}",
                alice.seen
            );
            assert!(
                bob.seen.iter().any(|v| v["type"] == "permissions_changed"
                    && v["permissions"]["subscribe"] == false),
                "bob is told his permissions changed"
            );
            use base64::Engine as _;
            let hello = base64::engine::general_purpose::STANDARD.encode("hello from node");
            assert!(
                alice.seen.iter().any(|v| v["type"] == "data"
                    && v["payload"] == hello.as_str()
                    && v["topic"] == "node"),
                "alice gets the data: {:?}",
                alice.seen
            );
            assert!(bob.saw("left", "reason", "removed"), "bob is removed");
            assert!(
                alice.saw("left", "reason", "room_deleted"),
                "alice leaves with the room"
            );
        },
    )
    .await;
}

/// A request refused: method, token, content type, body; the status and
/// Twirp code it gets.
type Refused<'a> = (&'a str, Option<&'a str>, &'a str, &'a str, u16, &'a str);

fn token(grant: VideoGrant) -> String {
    TokenKeys::new(vela_config::DEV_API_KEY, vela_config::DEV_API_SECRET)
        .issue("svc", None, grant, Duration::from_secs(600))
        .unwrap()
}

/// Twirp's JSON encoding (either field name in, the proto names out) and
/// its errors, over plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twirp_json_and_errors() {
    with_config(
        Duration::from_secs(60),
        |_| {},
        async |s, _| {
            let http = reqwest::Client::builder().no_proxy().build().unwrap();
            let url = |m: &str| format!("{}/twirp/livekit.RoomService/{m}", common::base(s));
            let all = token(VideoGrant {
                room_create: true,
                room_list: true,
                room_admin: true,
                room: Some("j".into()),
                ..VideoGrant::default()
            });
            let call = async |m: &str, t: Option<&str>, ct: &str, body: &str| {
                let mut r = http
                    .post(url(m))
                    .header("content-type", ct)
                    .body(body.to_owned());
                if let Some(t) = t {
                    r = r.bearer_auth(t);
                }
                let r = r.send().await.unwrap();
                let status = r.status().as_u16();
                let ct = r
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_owned());
                let v: Value =
                    serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null);
                (status, ct, v)
            };
            let json = "application/json";

            // camelCase in, proto names out.
            let (st, ct, room) = call(
                "CreateRoom",
                Some(&all),
                json,
                r#"{"name":"j","maxParticipants":3,"emptyTimeout":60}"#,
            )
            .await;
            assert_eq!((st, ct.as_deref()), (200, Some(json)), "{room}");
            assert_eq!(room["name"], "j");
            assert_eq!(room["max_participants"], 3);
            assert_eq!(room["empty_timeout"], 60);
            assert_eq!(room["sid"], "RM_j");
            assert!(
                room["creation_time"].as_str().is_some(),
                "int64 as a string: {room}"
            );
            // snake_case in too.
            let (st, _, list) = call("ListRooms", Some(&all), json, r#"{"names":["j"]}"#).await;
            assert_eq!(st, 200);
            assert_eq!(list["rooms"][0]["name"], "j", "{list}");
            let (st, _, list) = call("ListParticipants", Some(&all), json, r#"{"room":"j"}"#).await;
            assert_eq!(
                (st, list),
                (200, json!({})),
                "no participants: an empty message"
            );

            // Errors: the Twirp code, its status, a message.
            let cases: [Refused; 8] = [
                ("ListRooms", None, json, "{}", 401, "unauthenticated"),
                (
                    "ListRooms",
                    Some("not-a-jwt"),
                    json,
                    "{}",
                    401,
                    "unauthenticated",
                ),
                (
                    "DeleteRoom",
                    Some(&token(VideoGrant {
                        room_list: true,
                        ..VideoGrant::default()
                    })),
                    json,
                    r#"{"room":"j"}"#,
                    403,
                    "permission_denied",
                ),
                (
                    "GetParticipant",
                    Some(&all),
                    json,
                    r#"{"room":"j","identity":"x"}"#,
                    404,
                    "not_found",
                ),
                ("NoSuchMethod", Some(&all), json, "{}", 404, "bad_route"),
                (
                    "ListRooms",
                    Some(&all),
                    "text/plain",
                    "{}",
                    404,
                    "bad_route",
                ),
                ("ListRooms", Some(&all), json, "{nope", 400, "malformed"),
                (
                    "UpdateRoomMetadata",
                    Some(&all),
                    json,
                    r#"{"room":"j"}"#,
                    501,
                    "unimplemented",
                ),
            ];
            for (m, t, ct, body, status, code) in cases {
                let (st, rct, v) = call(m, t, ct, body).await;
                assert_eq!(st, status, "{m} {body}: {v}");
                assert_eq!(rct.as_deref(), Some(json), "{m}: errors are JSON");
                assert_eq!(v["code"], code, "{m} {body}: {v}");
                assert!(v["msg"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
            }
            let (st, _, v) = call("CreateRoom", Some(&all), json, r#"{"name":"bad name"}"#).await;
            assert_eq!((st, &v["code"]), (400, &json!("invalid_argument")), "{v}");
            assert_eq!(v["meta"]["field"], "name", "{v}");

            // LiveKit's server SDKs may sign API calls with no identity (no
            // `sub`): fine for the API, refused (401) for a join.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let no_sub = jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &json!({"iss": vela_config::DEV_API_KEY, "exp": now + 600,
                    "video": {"roomList": true, "roomJoin": true, "room": "j"}}),
                &jsonwebtoken::EncodingKey::from_secret(vela_config::DEV_API_SECRET.as_bytes()),
            )
            .unwrap();
            let (st, _, v) = call("ListRooms", Some(&no_sub), json, "{}").await;
            assert_eq!(st, 200, "{v}");
            let joined =
                common::Peer::http(&format!("{}/whip/j", common::base(s)), &no_sub, true).await;
            assert_eq!(
                joined.err().map(|e| e.0),
                Some(401),
                "a join needs an identity"
            );

            // Protobuf: an empty body is an empty ListRoomsRequest.
            let r = http
                .post(url("ListRooms"))
                .header("content-type", "application/protobuf")
                .bearer_auth(&all)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(
                r.headers().get("content-type").unwrap(),
                "application/protobuf"
            );
            let bytes = r.bytes().await.unwrap();
            // Field 1 (rooms), length-delimited, holding field 2 (name) "j".
            assert!(
                bytes.starts_with(&[0x0a]) && bytes.windows(3).any(|w| w == [0x12, 1, b'j']),
                "{bytes:?}"
            );
        },
    )
    .await;
}

/// LiveKit's real-time Python SDK over `/rtc` (issue 20, items 1-3):
/// `livekit/rtc_publish.py` joins, publishes a microphone and a camera
/// (AudioSource, VideoSource) and sends for a few seconds; a participant
/// of vela's own room protocol sees it join with both tracks and receives
/// its audio and video; another LiveKit participant (`livekit/rtc_watch.py`,
/// there before and after, past the ping timeout) is told of its join, its
/// two tracks and its leave, subscribes to them on its subscriber
/// connection and decodes their audio and video; it also receives the
/// media of a WHIP publisher of vela's (not decodable: the test client's
/// frames are made up, so counted as RTP packets). Data goes both ways:
/// alice's data packet reaches the vela viewer and the watcher, the
/// viewer's `data` reaches the watcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_python_sdk_publishes_to_a_vela_participant() {
    let python = livekit_sdks().await;
    common::with_server(LIMIT, async |s, _| {
        let room = "lkrtc";
        let script = async |name: &str, identity: &str, seconds: &str| {
            tokio::process::Command::new(&python)
                .arg(root().join("signaling/tests/livekit").join(name))
                .env("VELA_URL", format!("ws://{}", s.http_addr))
                .env("TOKEN", common::dev_token(s, room, identity).await)
                .env("SECONDS", seconds)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .expect("the venv's python starts")
        };
        let mut viewer = SessionClient::join(s, room, "viewer", false).await;
        let whip = common::Peer::dev_http(s, room, "whip", true).await.unwrap();
        // Another LiveKit participant, there before and after the publisher.
        let mut watcher = script("rtc_watch.py", "watcher", "20").await;
        let mut watched = BufReader::new(watcher.stdout.take().unwrap()).lines();
        // It may say what it subscribed to before it says it connected.
        let mut early = Vec::new();
        let connected = loop {
            let line = tokio::time::timeout(Duration::from_secs(30), watched.next_line())
                .await
                .expect("the watcher connects")
                .unwrap()
                .unwrap_or_default();
            if line.is_empty() || line.starts_with("connected") {
                break line;
            }
            early.push(line);
        };
        assert!(
            connected.starts_with("connected PA_"),
            "{connected} after {early:?}"
        );

        use base64::Engine as _;
        let news = base64::engine::general_purpose::STANDARD.encode("hello from vela");
        let mut child = script("rtc_publish.py", "alice", "6").await;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut said: Vec<String> = Vec::new();
        // The script's lines, while the viewer keeps its signaling going.
        loop {
            tokio::select! {
                line = lines.next_line() => {
                    let Some(line) = line.unwrap() else { break };
                    // Alice's data is out: the viewer's goes to the room
                    // while the watcher is surely still there.
                    if line == "sent data" {
                        viewer.ws.send(json!({"type": "data", "payload": news, "topic": "news"})).await;
                    }
                    said.push(line);
                }
                () = viewer.pump(Duration::from_millis(100)) => {}
            }
        }
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("the script ends")
            .unwrap();
        assert!(status.success(), "the script failed after {said:?}");
        assert_eq!(said.last().map(String::as_str), Some("done"), "{said:?}");
        let sid = said
            .iter()
            .find_map(|l| l.strip_prefix("connected "))
            .expect("the SDK connected");
        assert!(sid.starts_with("PA_"), "{sid}");
        for kind in ["audio", "video"] {
            let published = said
                .iter()
                .find_map(|l| l.strip_prefix(&format!("published {kind} ")));
            assert!(
                published.is_some_and(|t| t.starts_with("TR_")),
                "{kind}: {said:?}"
            );
        }
        // The viewer saw alice join, publish both, and got her media.
        let alice = sid.replace("PA_", "PA");
        let published = viewer
            .seen
            .iter()
            .filter(|v| v["type"] == "track_published")
            .filter(|v| v["participant_id"] == alice.as_str())
            .count();
        assert_eq!(published, 2, "{:?}", viewer.seen);
        let (audio, video) = (viewer.peer.audio_frames(), viewer.peer.video_frames());
        eprintln!("the vela viewer received {audio} audio and {video} video frames");
        assert!(audio > 100 && video > 30, "audio {audio}, video {video}");
        viewer.pump(Duration::from_millis(500)).await;
        assert!(viewer.saw("participant_left", "participant_id", &alice));
        // Alice's data packet reached the vela viewer as vela's `data`.
        let hello = base64::engine::general_purpose::STANDARD.encode("hello from alice");
        let data = viewer
            .seen
            .iter()
            .find(|v| v["type"] == "data" && v["topic"] == "chat")
            .unwrap_or_else(|| panic!("no data: {:?}", viewer.seen));
        assert_eq!(data["payload"], hello.as_str());
        assert_eq!(data["participant_id"], alice.as_str());

        // What the other LiveKit participant was told meanwhile.
        let mut seen = early;
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), watched.next_line())
                .await
                .expect("the watcher ends")
                .unwrap();
            let Some(line) = line else { break };
            seen.push(line);
        }
        assert!(watcher.wait().await.unwrap().success(), "{seen:?}");
        assert!(seen.contains(&format!("joined alice {sid}")), "{seen:?}");
        for kind in ["audio", "video"] {
            let told = seen.iter().any(|l| {
                l.strip_prefix(&format!("published alice {kind} "))
                    .is_some_and(|t| t.starts_with("TR_"))
            });
            assert!(told, "{kind}: {seen:?}");
        }
        assert!(seen.contains(&"left alice".to_owned()), "{seen:?}");
        assert!(seen.contains(&"still connected".to_owned()), "{seen:?}");
        // Data both ways through vela: LiveKit to LiveKit, vela to LiveKit.
        assert!(
            seen.contains(&"data alice chat hello from alice".to_owned()),
            "{seen:?}"
        );
        assert!(
            seen.contains(&"data viewer news hello from vela".to_owned()),
            "{seen:?}"
        );
        // Its subscriber connection: alice's tracks, by the sids it was
        // told, decoded; the WHIP publisher's received.
        let received = |who: &str, kind: &str| -> (u64, u64) {
            let line = seen
                .iter()
                .find_map(|l| l.strip_prefix(&format!("received {who} {kind} ")))
                .unwrap_or_else(|| panic!("nothing of {who}'s {kind}: {seen:?}"));
            let n: Vec<u64> = line
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            (n[0], n[1])
        };
        for kind in ["audio", "video"] {
            let subscribed = seen.iter().any(|l| {
                l.strip_prefix(&format!("subscribed alice {kind} "))
                    .is_some_and(|t| t.starts_with("TR_"))
            });
            assert!(subscribed, "{kind}: {seen:?}");
        }
        let (audio, _) = received("alice", "audio");
        let (video, _) = received("alice", "video");
        eprintln!("the LiveKit watcher decoded {audio} audio and {video} video frames of alice");
        assert!(
            audio > 100 && video > 20,
            "audio {audio}, video {video}: {seen:?}"
        );
        for kind in ["audio", "video"] {
            let (_, packets) = received("whip", kind);
            assert!(packets > 20, "whip's {kind}: {packets} packets: {seen:?}");
        }
        whip.close().await;
    })
    .await;
}
