//! Shared pieces of the signaling tests: a server on loopback and a str0m
//! client that publishes or views over real UDP.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use vela_config::Config;
use vela_signaling::RunningServer;

/// A session client that made its offer and waits for the answer.
pub struct PendingSession {
    rtc: Rtc,
    socket: UdpSocket,
    pending: str0m::change::SdpPendingOffer,
    mids: Option<(Mid, Mid)>,
}

impl PendingSession {
    /// Applies the server's answer and starts the connection.
    pub fn start(mut self, answer: SdpAnswer, reneg: Renegotiation) -> Peer {
        self.rtc
            .sdp_api()
            .accept_answer(self.pending, answer)
            .unwrap();
        Peer::run(self.rtc, self.socket, self.mids, None, Some(reneg))
    }
}

pub fn init_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A configuration for a server on loopback with free ports and the dev key.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.server.http = "127.0.0.1:0".parse().unwrap();
    c.media.udp_port = 0;
    c.media.bind_ip = "127.0.0.1".parse().unwrap();
    c.media.node_ips = vec!["127.0.0.1".parse().unwrap()];
    // Nothing to keep: the durability test names a file of its own.
    c.store.path = ":memory:".into();
    if postgres() {
        // The api_postgres binary: each server its own fresh database.
        c.store.url = vela_testkit::Postgres::shared().database().url;
    }
    c
}

/// Whether this binary runs the servers on PostgreSQL (`api_postgres`)
/// rather than SQLite (`api`, and the other binaries that share this
/// module): the test binary's crate name says.
pub fn postgres() -> bool {
    env!("CARGO_CRATE_NAME") == "api_postgres"
}

/// The server's `/metrics` text.
pub async fn scrape_metrics(s: &RunningServer) -> String {
    reqwest::get(format!("http://{}/metrics", s.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The server's `/metrics` once `ok` holds for them, polled for up to 5 s
/// (a counter another task updates may lag what the test saw happen);
/// panics with the last text, saying `what` it waited for.
pub async fn metrics_until(s: &RunningServer, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = scrape_metrics(s).await;
        if ok(&m) {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "waited 5 s for {what} in /metrics:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn start() -> RunningServer {
    init_log();
    vela_signaling::spawn(test_config()).await.unwrap()
}

pub fn base(s: &RunningServer) -> String {
    format!("http://{}", s.http_addr)
}

/// A dev token for `identity` in `room`.
pub async fn dev_token(s: &RunningServer, room: &str, identity: &str) -> String {
    let url = format!("{}/api/dev-token?room={room}&identity={identity}", base(s));
    let v: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    v["token"].as_str().unwrap().to_owned()
}

/// Counters a [`Peer`] keeps while it runs.
#[derive(Default)]
pub struct PeerStats {
    pub connected: AtomicBool,
    pub audio_frames: AtomicU64,
    pub video_frames: AtomicU64,
    pub keyframe_requests: AtomicU64,
}

/// A str0m client on its own UDP socket, driven by a task.
pub struct Peer {
    pub stats: Arc<PeerStats>,
    pub location: Option<String>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// Server offers in, client answers out: renegotiation for WebSocket sessions.
pub type Renegotiation = (
    mpsc::UnboundedReceiver<SdpOffer>,
    mpsc::UnboundedSender<SdpAnswer>,
);

impl Peer {
    /// Offers to `url` (WHIP when `publish`, WHEP otherwise) and runs the connection.
    pub async fn http(url: &str, token: &str, publish: bool) -> Result<Peer, (u16, String)> {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut rtc = Rtc::builder().build(Instant::now());
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let dir = if publish {
            Direction::SendOnly
        } else {
            Direction::RecvOnly
        };
        let mut change = rtc.sdp_api();
        let audio = change.add_media(MediaKind::Audio, dir, None, None, None);
        let video = change.add_media(MediaKind::Video, dir, None, None, None);
        let (offer, pending) = change.apply().unwrap();
        let resp = reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/sdp")
            .body(offer.to_sdp_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = resp.text().await.unwrap();
        if status != 201 {
            return Err((status, body));
        }
        let answer = SdpAnswer::from_sdp_string(&body).unwrap();
        rtc.sdp_api().accept_answer(pending, answer).unwrap();
        let mids = if publish { Some((audio, video)) } else { None };
        Ok(Self::run(rtc, socket, mids, location, None))
    }

    /// WHIP (when `publish`) or WHEP into `room` of `s` as `identity`, with
    /// a dev token.
    pub async fn dev_http(
        s: &RunningServer,
        room: &str,
        identity: &str,
        publish: bool,
    ) -> Result<Peer, (u16, String)> {
        let endpoint = if publish { "whip" } else { "whep" };
        let token = dev_token(s, room, identity).await;
        Peer::http(&format!("{}/{endpoint}/{room}", base(s)), &token, publish).await
    }

    /// A client for a WebSocket session: returns its offer, and starts once
    /// `answer` is given to the returned closure.
    pub async fn session(publish: bool) -> (SdpOffer, PendingSession) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut rtc = Rtc::builder().build(Instant::now());
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut change = rtc.sdp_api();
        let mids = if publish {
            let a = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
            let v = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
            Some((a, v))
        } else {
            change.add_channel("vela".into());
            None
        };
        let (offer, pending) = change.apply().unwrap();
        (
            offer,
            PendingSession {
                rtc,
                socket,
                pending,
                mids,
            },
        )
    }

    /// A client whose connection the server offers (LiveKit's subscriber
    /// connection): answers `offer`, then the server's later offers that
    /// come through `reneg`.
    pub async fn answering(offer: SdpOffer, reneg: Renegotiation) -> (SdpAnswer, Peer) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut rtc = Rtc::builder().build(Instant::now());
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        // Its ICE agent keeps no timeout until it has been given a time
        // once (an offering client gets one from its own offer).
        rtc.handle_input(Input::Timeout(Instant::now())).unwrap();
        let answer = rtc.sdp_api().accept_offer(offer).unwrap();
        (answer, Self::run(rtc, socket, None, None, Some(reneg)))
    }

    fn run(
        mut rtc: Rtc,
        socket: UdpSocket,
        publish: Option<(Mid, Mid)>,
        location: Option<String>,
        mut reneg: Option<Renegotiation>,
    ) -> Peer {
        let stats = Arc::new(PeerStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (stats.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let local = socket.local_addr().unwrap();
            let mut buf = vec![0u8; 2048];
            let start = Instant::now();
            let mut next_audio = start;
            let mut next_video = start;
            let mut frame = 0u64;
            let mut force_key = true;
            while !sp.load(Ordering::Relaxed) && rtc.is_alive() {
                let timeout = loop {
                    match rtc.poll_output() {
                        Ok(Output::Timeout(t)) => break t,
                        Ok(Output::Transmit(t)) => {
                            let _ = socket.send_to(&t.contents, t.destination).await;
                        }
                        Ok(Output::Event(e)) => match e {
                            Event::Connected => st.connected.store(true, Ordering::Relaxed),
                            Event::MediaData(d) => {
                                match rtc.media(d.mid).map(|m| m.kind()) {
                                    Some(MediaKind::Audio) => {
                                        st.audio_frames.fetch_add(1, Ordering::Relaxed)
                                    }
                                    _ => st.video_frames.fetch_add(1, Ordering::Relaxed),
                                };
                            }
                            Event::KeyframeRequest(_) => {
                                st.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                                force_key = true;
                            }
                            _ => {}
                        },
                        Err(_) => return,
                    }
                };
                let now = Instant::now();
                let media_due = next_audio.min(next_video);
                let wake = if publish.is_some() && st.connected.load(Ordering::Relaxed) {
                    timeout.min(media_due)
                } else {
                    timeout
                };
                let wait = wake
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1));
                let offers = async {
                    match reneg.as_mut() {
                        Some((rx, _)) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    Some(offer) = offers => {
                        if let Ok(answer) = rtc.sdp_api().accept_offer(offer)
                            && let Some((_, tx)) = &reneg {
                                let _ = tx.send(answer);
                            }
                    }
                    r = socket.recv_from(&mut buf) => {
                        if let Ok((n, src)) = r
                            && let Ok(rcv) = Receive::new(Protocol::Udp, src, local, &buf[..n]) {
                                let _ = rtc.handle_input(Input::Receive(Instant::now(), rcv));
                            }
                    }
                    _ = tokio::time::sleep(wait) => {
                        let now = Instant::now();
                        if let Some((a, v)) = publish
                            && st.connected.load(Ordering::Relaxed) {
                                if now >= next_audio {
                                    next_audio += Duration::from_millis(20);
                                    frame += 1;
                                    if let Some(w) = rtc.writer(a) {
                                        let pt = w.payload_params().find(|p| p.spec().codec == Codec::Opus).map(|p| p.pt());
                                        if let Some(pt) = pt {
                                            let t = MediaTime::from_millis(frame * 20).rebase(str0m::media::Frequency::FORTY_EIGHT_KHZ);
                                            let _ = w.write(pt, now, t, vec![0xfc, 0xff, 0xfe, frame as u8]);
                                        }
                                    }
                                }
                                if now >= next_video {
                                    next_video += Duration::from_millis(50);
                                    if let Some(w) = rtc.writer(v) {
                                        let pt = w.payload_params().find(|p| p.spec().codec == Codec::Vp8).map(|p| p.pt());
                                        if let Some(pt) = pt {
                                            let key = std::mem::take(&mut force_key);
                                            let mut f = vec![if key { 0x10 } else { 0x11 }, 0x02, 0x00, 0x9d, 0x01, 0x2a];
                                            f.resize(1000, frame as u8);
                                            let t = MediaTime::from_90khz(frame * 4500);
                                            let _ = w.write(pt, now, t, f);
                                        }
                                    }
                                }
                            }
                        let _ = rtc.handle_input(Input::Timeout(Instant::now()));
                    }
                }
            }
        });
        Peer {
            stats,
            location,
            stop,
            task,
        }
    }

    pub fn video_frames(&self) -> u64 {
        self.stats.video_frames.load(Ordering::Relaxed)
    }

    pub fn audio_frames(&self) -> u64 {
        self.stats.audio_frames.load(Ordering::Relaxed)
    }

    pub fn connected(&self) -> bool {
        self.stats.connected.load(Ordering::Relaxed)
    }

    /// Waits until `cond` holds, up to `limit`.
    pub async fn wait(&self, limit: Duration, cond: impl Fn(&Peer) -> bool) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if cond(self) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cond(self)
    }

    pub async fn close(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

/// A WebSocket signaling client speaking JSON.
pub struct Ws {
    pub inner: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Ws {
    pub async fn connect(s: &RunningServer) -> Ws {
        let url = format!("ws://{}/ws", s.http_addr);
        let (inner, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Ws { inner }
    }

    pub async fn send(&mut self, v: serde_json::Value) {
        self.send_text(v.to_string()).await;
    }

    pub async fn send_text(&mut self, t: String) {
        use futures_util::SinkExt;
        self.inner
            .send(tokio_tungstenite::tungstenite::Message::Text(t.into()))
            .await
            .unwrap();
    }

    /// The next JSON message, `None` when the socket closed (or after 10 s).
    pub async fn recv(&mut self) -> Option<serde_json::Value> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.inner.next())
                .await
                .ok()??;
            match m {
                Ok(Message::Text(t)) => return serde_json::from_str(&t).ok(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Skips messages until one of `type` arrives.
    pub async fn expect(&mut self, ty: &str) -> serde_json::Value {
        loop {
            let m = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("socket closed waiting for {ty}"));
            if m["type"] == ty {
                return m;
            }
        }
    }

    /// The close frame's code, once the server closes.
    pub async fn close_code(&mut self) -> Option<u16> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.inner.next())
                .await
                .ok()??;
            match m {
                Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
                Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }
}

/// A participant over a WebSocket session plus a str0m connection.
pub struct SessionClient {
    pub ws: Ws,
    pub id: String,
    pub joined: serde_json::Value,
    /// The server's answer to the first offer.
    pub answer_sdp: String,
    pub peer: Peer,
    offers: mpsc::UnboundedSender<SdpOffer>,
    answers: mpsc::UnboundedReceiver<SdpAnswer>,
    pub seen: Vec<serde_json::Value>,
}

impl SessionClient {
    /// Joins `room` as `identity` and starts media.
    pub async fn join(
        s: &RunningServer,
        room: &str,
        identity: &str,
        publish: bool,
    ) -> SessionClient {
        let token = dev_token(s, room, identity).await;
        SessionClient::join_with(s, &token, publish)
            .await
            .unwrap_or_else(|e| panic!("join refused: {e}"))
    }

    /// Joins with `token` and starts media; `Err` is the server's refusal.
    pub async fn join_with(
        s: &RunningServer,
        token: &str,
        publish: bool,
    ) -> Result<SessionClient, serde_json::Value> {
        SessionClient::join_room(s, token, None, None, publish).await
    }

    /// Joins with `token`, naming `room` (an account token names none) and
    /// the participant to take over, if given, and starts media; `Err` is
    /// the server's refusal.
    pub async fn join_room(
        s: &RunningServer,
        token: &str,
        room: Option<&str>,
        take_over: Option<&str>,
        publish: bool,
    ) -> Result<SessionClient, serde_json::Value> {
        SessionClient::join_at(&s.http_addr.to_string(), token, room, take_over, publish).await
    }

    /// [`SessionClient::join_room`] on the server at `addr` (`host:port`,
    /// e.g. a node of a cluster).
    pub async fn join_at(
        addr: &str,
        token: &str,
        room: Option<&str>,
        take_over: Option<&str>,
        publish: bool,
    ) -> Result<SessionClient, serde_json::Value> {
        let mut ws = Ws::connect_addr(addr, "/ws").await;
        let mut msg = serde_json::json!({"type": "join", "token": token});
        if let Some(r) = room {
            msg["room"] = r.into();
        }
        if let Some(t) = take_over {
            msg["take_over"] = t.into();
        }
        ws.send(msg).await;
        let joined = ws.recv().await.unwrap_or_default();
        if joined["type"] != "joined" {
            return Err(joined);
        }
        let id = joined["participant"]["id"].as_str().unwrap().to_owned();
        let (offer, pending) = Peer::session(publish).await;
        ws.send(serde_json::json!({"type": "offer", "sdp": offer.to_sdp_string()}))
            .await;
        let answer = ws.expect("answer").await;
        let answer_sdp = answer["sdp"].as_str().unwrap().to_owned();
        let answer = SdpAnswer::from_sdp_string(&answer_sdp).unwrap();
        let (otx, orx) = mpsc::unbounded_channel();
        let (atx, arx) = mpsc::unbounded_channel();
        let peer = pending.start(answer, (orx, atx));
        Ok(SessionClient {
            ws,
            id,
            joined,
            answer_sdp,
            peer,
            offers: otx,
            answers: arx,
            seen: Vec::new(),
        })
    }

    /// Handles signaling for up to `d`: answers server offers, records events.
    pub async fn pump(&mut self, d: Duration) {
        let end = tokio::time::Instant::now() + d;
        loop {
            use futures_util::StreamExt;
            use tokio_tungstenite::tungstenite::Message;
            tokio::select! {
                m = self.ws.inner.next() => {
                    let Some(Ok(Message::Text(t))) = m else { return };
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "offer" {
                        let o = SdpOffer::from_sdp_string(v["sdp"].as_str().unwrap()).unwrap();
                        let _ = self.offers.send(o);
                    }
                    self.seen.push(v);
                }
                Some(a) = self.answers.recv() => {
                    self.ws.send(serde_json::json!({"type": "answer", "sdp": a.to_sdp_string()})).await;
                }
                _ = tokio::time::sleep_until(end) => return,
            }
        }
    }

    /// Handles the signaling of `clients` together, 100 ms at a time, until
    /// `done` holds for each (`rounds` times at most); says whether it did.
    pub async fn pump_until(
        clients: &mut [&mut SessionClient],
        rounds: usize,
        done: impl Fn(&SessionClient) -> bool,
    ) -> bool {
        for _ in 0..rounds {
            let pumps = clients
                .iter_mut()
                .map(|c| c.pump(Duration::from_millis(100)));
            futures_util::future::join_all(pumps).await;
            if clients.iter().all(|c| done(c)) {
                return true;
            }
        }
        false
    }

    /// Asserts that participant `id` was seen leaving, its tracks with it.
    #[track_caller]
    pub fn assert_saw_leave(&self, id: &str) {
        let left = self.saw("participant_left", "participant_id", id);
        assert!(left, "{} saw no leave of {id}: {:?}", self.id, self.seen);
        let unpublished = self.saw("track_unpublished", "participant_id", id);
        assert!(unpublished, "{} saw {id}'s tracks stay", self.id);
    }

    /// Whether a message of type `ty` was seen.
    pub fn saw_type(&self, ty: &str) -> bool {
        self.seen.iter().any(|v| v["type"] == ty)
    }

    /// Whether a message of type `ty` with `field` equal to `value` was seen.
    pub fn saw(&self, ty: &str, field: &str, value: &str) -> bool {
        self.seen
            .iter()
            .any(|v| v["type"] == ty && v[field].as_str() == Some(value))
    }
}

// ----- accounts, devices and the device socket -----

/// Starts the `vela` binary on an OS-chosen port with its store at
/// `store_path` (`:memory:` or a file) and returns the child (killed on
/// drop) with the HTTP address it logged. An early exit fails with its log.
pub async fn start_binary(store: &str) -> (tokio::process::Child, String) {
    start_binary_with(store, &[], None).await
}

/// [`start_binary`] with more `VELA_*` variables, and under an open-files
/// limit `(soft, hard)` when given (via `prlimit`).
pub async fn start_binary_with(
    store: &str,
    env: &[(&str, &str)],
    nofile: Option<(u64, u64)>,
) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = match nofile {
        Some((soft, hard)) => {
            let mut c = tokio::process::Command::new("prlimit");
            c.arg(format!("--nofile={soft}:{hard}"))
                .arg("--")
                .arg(env!("CARGO_BIN_EXE_vela"));
            c
        }
        None => tokio::process::Command::new(env!("CARGO_BIN_EXE_vela")),
    };
    // The test's own environment must not configure the server.
    for (k, _) in std::env::vars() {
        if k.starts_with("VELA_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args([
            "--http",
            "127.0.0.1:0",
            "--udp-port",
            "0",
            "--node-ip",
            "127.0.0.1",
        ])
        .env(store_variable(store), store)
        .envs(env.iter().copied())
        .env("VELA_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The server logs to standard output.
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut log = String::new();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            log.push_str(&line);
            log.push('\n');
            if let Some(rest) = line.split("http_addr=").nth(1) {
                return Some(rest.split_whitespace().next().unwrap_or("").to_owned());
            }
        }
        None
    })
    .await;
    let Ok(Some(addr)) = addr else {
        panic!("server did not start; its log:\n{log}");
    };
    // Keep draining the log so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// The resident memory of process `pid`, in kB.
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The variable that sets `store` (a PostgreSQL URL, or an SQLite path)
/// for the `vela` binary.
pub fn store_variable(store: &str) -> &'static str {
    if store.starts_with("postgres://") {
        "VELA_STORE_URL"
    } else {
        "VELA_STORE_PATH"
    }
}

/// A store that outlives a server, for servers started again on the same
/// data: an SQLite file in a fresh temporary directory (removed on drop),
/// or, in the api_postgres binary, a fresh PostgreSQL database.
pub struct StoreFile {
    dir: std::path::PathBuf,
    /// The SQLite file's path, as `store.path` takes it.
    pub path: String,
    /// What names the store: the PostgreSQL URL, else [`StoreFile::path`]
    /// (for [`start_binary`] and [`store_variable`]).
    pub location: String,
}

impl StoreFile {
    /// A new directory named after `name`, the process and the time (and a
    /// new database on PostgreSQL).
    pub fn new(name: &str) -> StoreFile {
        let dir = std::env::temp_dir().join(format!(
            "vela-{name}-{}-{}",
            std::process::id(),
            vela_signaling::ids::now_ms()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vela.sqlite").to_str().unwrap().to_owned();
        let location = if postgres() {
            vela_testkit::Postgres::shared().database().url
        } else {
            path.clone()
        };
        StoreFile {
            dir,
            path,
            location,
        }
    }

    /// The config change that puts a server's store here.
    pub fn config(&self) -> impl FnOnce(&mut Config) + use<> {
        let (path, location) = (self.path.clone(), self.location.clone());
        move |c: &mut Config| {
            c.store.path = path;
            if postgres() {
                c.store.url = location;
            }
        }
    }

    /// Runs `sql` (no parameters) on the store, beside any server: what a
    /// test changes behind the server's back.
    pub async fn execute(&self, sql: &str) {
        if postgres() {
            let db = sqlx::PgPool::connect(&self.location).await.unwrap();
            sqlx::query(sql).execute(&db).await.unwrap();
            db.close().await;
        } else {
            let db = sqlx::SqlitePool::connect(&format!("sqlite://{}", self.path))
                .await
                .unwrap();
            sqlx::query(sql).execute(&db).await.unwrap();
            db.close().await;
        }
    }
}

impl Drop for StoreFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn start_with(f: impl FnOnce(&mut Config)) -> RunningServer {
    init_log();
    let mut c = test_config();
    f(&mut c);
    vela_signaling::spawn(c).await.unwrap()
}

/// Runs `test` within `limit` against a server started with the test
/// configuration, then shuts the server down.
pub async fn with_server(limit: Duration, test: impl AsyncFnOnce(&RunningServer, &Api)) {
    with_config(limit, |_| {}, test).await;
}

/// [`with_server`] with the test configuration changed by `config` first.
pub async fn with_config(
    limit: Duration,
    config: impl FnOnce(&mut Config),
    test: impl AsyncFnOnce(&RunningServer, &Api),
) {
    tokio::time::timeout(limit, async {
        let s = start_with(config).await;
        let api = Api::new(&s);
        test(&s, &api).await;
        s.shutdown().await;
    })
    .await
    .expect("test timed out");
}

/// An HTTP client for the account API of one server.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

/// A response: status and JSON body (`Null` when empty or not JSON), plus headers.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: serde_json::Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Resp {
    /// The body, after checking the status.
    #[track_caller]
    pub fn ok(self, status: u16) -> serde_json::Value {
        assert_eq!(self.status, status, "{:?}", self.body);
        self.body
    }

    /// Checks an error response: status, and the field it names (if any).
    #[track_caller]
    pub fn err(self, status: u16, field: Option<&str>) -> serde_json::Value {
        assert_eq!(self.status, status, "{:?}", self.body);
        assert_eq!(self.body["error"], status, "{:?}", self.body);
        assert!(self.body["message"].is_string(), "{:?}", self.body);
        assert_eq!(self.body["field"].as_str(), field, "{:?}", self.body);
        self.body
    }
}

impl Api {
    pub fn new(s: &RunningServer) -> Api {
        Api::at(base(s))
    }

    /// The server at `base` (`http://host:port`).
    pub fn at(base: String) -> Api {
        Api {
            base,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    /// The same server, every request saying (as a reverse proxy would)
    /// that it comes from `client`.
    pub fn forwarded_for(&self, client: &str) -> Api {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-forwarded-for", client.parse().unwrap());
        Api {
            base: self.base.clone(),
            http: reqwest::Client::builder()
                .no_proxy()
                .default_headers(headers)
                .build()
                .unwrap(),
        }
    }

    /// Sends `method path` with an optional bearer token and JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Resp {
            status,
            body,
            headers,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.call("GET", path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: serde_json::Value) -> Resp {
        self.call("POST", path, token, Some(body)).await
    }

    pub async fn put(&self, path: &str, token: &str, body: serde_json::Value) -> Resp {
        self.call("PUT", path, Some(token), Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Resp {
        self.call("DELETE", path, Some(token), None).await
    }

    /// `POST /api/v1/auth/refresh` with `refresh_token`.
    pub async fn refresh(&self, refresh_token: &str) -> Resp {
        let body = serde_json::json!({"refresh_token": refresh_token});
        self.post("/api/v1/auth/refresh", None, body).await
    }

    /// Registers `username` with `password`; returns the account.
    pub async fn register(&self, username: &str, password: &str) -> serde_json::Value {
        self.post(
            "/api/v1/accounts",
            None,
            serde_json::json!({"username": username, "password": password}),
        )
        .await
        .ok(201)
    }

    /// Logs in as a new device.
    pub async fn login(&self, username: &str, password: &str, kind: &str, label: &str) -> Login {
        let v = self
            .post(
                "/api/v1/auth/login",
                None,
                serde_json::json!({
                    "username": username, "password": password,
                    "device": {"kind": kind, "label": label},
                }),
            )
            .await
            .ok(200);
        Login::from(v)
    }

    /// Registers and logs in one device.
    pub async fn user(&self, username: &str, kind: &str) -> Login {
        self.register(username, "correct horse battery").await;
        self.first_login(username, kind).await
    }

    /// A user made an admin in the server's store before it logs in (as
    /// `vela admin grant` does).
    pub async fn admin(&self, server: &RunningServer, username: &str, kind: &str) -> Login {
        use vela_signaling::account::Role;
        let account = self.register(username, "correct horse battery").await;
        let id = vela_signaling::ids::AccountId(account["id"].as_i64().unwrap());
        server
            .store()
            .set_roles(id, &[Role::User, Role::Admin])
            .await
            .unwrap();
        self.first_login(username, kind).await
    }

    /// Logs in a just registered user's first device, labelled
    /// "{username}'s {kind}".
    async fn first_login(&self, username: &str, kind: &str) -> Login {
        let label = format!("{username}'s {kind}");
        self.login(username, "correct horse battery", kind, &label)
            .await
    }

    /// Makes `a` and `b` mutual contacts (a asks, b accepts).
    pub async fn link(&self, a: &Login, b: &Login) {
        let r = self
            .post(
                "/api/v1/contact-requests",
                Some(&a.access),
                serde_json::json!({"username": b.username}),
            )
            .await
            .ok(201);
        let id = r["request"]["id"].as_i64().unwrap();
        self.post(
            &format!("/api/v1/contact-requests/{id}/accept"),
            Some(&b.access),
            serde_json::json!({}),
        )
        .await
        .ok(200);
    }
}

/// A logged-in device.
#[derive(Debug, Clone)]
pub struct Login {
    pub access: String,
    pub refresh: String,
    pub account: i64,
    pub device: i64,
    pub username: String,
    pub body: serde_json::Value,
}

impl From<serde_json::Value> for Login {
    fn from(v: serde_json::Value) -> Login {
        Login {
            access: v["access_token"].as_str().unwrap().to_owned(),
            refresh: v["refresh_token"].as_str().unwrap().to_owned(),
            account: v["account"]["id"].as_i64().unwrap(),
            device: v["device"]["id"].as_i64().unwrap(),
            username: v["account"]["username"].as_str().unwrap().to_owned(),
            body: v,
        }
    }
}

impl Ws {
    /// Connects to another WebSocket path of the server.
    pub async fn connect_path(s: &RunningServer, path: &str) -> Ws {
        Ws::connect_addr(&s.http_addr.to_string(), path).await
    }

    /// Connects to `path` on the server at `addr` (`host:port`).
    pub async fn connect_addr(addr: &str, path: &str) -> Ws {
        let url = format!("ws://{addr}{path}");
        let (inner, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Ws { inner }
    }
}

/// What a [`DeviceClient`] saw: a message, or the close code.
#[derive(Debug, Clone)]
pub enum Seen {
    Msg(serde_json::Value),
    Closed(Option<u16>),
}

enum DeviceCmd {
    Send(String),
    Heartbeat(Option<Duration>),
}

/// A device socket (`/api/v1/ws`) driven by a task that sends heartbeats
/// and collects what the server pushes.
pub struct DeviceClient {
    pub ready: serde_json::Value,
    seen: mpsc::UnboundedReceiver<Seen>,
    cmds: mpsc::UnboundedSender<DeviceCmd>,
    task: tokio::task::JoinHandle<()>,
}

impl DeviceClient {
    /// Connects, authenticates with `token`, waits for `ready`; then sends a
    /// heartbeat every `heartbeat` (none when `None`).
    pub async fn connect(
        s: &RunningServer,
        token: &str,
        heartbeat: Option<Duration>,
    ) -> DeviceClient {
        DeviceClient::connect_addr(&s.http_addr.to_string(), token, heartbeat).await
    }

    /// [`DeviceClient::connect`] to the server at `addr` (`host:port`).
    pub async fn connect_addr(
        addr: &str,
        token: &str,
        heartbeat: Option<Duration>,
    ) -> DeviceClient {
        let mut ws = Ws::connect_addr(addr, "/api/v1/ws").await;
        ws.send(serde_json::json!({"type": "auth", "token": token}))
            .await;
        let ready = ws.expect("ready").await;
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let (cmds, mut cmd_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            use futures_util::{SinkExt, StreamExt};
            use tokio_tungstenite::tungstenite::Message;
            let mut every = heartbeat;
            let mut next = tokio::time::Instant::now() + every.unwrap_or(Duration::from_secs(3600));
            loop {
                tokio::select! {
                    m = ws.inner.next() => match m {
                        Some(Ok(Message::Text(t))) => {
                            let _ = seen_tx.send(Seen::Msg(serde_json::from_str(&t).unwrap()));
                        }
                        Some(Ok(Message::Close(f))) => {
                            let _ = seen_tx.send(Seen::Closed(f.map(|f| u16::from(f.code))));
                            return;
                        }
                        Some(Ok(_)) => {}
                        None | Some(Err(_)) => {
                            let _ = seen_tx.send(Seen::Closed(None));
                            return;
                        }
                    },
                    c = cmd_rx.recv() => match c {
                        Some(DeviceCmd::Send(t)) => { let _ = ws.inner.send(Message::Text(t.into())).await; }
                        Some(DeviceCmd::Heartbeat(h)) => {
                            every = h;
                            next = tokio::time::Instant::now() + every.unwrap_or(Duration::from_secs(3600));
                        }
                        None => return,
                    },
                    _ = tokio::time::sleep_until(next) => {
                        if let Some(e) = every {
                            let _ = ws.inner.send(Message::Text(r#"{"type":"heartbeat"}"#.into())).await;
                            next = tokio::time::Instant::now() + e;
                        } else {
                            next = tokio::time::Instant::now() + Duration::from_secs(3600);
                        }
                    }
                }
            }
        });
        DeviceClient {
            ready,
            seen,
            cmds,
            task,
        }
    }

    pub fn send(&self, v: serde_json::Value) {
        let _ = self.cmds.send(DeviceCmd::Send(v.to_string()));
    }

    pub fn heartbeat(&self, every: Option<Duration>) {
        let _ = self.cmds.send(DeviceCmd::Heartbeat(every));
    }

    /// The next thing seen, within `d`.
    pub async fn next_within(&mut self, d: Duration) -> Option<Seen> {
        tokio::time::timeout(d, self.seen.recv())
            .await
            .ok()
            .flatten()
    }

    /// Skips messages until one satisfies `pred` (5 s at most).
    pub async fn wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let end = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(Seen::Msg(m)) if pred(&m) => return m,
                Some(Seen::Msg(_)) => continue,
                Some(Seen::Closed(c)) => panic!("socket closed ({c:?}) waiting for {what}"),
                None => panic!("timed out waiting for {what}"),
            }
        }
    }

    /// Waits for a message of type `ty`.
    pub async fn expect(&mut self, ty: &str) -> serde_json::Value {
        self.wait_for(ty, |m| m["type"] == ty).await
    }

    /// Waits for a presence push of `account` with `status`.
    pub async fn expect_presence(&mut self, account: i64, status: &str) -> serde_json::Value {
        self.wait_for(&format!("presence {account} {status}"), |m| {
            m["type"] == "presence" && m["account_id"] == account && m["status"] == status
        })
        .await
    }

    /// Everything seen within `d` (stops early on close).
    pub async fn collect(&mut self, d: Duration) -> Vec<Seen> {
        let end = tokio::time::Instant::now() + d;
        let mut out = Vec::new();
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.next_within(left).await {
                Some(s @ Seen::Closed(_)) => {
                    out.push(s);
                    return out;
                }
                Some(s) => out.push(s),
                None => return out,
            }
        }
    }

    /// Waits for the server to close the socket; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        let end = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(Seen::Closed(c)) => return c,
                Some(Seen::Msg(_)) => continue,
                None => panic!("socket not closed"),
            }
        }
    }

    /// Drops the connection abruptly (no close frame), like a lost network.
    pub fn drop_connection(self) {
        self.task.abort();
    }
}

/// The presence messages about `account` among `seen`.
pub fn presences_of(seen: &[Seen], account: i64) -> Vec<String> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Msg(m) if m["type"] == "presence" && m["account_id"] == account => {
                m["status"].as_str().map(str::to_owned)
            }
            _ => None,
        })
        .collect()
}
