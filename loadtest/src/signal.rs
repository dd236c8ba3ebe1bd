//! Joining the server the way real clients do: a WebSocket session
//! (join, offer, answer, then answering the server's renegotiation offers),
//! or WHIP / WHEP over HTTP. Once answered, the connection moves to the
//! [`Engine`]; this task keeps the signaling until the run ends, then leaves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid, Simulcast, SimulcastLayer};
use str0m::{Candidate, Rtc};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use vela_signaling::token::{TokenKeys, VideoGrant};

use crate::media::VideoSpec;
use crate::participant::{Engine, NewClient, Transport};
use crate::scenario::{Planned, Signaling};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// What every joining participant needs.
pub struct SignalContext {
    /// `http://host:port` of the server (the first node with `--nodes`).
    pub http_base: String,
    /// With `--nodes`: every node's `http://host:port`; a participant joins
    /// through `nodes[planned.node]`. Empty: everyone joins `http_base`.
    pub nodes: Vec<String>,
    /// Signs room tokens.
    pub keys: TokenKeys,
    /// HTTP client for WHIP/WHEP.
    pub http: reqwest::Client,
    /// The video publishers offer (simulcast rids).
    pub video: Arc<VideoSpec>,
    /// S3: each WebSocket subscriber asks (`track_settings`) for one remote
    /// video track at the top layer's size and the others at the lowest
    /// layer's, and moves the large one to the next track at this interval.
    pub layer_switch: Option<Duration>,
}

impl SignalContext {
    /// The node `p` joins through.
    fn base(&self, p: &Planned) -> &str {
        self.nodes
            .get(p.node as usize)
            .map_or(self.http_base.as_str(), String::as_str)
    }

    fn ws_url(&self, p: &Planned) -> String {
        let base = self.base(p);
        let rest = base
            .strip_prefix("http://")
            .map(|r| format!("ws://{r}"))
            .or_else(|| base.strip_prefix("https://").map(|r| format!("wss://{r}")))
            .unwrap_or_else(|| base.to_owned());
        format!("{rest}/ws")
    }

    fn token(&self, p: &Planned) -> Result<String, Error> {
        if let Some(t) = &p.access_token {
            return Ok(t.clone());
        }
        let grant = VideoGrant {
            room: Some(p.room.clone()),
            room_join: true,
            can_publish: Some(true),
            can_subscribe: Some(true),
            ..VideoGrant::default()
        };
        Ok(self.keys.issue(
            &p.identity,
            Some(&p.identity),
            grant,
            Duration::from_secs(6 * 3600),
        )?)
    }
}

/// The result of one join.
#[derive(Debug, Clone)]
pub struct JoinOutcome {
    /// Participant index.
    pub id: u32,
    /// The error, when the join failed.
    pub error: Option<String>,
    /// From the join's start to the server's answer.
    pub answer: Duration,
}

/// Joins `p` at its time, hands its connection to `engine`, keeps its
/// signaling until `leave` turns true, then leaves and removes it.
pub async fn participant(
    p: Planned,
    ctx: Arc<SignalContext>,
    engine: Arc<Engine>,
    start: tokio::time::Instant,
    mut leave: watch::Receiver<bool>,
    out: mpsc::UnboundedSender<JoinOutcome>,
) {
    tokio::select! {
        _ = tokio::time::sleep_until(start + p.join_at) => {}
        _ = async { let _ = leave.wait_for(|v| *v).await; } => return,
    }
    match p.signaling {
        Signaling::Ws => ws_session(p, &ctx, &engine, leave, &out).await,
        Signaling::Whip | Signaling::Whep => http_session(p, &ctx, &engine, leave, &out).await,
    }
}

/// A client `Rtc` with its socket, its pending offer and the m-lines it
/// publishes on.
struct Built {
    rtc: Rtc,
    socket: std::net::UdpSocket,
    offer: SdpOffer,
    pending: SdpPendingOffer,
    audio: Option<Mid>,
    video: Option<Mid>,
}

/// A client `Rtc` in RTP mode (the engine writes the packets itself) with
/// its offer: sendonly audio/video (video simulcast) to publish; recvonly
/// audio+video for WHEP; a data channel for a WebSocket subscriber with
/// nothing to send (the server adds m-lines for others' tracks later).
fn build(p: &Planned, video: &VideoSpec) -> Result<Built, Error> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let addr = socket.local_addr()?;
    let mut rtc = Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(addr, "udp")?);
    let mut change = rtc.sdp_api();
    let mut audio = None;
    let mut vid = None;
    if p.signaling == Signaling::Whep {
        change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    } else {
        if p.audio {
            audio = Some(change.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                Some(p.identity.clone()),
                None,
                None,
            ));
        }
        if p.video {
            let sim = video.is_simulcast().then(|| {
                let mut s = Simulcast::new();
                for l in &video.layers {
                    s.add_send_layer(SimulcastLayer::new(&l.rid));
                }
                s
            });
            vid = Some(change.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some(p.identity.clone()),
                None,
                sim,
            ));
        }
        if audio.is_none() && vid.is_none() {
            change.add_channel("vela".into());
        }
    }
    let (offer, pending) = change.apply().ok_or("nothing to offer")?;
    Ok(Built {
        rtc,
        socket,
        offer,
        pending,
        audio,
        video: vid,
    })
}

impl Built {
    /// Applies the server's SDP answer: the connection is ready for the
    /// engine.
    fn answered(mut self, sdp: &str) -> Result<Joined, Error> {
        self.rtc
            .sdp_api()
            .accept_answer(self.pending, SdpAnswer::from_sdp_string(sdp)?)?;
        Ok(Joined {
            rtc: self.rtc,
            socket: self.socket,
            audio: self.audio,
            video: self.video,
            served_by: None,
        })
    }
}

async fn send_json(ws: &mut Ws, v: serde_json::Value) -> Result<(), Error> {
    ws.send(Message::Text(v.to_string().into())).await?;
    Ok(())
}

/// Reads messages until one of type `ty` (an `error` or `left` fails).
async fn expect(ws: &mut Ws, ty: &str) -> Result<serde_json::Value, Error> {
    tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = serde_json::from_str(&t)?;
                    if v["type"] == ty {
                        return Ok(v);
                    }
                    if v["type"] == "error" || v["type"] == "left" {
                        return Err(format!("waiting for {ty}: {v}").into());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err(format!("socket closed waiting for {ty}").into()),
            }
        }
    })
    .await
    .map_err(|_| -> Error { format!("timed out waiting for {ty}").into() })?
}

/// A connection answered by the server, for the engine.
struct Joined {
    rtc: Rtc,
    socket: std::net::UdpSocket,
    audio: Option<Mid>,
    video: Option<Mid>,
    /// The serving node's number (see `NewClient::served_by`).
    served_by: Option<u32>,
}

/// The node number in a participant id (`PA<n>`: a cluster node's number
/// is in the bits from 40 up; 0 on a single server).
fn node_of(participant: &str) -> Option<u32> {
    let n: u64 = participant.strip_prefix("PA")?.parse().ok()?;
    Some((n >> 40) as u32)
}

/// Joins over the room socket: the socket and the others' video tracks at
/// join time, and the answered connection.
async fn ws_join(p: &Planned, ctx: &SignalContext) -> Result<((Ws, Vec<String>), Joined), Error> {
    let token = ctx.token(p)?;
    let (mut ws, _) = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio_tungstenite::connect_async(ctx.ws_url(p)),
    )
    .await
    .map_err(|_| "websocket connect timed out")??;
    let mut join = serde_json::json!({"type": "join", "token": token});
    if p.access_token.is_some() {
        // An access token names no room: the join does.
        join["room"] = p.room.clone().into();
    }
    send_json(&mut ws, join).await?;
    let joined = expect(&mut ws, "joined").await?;
    let videos = joined["participants"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["tracks"].as_array().into_iter().flatten())
        .filter(|t| t["kind"] == "video")
        .filter_map(|t| t["id"].as_str().map(str::to_owned))
        .collect();
    let served_by = joined["participant"]["id"].as_str().and_then(node_of);
    let built = build(p, &ctx.video)?;
    send_json(
        &mut ws,
        serde_json::json!({"type": "offer", "sdp": built.offer.to_sdp_string()}),
    )
    .await?;
    let answer = expect(&mut ws, "answer").await?;
    let sdp = answer["sdp"].as_str().ok_or("answer without sdp")?;
    let mut joined = built.answered(sdp)?;
    joined.served_by = served_by;
    Ok(((ws, videos), joined))
}

/// Joins over WHIP or WHEP: the token and the session's Location (to delete
/// it at the end), and the answered connection.
async fn http_join(
    p: &Planned,
    ctx: &SignalContext,
) -> Result<((String, Option<String>), Joined), Error> {
    let token = ctx.token(p)?;
    let built = build(p, &ctx.video)?;
    let path = if p.signaling == Signaling::Whip {
        "whip"
    } else {
        "whep"
    };
    let resp = ctx
        .http
        .post(format!("{}/{path}/{}", ctx.base(p), p.room))
        .bearer_auth(&token)
        .header("content-type", "application/sdp")
        .body(built.offer.to_sdp_string())
        .timeout(STEP_TIMEOUT)
        .send()
        .await?;
    let status = resp.status();
    // Absolute: a cluster may have redirected the POST to the room's node,
    // and a relative Location is that node's.
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .and_then(|l| resp.url().join(l).ok())
        .map(String::from);
    let body = resp.text().await?;
    if status.as_u16() != 201 {
        return Err(format!("{path}: {status} {body}").into());
    }
    Ok(((token, location), built.answered(&body)?))
}

/// S3's layer choice: which remote video track is large, and the settings
/// that say so.
struct LayerChoice {
    tracks: Vec<String>,
    /// Index of the large track; moves by one at each forced switch.
    large: usize,
    high: (u16, u16),
    low: (u16, u16),
}

impl LayerChoice {
    fn messages(&self) -> Vec<serde_json::Value> {
        let n = self.tracks.len().max(1);
        self.tracks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let (w, h) = if i == self.large % n {
                    self.high
                } else {
                    self.low
                };
                serde_json::json!({"type": "track_settings", "track_id": t, "enabled": true, "width": w, "height": h})
            })
            .collect()
    }
}

/// Reports a join's outcome; once answered, hands the connection to the
/// engine and returns what the session keeps (its socket or its WHIP/WHEP
/// resource).
fn hand_over<T>(
    p: &Planned,
    started: Instant,
    joined: Result<(T, Joined), Error>,
    engine: &Engine,
    out: &mpsc::UnboundedSender<JoinOutcome>,
) -> Option<T> {
    let (keep, j) = match joined {
        Ok(x) => x,
        Err(e) => {
            let _ = out.send(JoinOutcome {
                id: p.id,
                error: Some(e.to_string()),
                answer: started.elapsed(),
            });
            return None;
        }
    };
    let answered = Instant::now();
    engine.add(NewClient {
        id: p.id,
        socket: j.socket,
        transport: Transport::Rtc(Box::new(j.rtc)),
        audio: j.audio,
        video: j.video,
        join_started: started,
        answered,
        served_by: j.served_by,
    });
    let _ = out.send(JoinOutcome {
        id: p.id,
        error: None,
        answer: answered - started,
    });
    Some(keep)
}

async fn ws_session(
    p: Planned,
    ctx: &SignalContext,
    engine: &Engine,
    mut leave: watch::Receiver<bool>,
    out: &mpsc::UnboundedSender<JoinOutcome>,
) {
    let started = Instant::now();
    let joined = ws_join(&p, ctx).await;
    let Some((mut ws, videos)) = hand_over(&p, started, joined, engine, out) else {
        return;
    };
    let mut choice = LayerChoice {
        tracks: videos,
        large: p.id as usize,
        high: ctx
            .video
            .layers
            .last()
            .map_or((1280, 720), |l| (l.width, l.height)),
        low: ctx
            .video
            .layers
            .first()
            .map_or((320, 180), |l| (l.width, l.height)),
    };
    let switching = ctx.layer_switch.filter(|_| p.subscribe);
    let mut switch = tokio::time::interval(switching.unwrap_or(Duration::from_secs(3600)));
    switch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    switch.tick().await;
    let mut settings_due = switching.is_some();
    loop {
        if settings_due {
            settings_due = false;
            for m in choice.messages() {
                if send_json(&mut ws, m).await.is_err() {
                    break;
                }
            }
        }
        tokio::select! {
            _ = switch.tick(), if switching.is_some() => {
                choice.large += 1;
                settings_due = true;
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) else { continue };
                    if v["type"] == "offer" {
                        let Some(offer) = v["sdp"].as_str().and_then(|s| SdpOffer::from_sdp_string(s).ok()) else {
                            continue;
                        };
                        match engine.offer(p.id, offer).await {
                            Ok(a) => {
                                let msg = serde_json::json!({"type": "answer", "sdp": a.to_sdp_string()});
                                if send_json(&mut ws, msg).await.is_err() {
                                    break;
                                }
                            }
                            Err(e) => tracing::warn!(id = p.id, error = %e, "renegotiation failed"),
                        }
                    } else if v["type"] == "track_published" && v["track"]["kind"] == "video" {
                        if let Some(t) = v["track"]["id"].as_str() {
                            choice.tracks.push(t.to_owned());
                            settings_due = switching.is_some();
                        }
                    } else if v["type"] == "track_unpublished" {
                        let gone = v["track_id"].as_str().unwrap_or_default();
                        choice.tracks.retain(|t| t != gone);
                    } else if v["type"] == "layers_needed" {
                        // {"type":"layers_needed","track_id":..,"rids":[..]} (docs/protocol.md).
                        let rids = v["rids"].as_array().map(|a| {
                            a.iter().filter_map(|r| r.as_str().map(str::to_owned)).collect()
                        });
                        if let Some(rids) = rids {
                            engine.set_layers(p.id, rids);
                        }
                    } else if v["type"] == "left" {
                        if p.access_token.is_some() {
                            // A call member: the call's end closes its room session.
                            tracing::debug!(id = p.id, msg = %v, "server ended the session");
                        } else {
                            tracing::warn!(id = p.id, msg = %v, "server ended the session");
                        }
                        break;
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            },
            _ = async { let _ = leave.wait_for(|v| *v).await; } => {
                let _ = send_json(&mut ws, serde_json::json!({"type": "leave"})).await;
                let _ = tokio::time::timeout(Duration::from_secs(3), async {
                    while let Some(Ok(m)) = ws.next().await {
                        if let Message::Text(t) = m && t.contains("\"left\"") {
                            break;
                        }
                    }
                }).await;
                let _ = ws.close(None).await;
                break;
            }
        }
    }
    engine.remove(p.id);
}

async fn http_session(
    p: Planned,
    ctx: &SignalContext,
    engine: &Engine,
    mut leave: watch::Receiver<bool>,
    out: &mpsc::UnboundedSender<JoinOutcome>,
) {
    let started = Instant::now();
    let joined = http_join(&p, ctx).await;
    let Some((token, location)) = hand_over(&p, started, joined, engine, out) else {
        return;
    };
    let _ = leave.wait_for(|v| *v).await;
    if let Some(loc) = location {
        let _ = ctx
            .http
            .delete(loc)
            .bearer_auth(&token)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
    }
    engine.remove(p.id);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use str0m::net::{Protocol, Receive};
    use str0m::{Event, Input, Output};

    /// Drives a client built like the engine's against a server `Rtc`
    /// configured like vela's (ICE-lite, frame mode) in memory, and checks
    /// the server sees each simulcast layer under its own rid.
    #[test]
    fn the_node_number_is_read_from_a_participant_id() {
        assert_eq!(node_of("PA7"), Some(0));
        assert_eq!(node_of(&format!("PA{}", (3u64 << 40) + 5)), Some(3));
        assert_eq!(node_of("TR7"), None);
        assert_eq!(node_of("PAx"), None);
    }

    #[test]
    fn server_sees_each_simulcast_rid() {
        let video = crate::scenario::default_video();
        let p = Planned {
            id: 0,
            node: 0,
            room_index: 0,
            room: "r".into(),
            identity: "p0".into(),
            audio: false,
            video: true,
            subscribe: false,
            signaling: Signaling::Ws,
            join_at: Duration::ZERO,
            access_token: None,
        };
        let saddr: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
        let Built {
            rtc: mut client,
            socket,
            offer,
            pending,
            video: vmid,
            ..
        } = build(&p, &video).unwrap();
        let caddr = socket.local_addr().unwrap();
        let now = Instant::now();
        let mut server = Rtc::builder()
            .set_ice_lite(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_h264(true)
            .build(now);
        server.add_local_candidate(Candidate::host(saddr, "udp").unwrap());
        let answer = server.sdp_api().accept_offer(offer).unwrap();
        client.sdp_api().accept_answer(pending, answer).unwrap();
        let vmid = vmid.unwrap();
        let mut src = crate::media::VideoSource::new(&video, 1);
        let mut seqs = [100u64, 200, 300];
        let mut rids = std::collections::BTreeMap::new();
        let mut t = now;
        let mut connected = false;
        for step in 0..2000 {
            t += Duration::from_millis(5);
            if connected && step % 7 == 0 {
                let pt = client
                    .codec_config()
                    .find(|c| c.spec().codec == str0m::format::Codec::Vp8)
                    .unwrap()
                    .pt();
                for f in src.next(&video, 1, 0) {
                    let rid = str0m::media::Rid::from(video.layers[f.layer].rid.as_str());
                    for pk in f.packets {
                        let mut api = client.direct_api();
                        let tx = api.stream_tx_by_mid(vmid, Some(rid)).unwrap();
                        tx.write_rtp(
                            str0m::rtp::RtpWrite::new(pt, seqs[f.layer].into(), 0, t, pk.payload)
                                .marker(pk.marker),
                        );
                        seqs[f.layer] += 1;
                    }
                }
            }
            client.handle_input(Input::Timeout(t)).unwrap();
            server.handle_input(Input::Timeout(t)).unwrap();
            // Exchange until quiet.
            for _ in 0..50 {
                let mut moved = false;
                while let Ok(o) = client.poll_output() {
                    match o {
                        Output::Transmit(d) => {
                            let r = Receive::new(Protocol::Udp, caddr, saddr, &d.contents).unwrap();
                            server.handle_input(Input::Receive(t, r)).unwrap();
                            moved = true;
                        }
                        Output::Event(Event::Connected) => connected = true,
                        Output::Event(_) => {}
                        Output::Timeout(_) => break,
                    }
                }
                while let Ok(o) = server.poll_output() {
                    match o {
                        Output::Transmit(d) => {
                            let r = Receive::new(Protocol::Udp, saddr, caddr, &d.contents).unwrap();
                            client.handle_input(Input::Receive(t, r)).unwrap();
                            moved = true;
                        }
                        Output::Event(Event::MediaData(m)) => {
                            let tr = crate::media::Trailer::parse(&m.data).unwrap();
                            *rids
                                .entry((m.rid.map(|r| r.to_string()), tr.layer))
                                .or_insert(0u32) += 1;
                        }
                        Output::Event(_) => {}
                        Output::Timeout(_) => break,
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        assert!(connected);
        eprintln!("{rids:?}");
        for k in rids.keys() {
            let expect = ["q", "h", "f"][usize::from(k.1)];
            assert_eq!(k.0.as_deref(), Some(expect), "{rids:?}");
        }
        assert_eq!(rids.len(), 3, "{rids:?}");
    }
}
