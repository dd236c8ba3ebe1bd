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
use crate::participant::{ClientSocket, Engine, NewClient, Transport};
use crate::scenario::{Planned, Signaling};
use crate::tcp::{self, MediaTransport};

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
    /// UDP, or TCP to the server's passive candidate.
    pub transport: MediaTransport,
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

/// A client `Rtc` with its socket (UDP; TCP connects once answered), its
/// pending offer and the m-lines it publishes on.
struct Built {
    rtc: Rtc,
    socket: Option<std::net::UdpSocket>,
    offer: SdpOffer,
    pending: SdpPendingOffer,
    audio: Option<Mid>,
    video: Option<Mid>,
}

/// A client `Rtc` in RTP mode (the engine writes the packets itself) with
/// its offer: sendonly audio/video (video simulcast) to publish; recvonly
/// audio+video for WHEP; a data channel for a WebSocket subscriber with
/// nothing to send (the server adds m-lines for others' tracks later).
/// Over TCP the offer carries no candidate: the active one is added once
/// the answer names the server's passive candidate and the stream connects.
fn build(p: &Planned, video: &VideoSpec, transport: MediaTransport) -> Result<Built, Error> {
    let mut rtc = Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .build(Instant::now());
    let socket = match transport {
        MediaTransport::Udp => {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
            rtc.add_local_candidate(Candidate::host(socket.local_addr()?, "udp")?);
            Some(socket)
        }
        MediaTransport::Tcp => None,
    };
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
    /// Applies the server's SDP answer (over TCP, then connects to the
    /// server's passive candidate): the connection is ready for the engine.
    async fn answered(mut self, sdp: &str) -> Result<Joined, Error> {
        self.rtc
            .sdp_api()
            .accept_answer(self.pending, SdpAnswer::from_sdp_string(sdp)?)?;
        let answered = Instant::now();
        let socket = match self.socket {
            Some(s) => ClientSocket::Udp(s),
            None => ClientSocket::Tcp(connect_tcp(&mut self.rtc, sdp).await?),
        };
        Ok(Joined {
            rtc: self.rtc,
            socket,
            audio: self.audio,
            video: self.video,
            served_by: None,
            answered,
        })
    }
}

/// Connects to the server's passive TCP candidate named in `sdp` and adds
/// the stream's local address to `rtc` as its active candidate (the
/// server's binding responses map to it, so no peer-reflexive one appears).
async fn connect_tcp(rtc: &mut Rtc, sdp: &str) -> Result<std::net::TcpStream, Error> {
    let server = tcp::server_tcp_candidate(sdp)?;
    let stream = tokio::time::timeout(STEP_TIMEOUT, tokio::net::TcpStream::connect(server))
        .await
        .map_err(|_| format!("TCP connect to {server} timed out"))?
        .map_err(|e| format!("TCP connect to {server}: {e}"))?;
    // Each frame is a packet of real-time media: no Nagle delay.
    stream.set_nodelay(true)?;
    rtc.add_local_candidate(tcp::active_candidate(stream.local_addr()?)?);
    Ok(stream.into_std()?)
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
    socket: ClientSocket,
    audio: Option<Mid>,
    video: Option<Mid>,
    /// The serving node's number (see `NewClient::served_by`).
    served_by: Option<u32>,
    /// When the answer was applied (before a TCP connect).
    answered: Instant,
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
    let built = build(p, &ctx.video, ctx.transport)?;
    send_json(
        &mut ws,
        serde_json::json!({"type": "offer", "sdp": built.offer.to_sdp_string()}),
    )
    .await?;
    let answer = expect(&mut ws, "answer").await?;
    let sdp = answer["sdp"].as_str().ok_or("answer without sdp")?;
    let mut joined = match built.answered(sdp).await {
        Ok(j) => j,
        Err(e) => {
            // In the room but unable to connect (no TCP candidate): leave,
            // rather than stay until the server's reconnect timeout.
            let _ = send_json(&mut ws, serde_json::json!({"type": "leave"})).await;
            let _ = ws.close(None).await;
            return Err(e);
        }
    };
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
    let built = build(p, &ctx.video, ctx.transport)?;
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
    match built.answered(&body).await {
        Ok(j) => Ok(((token, location), j)),
        Err(e) => {
            // The session exists but cannot connect: end it now.
            if let Some(loc) = location {
                let _ = ctx
                    .http
                    .delete(loc)
                    .bearer_auth(&token)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
            }
            Err(e)
        }
    }
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
    let answered = j.answered;
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
        } = build(&p, &video, MediaTransport::Udp).unwrap();
        let caddr = socket.unwrap().local_addr().unwrap();
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

    /// One side of the TCP test: its stream and framing.
    struct Framed {
        stream: std::net::TcpStream,
        rx: tcp::Decoder,
        tx: tcp::TxQueue,
    }

    impl Framed {
        fn new(stream: std::net::TcpStream) -> Self {
            stream.set_nonblocking(true).unwrap();
            Framed {
                stream,
                rx: tcp::Decoder::default(),
                tx: tcp::TxQueue::new(1 << 20),
            }
        }

        /// Queues and writes `rtc`'s transmits (all TCP, to `to`);
        /// returns its events.
        fn send(&mut self, rtc: &mut Rtc, to: std::net::SocketAddr) -> Vec<Event> {
            let mut events = Vec::new();
            loop {
                match rtc.poll_output().unwrap() {
                    Output::Transmit(t) => {
                        assert_eq!(t.proto, Protocol::Tcp, "nothing goes over UDP");
                        assert_eq!(t.destination, to);
                        assert!(self.tx.push(&t.contents));
                    }
                    Output::Event(e) => events.push(e),
                    Output::Timeout(_) => break,
                }
            }
            assert!(self.tx.flush(&mut self.stream).unwrap());
            events
        }

        /// Hands `rtc` every whole frame that arrived; true if any did.
        fn receive(&mut self, rtc: &mut Rtc, at: Instant) -> bool {
            let (from, to) = (
                self.stream.peer_addr().unwrap(),
                self.stream.local_addr().unwrap(),
            );
            let mut moved = false;
            loop {
                while let Some(f) = self.rx.next_frame() {
                    let r = Receive::new(Protocol::Tcp, from, to, f).unwrap();
                    rtc.handle_input(Input::Receive(at, r)).unwrap();
                    moved = true;
                }
                match self.rx.read_from(&mut self.stream) {
                    Ok(0) => panic!("stream closed"),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return moved,
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }

    /// `--transport tcp` against an ICE-lite server `Rtc` with a passive TCP
    /// candidate (and a UDP one) on a real loopback stream: the offer names
    /// no candidate, the client connects to the answer's passive candidate,
    /// ICE and DTLS complete over RFC 4571 frames, and audio arrives.
    #[tokio::test]
    async fn ice_over_tcp_connects_and_carries_audio() {
        tokio::time::timeout(Duration::from_secs(20), async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let saddr = listener.local_addr().unwrap();
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let now = Instant::now();
            let mut server = Rtc::builder()
                .set_ice_lite(true)
                .clear_codecs()
                .enable_opus(true, false)
                .enable_vp8(true)
                .build(now);
            server.add_local_candidate(Candidate::host(udp.local_addr().unwrap(), "udp").unwrap());
            server.add_local_candidate(
                Candidate::builder()
                    .tcp()
                    .host(saddr)
                    .tcptype(str0m::net::TcpType::Passive)
                    .build()
                    .unwrap(),
            );
            let p = Planned {
                id: 0,
                node: 0,
                room_index: 0,
                room: "r".into(),
                identity: "p0".into(),
                audio: true,
                video: false,
                subscribe: false,
                signaling: Signaling::Ws,
                join_at: Duration::ZERO,
                access_token: None,
            };
            let built = build(&p, &crate::scenario::default_video(), MediaTransport::Tcp).unwrap();
            assert!(built.socket.is_none());
            let offer = built.offer.to_sdp_string();
            assert!(!offer.contains("a=candidate"), "{offer}");
            let answer = server
                .sdp_api()
                .accept_offer(SdpOffer::from_sdp_string(&offer).unwrap())
                .unwrap()
                .to_sdp_string();
            assert!(answer.contains("tcptype passive"), "{answer}");
            let joined = built.answered(&answer).await.unwrap();
            let ClientSocket::Tcp(cs) = joined.socket else {
                panic!("not a TCP participant");
            };
            let (ss, _) = listener.accept().unwrap();
            let caddr = cs.local_addr().unwrap();
            let (mut client, amid) = (joined.rtc, joined.audio.unwrap());
            let (mut cside, mut sside) = (Framed::new(cs), Framed::new(ss));
            let mut t = now;
            let (mut connected, mut server_connected, mut frames) = (false, false, 0);
            let mut seq = 1000u64;
            for step in 0..1000 {
                t += Duration::from_millis(5);
                if connected && step % 4 == 0 {
                    let pt = client
                        .codec_config()
                        .find(|c| c.spec().codec == str0m::format::Codec::Opus)
                        .unwrap()
                        .pt();
                    let mut api = client.direct_api();
                    let tx = api.stream_tx_by_mid(amid, None).unwrap();
                    let payload = vec![0x78; 80];
                    tx.write_rtp(str0m::rtp::RtpWrite::new(pt, seq.into(), 0, t, payload));
                    seq += 1;
                }
                client.handle_input(Input::Timeout(t)).unwrap();
                server.handle_input(Input::Timeout(t)).unwrap();
                for _ in 0..50 {
                    for e in cside.send(&mut client, saddr) {
                        connected |= matches!(e, Event::Connected);
                    }
                    for e in sside.send(&mut server, caddr) {
                        server_connected |= matches!(e, Event::Connected);
                        frames += u32::from(matches!(e, Event::MediaData(_)));
                    }
                    // Loopback delivers at once; a short pause covers a busy machine.
                    std::thread::sleep(Duration::from_micros(200));
                    let a = sside.receive(&mut server, t);
                    let b = cside.receive(&mut client, t);
                    if !a && !b {
                        break;
                    }
                }
                if frames >= 20 {
                    break;
                }
            }
            assert!(connected && server_connected, "ICE + DTLS over TCP");
            assert!(frames >= 20, "{frames} audio frames at the server");
        })
        .await
        .expect("timed out");
    }
}
