//! LiveKit's signal protocol v0 at `/rtc` (issue 20), spoken by a test
//! client of binary protobuf frames (livekit-protocol's types) with a str0m
//! publisher connection: the validate endpoints, the join, ping in both
//! forms, refusals, a publisher's offer and media seen by a participant of
//! vela's own socket, participant updates, leave; the subscriber
//! connection the server offers (its data channels, msids `PA_|TR_`,
//! renegotiation, trickle, subscription on and off).

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::{Peer, SessionClient, base, dev_token, with_server};
use futures_util::{SinkExt, StreamExt};
use livekit_protocol as lk;
use lk::signal_request::Message as Req;
use lk::signal_response::Message as Resp;
use prost::Message as _;
use str0m::change::{SdpAnswer, SdpOffer};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use vela_signaling::RunningServer;

const LIMIT: Duration = Duration::from_secs(60);

/// A trickled `RTCIceCandidateInit` as browsers send it, with an mDNS host.
const MDNS_CANDIDATE: &str =
    r#"{"candidate":"candidate:1 1 udp 2122260223 abc.local 5000 typ host","sdpMid":"0"}"#;

/// A LiveKit signal client.
struct Signal {
    inner: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// Every connection quality told so far (kept even when skipped).
    quality: Vec<lk::ConnectionQualityInfo>,
}

impl Signal {
    /// Connects to `/rtc`, the token as `access_token` (`query`) or a
    /// bearer header.
    async fn connect(s: &RunningServer, token: &str, query: bool) -> Signal {
        let url = if query {
            format!("ws://{}/rtc?access_token={token}&protocol=16", s.http_addr)
        } else {
            format!("ws://{}/rtc?protocol=16", s.http_addr)
        };
        let mut req = url.into_client_request().unwrap();
        if !query {
            req.headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let (inner, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        Signal {
            inner,
            quality: Vec::new(),
        }
    }

    async fn send(&mut self, m: Req) {
        let bytes = lk::SignalRequest { message: Some(m) }.encode_to_vec();
        self.inner
            .send(Message::Binary(bytes.into()))
            .await
            .unwrap();
    }

    /// The next response, `None` when the socket closed (or after 10 s).
    async fn recv(&mut self) -> Option<Resp> {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.inner.next())
                .await
                .ok()??;
            match m {
                Ok(Message::Binary(b)) => {
                    let m = lk::SignalResponse::decode(b.as_ref()).unwrap().message;
                    if let Some(Resp::ConnectionQuality(q)) = &m {
                        self.quality.extend(q.updates.iter().cloned());
                    }
                    return m;
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Skips responses until `pick` takes one.
    async fn expect<T>(&mut self, what: &str, pick: impl Fn(Resp) -> Option<T>) -> T {
        loop {
            let r = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("socket closed waiting for {what}"));
            if let Some(t) = pick(r) {
                return t;
            }
        }
    }

    async fn join(&mut self) -> lk::JoinResponse {
        self.expect("join", |r| match r {
            Resp::Join(j) => Some(j),
            _ => None,
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_answers_v0_and_refuses_v1() {
    with_server(LIMIT, async |s, api| {
        let token = dev_token(s, "lk", "alice").await;
        let http = &api.http;
        let get = |path: String| async move {
            let r = http.get(format!("{}{path}", base(s))).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        };
        assert_eq!(
            get(format!("/rtc/validate?access_token={token}")).await.0,
            200
        );
        let bearer = http
            .get(format!("{}/rtc/validate", base(s)))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(bearer.status().as_u16(), 200);
        assert_eq!(get("/rtc/validate".into()).await.0, 401);
        assert_eq!(get("/rtc/validate?access_token=nope".into()).await.0, 401);
        // v1 is 404, and not for a missing room (the JS SDK would not fall back).
        for path in ["/rtc/v1", "/rtc/v1/validate"] {
            let (status, body) = get(format!("{path}?access_token={token}")).await;
            assert_eq!(status, 404, "{path}");
            assert!(!body.contains("requested room does not exist"), "{body}");
        }
        // No upgrade without a token.
        let url = format!("ws://{}/rtc", s.http_addr);
        assert!(tokio_tungstenite::connect_async(url).await.is_err());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_livekit_participant_joins_pings_and_is_refused_clearly() {
    with_server(LIMIT, async |s, _| {
        let mut vela = SessionClient::join(s, "lk", "vela", true).await;
        let token = dev_token(s, "lk", "alice").await;
        let mut lk = Signal::connect(s, &token, false).await;
        let join = lk.join().await;
        assert_eq!(join.room.as_ref().unwrap().name, "lk");
        assert!(join.room.as_ref().unwrap().sid.starts_with("RM_"));
        let me = join.participant.as_ref().unwrap();
        assert_eq!(me.identity, "alice");
        assert!(me.sid.starts_with("PA_"), "{}", me.sid);
        assert!(me.permission.as_ref().unwrap().can_publish);
        assert!(me.permission.as_ref().unwrap().can_subscribe);
        assert_eq!(join.other_participants.len(), 1);
        assert_eq!(join.other_participants[0].identity, "vela");
        assert!(join.ping_interval > 0 && join.ping_timeout > 0);
        assert!(!join.subscriber_primary);
        assert!(!join.server_info.as_ref().unwrap().version.is_empty());

        // Ping in both forms.
        lk.send(Req::Ping(1234)).await;
        let pong = lk.expect("pong", |r| match r {
            Resp::Pong(t) => Some(t),
            _ => None,
        });
        assert_eq!(pong.await, 1234);
        lk.send(Req::PingReq(lk::Ping {
            timestamp: 99,
            rtt: 0,
        }))
        .await;
        let pong = lk
            .expect("pong_resp", |r| match r {
                Resp::PongResp(p) => Some(p),
                _ => None,
            })
            .await;
        assert_eq!(pong.last_ping_timestamp, 99);
        assert!(pong.timestamp > 0);

        // What vela does not do yet is refused in words, not ignored.
        lk.send(Req::UpdateMetadata(lk::UpdateParticipantMetadata {
            name: "Alice".into(),
            ..lk::UpdateParticipantMetadata::default()
        }))
        .await;
        let refusal = lk
            .expect("request_response", |r| match r {
                Resp::RequestResponse(r) => Some(r),
                _ => None,
            })
            .await;
        assert_eq!(
            refusal.reason,
            lk::request_response::Reason::UnsupportedType as i32
        );
        assert!(
            refusal.message.contains("update_metadata"),
            "{}",
            refusal.message
        );

        // The vela participant sees it join.
        assert!(
            SessionClient::pump_until(&mut [&mut vela], 50, |c| c.seen.iter().any(|v| {
                v["type"] == "participant_joined" && v["participant"]["identity"] == "alice"
            }))
            .await
        );

        // A participant of vela's socket joining and leaving is an update.
        let mut bob = SessionClient::join(s, "lk", "bob", false).await;
        let active = lk::participant_info::State::Active as i32;
        let gone = lk::participant_info::State::Disconnected as i32;
        let joined = lk
            .expect("update", |r| match r {
                Resp::Update(u) => u.participants.into_iter().find(|p| p.identity == "bob"),
                _ => None,
            })
            .await;
        assert_eq!(joined.state, active);
        bob.ws.send(serde_json::json!({"type": "leave"})).await;
        bob.pump(Duration::from_millis(200)).await;
        let left = lk
            .expect("update", |r| match r {
                Resp::Update(u) => u
                    .participants
                    .into_iter()
                    .find(|p| p.identity == "bob" && p.state == gone),
                _ => None,
            })
            .await;
        assert_eq!(left.sid, joined.sid);

        // A WHIP publisher is seen with its two tracks, by LiveKit's sids.
        let whip = Peer::dev_http(s, "lk", "whip", true).await.unwrap();
        let publisher = lk
            .expect("update with whip's tracks", |r| match r {
                Resp::Update(u) => u
                    .participants
                    .into_iter()
                    .find(|p| p.identity == "whip" && p.tracks.len() == 2),
                _ => None,
            })
            .await;
        assert!(publisher.sid.starts_with("PA_"), "{}", publisher.sid);
        assert!(publisher.tracks.iter().all(|t| t.sid.starts_with("TR_")));
        whip.close().await;

        // Leave ends the session, and the room sees it go.
        lk.send(Req::Leave(lk::LeaveRequest::default())).await;
        while lk.recv().await.is_some() {}
        assert!(
            SessionClient::pump_until(&mut [&mut vela], 50, |c| c.seen.iter().any(|v| {
                v["type"] == "participant_left"
                    && v["participant_id"].as_str().map(|s| s.replace("PA", "PA_"))
                        == Some(me.sid.clone())
            }))
            .await,
            "{:?}",
            vela.seen
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_livekit_publisher_offers_and_a_vela_participant_receives_its_media() {
    with_server(LIMIT, async |s, api| {
        let mut viewer = SessionClient::join(s, "lkpub", "viewer", false).await;
        let token = dev_token(s, "lkpub", "alice").await;
        let mut lk = Signal::connect(s, &token, true).await;
        let join = lk.join().await;
        let sid = join.participant.unwrap().sid;
        // Each track is announced first, and gets its sid at once; its cid
        // is the track id of its m-line's msid, as LiveKit's SDKs have it.
        let (offer, pending) = Peer::session(true).await;
        let cids: Vec<String> = offer
            .media_lines
            .iter()
            .map(|m| m.msid().unwrap().track_id)
            .collect();
        let mut given = Vec::new();
        let announced = [
            (&cids[0], lk::TrackType::Audio, lk::TrackSource::Microphone),
            (&cids[1], lk::TrackType::Video, lk::TrackSource::ScreenShare),
        ];
        for (cid, kind, source) in announced {
            lk.send(Req::AddTrack(lk::AddTrackRequest {
                cid: cid.clone(),
                r#type: kind as i32,
                source: source as i32,
                ..lk::AddTrackRequest::default()
            }))
            .await;
            let published = lk
                .expect("track_published", |r| match r {
                    Resp::TrackPublished(t) => Some(t),
                    _ => None,
                })
                .await;
            assert_eq!(&published.cid, cid);
            let track = published.track.unwrap();
            assert!(track.sid.starts_with("TR_"), "{}", track.sid);
            assert_eq!(track.r#type, kind as i32);
            given.push(track.sid);
        }
        lk.send(Req::Offer(lk::SessionDescription {
            r#type: "offer".into(),
            sdp: offer.to_sdp_string(),
            id: 7,
            ..lk::SessionDescription::default()
        }))
        .await;
        let answer = lk
            .expect("answer", |r| match r {
                Resp::Answer(a) => Some(a),
                _ => None,
            })
            .await;
        assert_eq!(answer.r#type, "answer");
        assert_eq!(answer.id, 7);
        let (_otx, orx) = mpsc::unbounded_channel();
        let (atx, _arx) = mpsc::unbounded_channel();
        let publisher = pending.start(SdpAnswer::from_sdp_string(&answer.sdp).unwrap(), (orx, atx));
        assert!(
            publisher
                .wait(Duration::from_secs(10), |p| p.connected())
                .await
        );
        // Trickle to the publisher connection is taken (an mDNS host: ignored).
        lk.send(Req::Trickle(lk::TrickleRequest {
            candidate_init: MDNS_CANDIDATE.into(),
            target: lk::SignalTarget::Publisher as i32,
            ..lk::TrickleRequest::default()
        }))
        .await;
        // The vela viewer gets both tracks and their media.
        let vela_id = sid.replace("PA_", "PA");
        assert!(
            SessionClient::pump_until(&mut [&mut viewer], 100, |c| {
                c.seen
                    .iter()
                    .filter(|v| v["type"] == "track_published" && v["participant_id"] == vela_id)
                    .count()
                    == 2
                    && c.peer.video_frames() > 10
                    && c.peer.audio_frames() > 10
            })
            .await,
            "{:?}",
            viewer.seen
        );
        // The camera was announced as a screen share: so it is to vela.
        let sources: Vec<&str> = viewer
            .seen
            .iter()
            .filter(|v| v["type"] == "track_published" && v["participant_id"] == vela_id)
            .filter_map(|v| v["track"]["source"].as_str())
            .collect();
        assert!(sources.contains(&"screen"), "{:?}", viewer.seen);
        assert!(sources.contains(&"microphone"), "{:?}", viewer.seen);
        // Muting by the sid it was given reaches the vela viewer.
        lk.send(Req::Mute(lk::MuteTrackRequest {
            sid: given[1].clone(),
            muted: true,
        }))
        .await;
        assert!(
            SessionClient::pump_until(&mut [&mut viewer], 50, |c| {
                c.seen.iter().any(|v| {
                    v["type"] == "track_muted"
                        && v["participant_id"] == vela_id
                        && v["kind"] == "video"
                        && v["muted"] == true
                })
            })
            .await,
            "{:?}",
            viewer.seen
        );
        // The server API unmutes it: the client is told, by the sid it knows.
        let admin = vela_signaling::token::TokenKeys::new(
            vela_config::DEV_API_KEY,
            vela_config::DEV_API_SECRET,
        )
        .issue(
            "admin",
            None,
            vela_signaling::token::VideoGrant {
                room: Some("lkpub".into()),
                room_admin: true,
                ..vela_signaling::token::VideoGrant::default()
            },
            Duration::from_secs(600),
        )
        .unwrap();
        let video = viewer
            .seen
            .iter()
            .find(|v| v["type"] == "track_muted" && v["participant_id"] == vela_id)
            .map(|v| v["track_id"].as_str().unwrap().to_owned())
            .unwrap();
        let path = format!("/api/v1/rooms/lkpub/participants/alice/tracks/{video}/mute");
        api.post(&path, Some(&admin), serde_json::json!({"muted": false}))
            .await
            .ok(200);
        let mute = lk
            .expect("mute", |r| match r {
                Resp::Mute(m) => Some(m),
                _ => None,
            })
            .await;
        assert_eq!(mute.sid, given[1]);
        assert!(!mute.muted);
        publisher.close().await;
        drop(lk);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_the_room_refuses_is_a_leave_with_join_failure() {
    let config = |c: &mut vela_config::Config| c.limits.max_participants_per_room = 1;
    common::with_config(LIMIT, config, async |s, _| {
        let _first = SessionClient::join(s, "full", "first", false).await;
        let token = dev_token(s, "full", "alice").await;
        let mut lk = Signal::connect(s, &token, true).await;
        let leave = lk
            .expect("leave", |r| match r {
                Resp::Leave(l) => Some(l),
                Resp::Join(_) => panic!("joined a full room"),
                _ => None,
            })
            .await;
        assert_eq!(leave.reason, lk::DisconnectReason::JoinFailure as i32);
        assert_eq!(leave.action, lk::leave_request::Action::Disconnect as i32);
        assert!(lk.recv().await.is_none(), "the socket closes");
    })
    .await;
}

/// What the server offers on the subscriber connection, the offer's SDP.
async fn next_offer(lk: &mut Signal) -> lk::SessionDescription {
    lk.expect("offer", |r| match r {
        Resp::Offer(o) => Some(o),
        _ => None,
    })
    .await
}

/// The client's answer on the subscriber connection, for LiveKit.
fn answer_of(a: &SdpAnswer, id: u32) -> Req {
    Req::Answer(lk::SessionDescription {
        r#type: "answer".into(),
        sdp: a.to_sdp_string(),
        id,
        ..lk::SessionDescription::default()
    })
}

/// Whether the video frames `p` receives stop growing (two reads 600 ms
/// apart agree) within `limit`.
async fn video_stops(p: &Peer, limit: Duration) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        let before = p.video_frames();
        tokio::time::sleep(Duration::from_millis(600)).await;
        if p.video_frames() == before {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_livekit_subscriber_connection_receives_a_vela_publisher() {
    with_server(LIMIT, async |s, _| {
        let token = dev_token(s, "lksub", "alice").await;
        let mut lk = Signal::connect(s, &token, false).await;
        let join = lk.join().await;
        assert!(join.other_participants.is_empty());
        // Alone in the room, the server offers the subscriber connection at
        // once, with LiveKit's two data channels and no media.
        let first = next_offer(&mut lk).await;
        assert_eq!(first.r#type, "offer");
        assert!(first.sdp.contains("m=application"), "{}", first.sdp);
        assert!(!first.sdp.contains("m=video"), "{}", first.sdp);
        let (otx, orx) = mpsc::unbounded_channel();
        let (atx, mut arx) = mpsc::unbounded_channel();
        let offer = SdpOffer::from_sdp_string(&first.sdp).unwrap();
        let (answer, sub) = Peer::answering(offer, (orx, atx)).await;
        lk.send(answer_of(&answer, first.id)).await;
        assert!(sub.wait(Duration::from_secs(10), |p| p.connected()).await);
        // Trickle to the subscriber connection is taken: the next response
        // is the pong, no refusal.
        lk.send(Req::Trickle(lk::TrickleRequest {
            candidate_init: MDNS_CANDIDATE.into(),
            target: lk::SignalTarget::Subscriber as i32,
            ..lk::TrickleRequest::default()
        }))
        .await;
        lk.send(Req::Ping(7)).await;
        let next = lk
            .expect("pong", |r| match r {
                Resp::Pong(t) => Some(Ok(t)),
                Resp::RequestResponse(r) => Some(Err(r.message)),
                _ => None,
            })
            .await;
        assert_eq!(next, Ok(7));

        // A WHIP publisher: its tracks announced, then offered (again) on
        // the subscriber connection with msids LiveKit's SDKs map.
        let whip = Peer::dev_http(s, "lksub", "whip", true).await.unwrap();
        // The update naming both tracks and the offers carrying them come
        // in either order (an offer may follow the first track's update):
        // each offer is answered as it comes, none skipped.
        let mut publisher: Option<lk::ParticipantInfo> = None;
        let mut offered = String::new();
        let all_offered = |p: &Option<lk::ParticipantInfo>, offered: &str| {
            p.as_ref().is_some_and(|p| {
                p.tracks
                    .iter()
                    .all(|t| offered.contains(&format!("a=msid:{}|{} {}", p.sid, t.sid, t.sid)))
            })
        };
        while !all_offered(&publisher, &offered) {
            let r = lk
                .recv()
                .await
                .expect("socket closed waiting for whip's tracks and offers");
            match r {
                Resp::Update(u) => {
                    if let Some(p) = u
                        .participants
                        .into_iter()
                        .find(|p| p.identity == "whip" && p.tracks.len() == 2)
                    {
                        publisher = Some(p);
                    }
                }
                Resp::Offer(o) => {
                    otx.send(SdpOffer::from_sdp_string(&o.sdp).unwrap())
                        .unwrap();
                    let answer = tokio::time::timeout(Duration::from_secs(10), arx.recv())
                        .await
                        .unwrap()
                        .unwrap();
                    lk.send(answer_of(&answer, o.id)).await;
                    offered.push_str(&o.sdp);
                }
                _ => {}
            }
        }
        let publisher = publisher.unwrap();
        assert!(
            sub.wait(Duration::from_secs(20), |p| {
                p.video_frames() > 10 && p.audio_frames() > 10
            })
            .await
        );
        // Unsubscribing the video stops it; subscribing again resumes it.
        let video = publisher
            .tracks
            .iter()
            .find(|t| t.r#type == lk::TrackType::Video as i32)
            .unwrap()
            .sid
            .clone();
        let subscription = |on: bool| {
            Req::Subscription(lk::UpdateSubscription {
                track_sids: vec![video.clone()],
                subscribe: on,
                ..lk::UpdateSubscription::default()
            })
        };
        lk.send(subscription(false)).await;
        assert!(video_stops(&sub, Duration::from_secs(15)).await);
        let paused_at = sub.video_frames();
        lk.send(subscription(true)).await;
        assert!(
            sub.wait(Duration::from_secs(15), |p| p.video_frames()
                > paused_at + 5)
                .await
        );
        // track_setting with the track disabled stops it too.
        lk.send(Req::TrackSetting(lk::UpdateTrackSettings {
            track_sids: vec![video.clone()],
            disabled: true,
            ..lk::UpdateTrackSettings::default()
        }))
        .await;
        assert!(video_stops(&sub, Duration::from_secs(15)).await);
        // A track vela does not know is refused in words.
        lk.send(Req::Subscription(lk::UpdateSubscription {
            track_sids: vec!["TR_999999".into()],
            subscribe: true,
            ..lk::UpdateSubscription::default()
        }))
        .await;
        let refusal = lk
            .expect("request_response", |r| match r {
                Resp::RequestResponse(r) => Some(r),
                _ => None,
            })
            .await;
        assert!(
            refusal.message.contains("subscription"),
            "{}",
            refusal.message
        );
        // The room's connection quality, on LiveKit's scale: the WHIP
        // publisher's (on a clean loopback, excellent) among it.
        let end = tokio::time::Instant::now() + Duration::from_secs(15);
        while !lk
            .quality
            .iter()
            .any(|q| q.participant_sid == publisher.sid)
            && tokio::time::Instant::now() < end
        {
            lk.send(Req::Ping(1)).await;
            lk.recv().await;
        }
        let q = lk
            .quality
            .iter()
            .find(|q| q.participant_sid == publisher.sid)
            .unwrap_or_else(|| panic!("no quality of whip: {:?}", lk.quality));
        assert!(q.score > 0.0, "{q:?}");
        assert_ne!(q.quality, lk::ConnectionQuality::Lost as i32);
        whip.close().await;
        sub.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_response_hands_out_vela_s_turn_servers() {
    let config = |c: &mut vela_config::Config| {
        c.turn.urls = vec![
            "stun:turn.example.com:3478".into(),
            "turn:turn.example.com:3478?transport=udp".into(),
        ];
        c.turn.secret = "livekit-ice-test-secret-0123".into();
        c.turn.ttl_secs = 600;
    };
    common::with_config(LIMIT, config, async |s, _| {
        let token = dev_token(s, "lkice", "alice").await;
        let mut lk = Signal::connect(s, &token, true).await;
        let join = lk.join().await;
        let servers = &join.ice_servers;
        assert_eq!(servers.len(), 2, "{servers:?}");
        assert_eq!(servers[0].urls, ["stun:turn.example.com:3478"]);
        assert!(servers[0].username.is_empty() && servers[0].credential.is_empty());
        assert_eq!(
            servers[1].urls,
            ["turn:turn.example.com:3478?transport=udp"]
        );
        // TURN REST credentials naming the participant, as vela's `joined`.
        let me = join.participant.unwrap().sid.replace("PA_", "PA");
        assert!(
            servers[1].username.ends_with(&format!(":{me}")),
            "{servers:?}"
        );
        assert!(!servers[1].credential.is_empty());
    })
    .await;
}
