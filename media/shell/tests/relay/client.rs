//! A str0m peer on a real UDP socket (or a TCP connection: ICE over TCP,
//! RFC 4571 framing) on loopback, standing in for a browser: joins through a
//! [`MediaHandle`], publishes audio and VP8 video or only subscribes, answers
//! the server's offers, and counts the frames it gets, and how late each
//! video frame arrived.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use vela_media::MediaHandle;
use vela_media::core::{
    ConnectionId, JoinRequest, PeerKind, RoomId, Signal, TrackKind, TrackSettings,
};

/// What a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    Nothing,
    /// Audio and one VP8 video stream.
    AudioVideo,
    /// Audio and VP8 video in three simulcast layers q, h, f: frames of 300,
    /// 600 and 1000 bytes (the size tells the layer a subscriber gets).
    Simulcast,
    /// Audio and one VP8 video stream of 12 kB frames (about 2 Mbit/s).
    Heavy,
}

/// How a client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Udp,
    /// ICE over TCP to this passive candidate of the server.
    Tcp(SocketAddr),
}

/// Video frames carry their send time (microseconds since this instant)
/// after the VP8 header, then this mark: a receiver measures the delay.
static EPOCH: OnceLock<Instant> = OnceLock::new();
const STAMP_MARK: [u8; 2] = [0xab, 0xcd];

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// The simulcast layers and their frame sizes.
const LAYERS: [(&str, usize); 3] = [("q", 300), ("h", 600), ("f", 1000)];

/// What a client received, updated as it goes.
#[derive(Debug, Default)]
pub struct Counts {
    pub audio_frames: AtomicU64,
    pub video_frames: AtomicU64,
    pub connected: AtomicBool,
    /// Participants it was told joined (beside those in its join reply).
    pub joined_signals: AtomicU64,
    /// The size of the last video frame it received.
    pub last_video_size: AtomicU64,
    /// When each stamped video frame arrived and how long after it was
    /// sent, in microseconds (since the clients' common epoch).
    pub video_delays_us: Mutex<Vec<(u64, u64)>>,
    /// Set: the client stops reading its socket (a slow TCP reader).
    pub stop_reading: AtomicBool,
    /// Set: the client keeps its socket after it was told it left.
    pub stay_after_left: AtomicBool,
}

pub struct Client {
    pub conn: ConnectionId,
    pub counts: Arc<Counts>,
    task: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    pub fn audio(&self) -> u64 {
        self.counts.audio_frames.load(Ordering::Relaxed)
    }

    pub fn video(&self) -> u64 {
        self.counts.video_frames.load(Ordering::Relaxed)
    }

    /// Joins `room` as `name`, publishing audio and video if `publish`.
    pub async fn join(media: &MediaHandle, room: &str, name: &str, publish: bool) -> Client {
        let publish = if publish {
            Publish::AudioVideo
        } else {
            Publish::Nothing
        };
        Self::join_with(media, room, name, publish, None).await
    }

    /// Joins `room` as `name`, sending `publish`; `settings`, if given, go
    /// to the server for every video track it is offered (its rendered size).
    pub async fn join_with(
        media: &MediaHandle,
        room: &str,
        name: &str,
        publish: Publish,
        settings: Option<TrackSettings>,
    ) -> Client {
        Self::join_via(media, room, name, publish, settings, Via::Udp).await
    }

    /// [`Client::join_with`] over `via`.
    pub async fn join_via(
        media: &MediaHandle,
        room: &str,
        name: &str,
        publish: Publish,
        settings: Option<TrackSettings>,
        via: Via,
    ) -> Client {
        let _ = epoch();
        let now = Instant::now();
        let mut rtc = Rtc::builder().build(now);
        let (socket, addr) = match via {
            Via::Udp => {
                let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
                let addr = socket.local_addr().expect("address");
                rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
                (Net::Udp(socket), addr)
            }
            Via::Tcp(server) => {
                // A small receive buffer: a client that stops reading is
                // felt by the server within a second, not after megabytes.
                let socket = TcpSocket::new_v4().expect("tcp socket");
                socket.set_recv_buffer_size(8 * 1024).expect("rcvbuf");
                let stream = socket.connect(server).await.expect("connect");
                stream.set_nodelay(true).expect("nodelay");
                let addr = stream.local_addr().expect("address");
                let c = Candidate::builder()
                    .tcp()
                    .host(addr)
                    .tcptype(TcpType::Active)
                    .build()
                    .expect("candidate");
                rtc.add_local_candidate(c);
                let buf = Vec::with_capacity(8192);
                (
                    Net::Tcp {
                        stream,
                        server,
                        buf,
                    },
                    addr,
                )
            }
        };
        let req = JoinRequest::new(RoomId::new(room).expect("room"), name, PeerKind::Session);
        let (joined, mut signals) = media.join(req).await.expect("join");
        let conn = joined.connection;
        let mut change = rtc.sdp_api();
        let (mut audio, mut video) = (None, None);
        if publish != Publish::Nothing {
            let layers = (publish == Publish::Simulcast).then(|| {
                let mut s = str0m::media::Simulcast::new();
                for (rid, _) in LAYERS {
                    s.add_send_layer(str0m::media::SimulcastLayer::new(rid));
                }
                s
            });
            audio = Some(change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
            video =
                Some(change.add_media(MediaKind::Video, Direction::SendOnly, None, None, layers));
        } else {
            change.add_channel("vela".into());
        }
        let (offer, pending) = change.apply().expect("an offer");
        let answer = media.offer(conn, offer).await.expect("answered");
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .expect("answer accepted");
        let counts = Arc::new(Counts::default());
        let media = media.clone();
        let c = counts.clone();
        let task = tokio::spawn(async move {
            let mut peer = Peer {
                rtc,
                socket,
                addr,
                audio,
                video,
                counts: c,
                simulcast: publish == Publish::Simulcast,
                video_size: if publish == Publish::Heavy {
                    12_000
                } else {
                    1000
                },
                keyframes: vec![String::new(), "q".into(), "h".into(), "f".into()],
            };
            let start = Instant::now();
            let mut next_audio = start;
            let mut next_video = start;
            let mut buf = vec![0u8; 16 * 1024];
            let mut left = false;
            loop {
                let timeout = peer.drain().await;
                let now = Instant::now();
                if now >= next_audio {
                    peer.write_audio(now, start);
                    next_audio += Duration::from_millis(20);
                    continue;
                }
                if now >= next_video {
                    peer.write_video(now, start);
                    next_video += Duration::from_millis(50);
                    continue;
                }
                let wake = timeout.min(next_audio).min(next_video);
                let reading = !peer.counts.stop_reading.load(Ordering::Relaxed);
                tokio::select! {
                    r = peer.socket.recv(&mut buf), if reading => {
                        let Ok(datagrams) = r else { return };
                        let (proto, local) = (peer.socket.proto(), peer.addr);
                        for (source, d) in datagrams {
                            let Ok(r) = Receive::new(proto, source, local, &d) else {
                                continue;
                            };
                            if peer.rtc.handle_input(Input::Receive(Instant::now(), r)).is_err() {
                                return;
                            }
                        }
                    }
                    s = signals.recv(), if !left => match s {
                        Some(Signal::Offer(offer)) => {
                            let Ok(answer) = peer.rtc.sdp_api().accept_offer(offer) else {
                                return;
                            };
                            if media.answer(conn, answer).await.is_err() {
                                return;
                            }
                        }
                        Some(Signal::ParticipantJoined(_)) => {
                            peer.counts.joined_signals.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Signal::TrackPublished { track, .. }) => {
                            if let Some(s) = settings
                                && track.kind == TrackKind::Video
                                && media.track_settings(conn, track.id, s).await.is_err()
                            {
                                return;
                            }
                        }
                        Some(Signal::Left { .. }) | None => {
                            // Told to stay, it goes on with its socket as a
                            // client that missed its `left` would.
                            if !peer.counts.stay_after_left.load(Ordering::Relaxed) {
                                return;
                            }
                            left = true;
                        }
                        Some(_) => {}
                    },
                    _ = tokio::time::sleep_until(wake.into()) => {
                        if peer.rtc.handle_input(Input::Timeout(Instant::now())).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Client { conn, counts, task }
    }
}

/// A client's socket: UDP, or its TCP connection to the server.
enum Net {
    Udp(UdpSocket),
    Tcp {
        stream: TcpStream,
        server: SocketAddr,
        /// Bytes read, not yet whole frames.
        buf: Vec<u8>,
    },
}

impl Net {
    fn proto(&self) -> Protocol {
        match self {
            Net::Udp(_) => Protocol::Udp,
            Net::Tcp { .. } => Protocol::Tcp,
        }
    }

    async fn send(&mut self, to: SocketAddr, datagram: &[u8]) {
        match self {
            Net::Udp(s) => {
                let _ = s.send_to(datagram, to).await;
            }
            Net::Tcp { stream, .. } => {
                let mut frame = (datagram.len() as u16).to_be_bytes().to_vec();
                frame.extend_from_slice(datagram);
                let _ = stream.write_all(&frame).await;
            }
        }
    }

    /// What arrived: a datagram, or the whole frames of one read.
    async fn recv(&mut self, tmp: &mut [u8]) -> std::io::Result<Vec<(SocketAddr, Vec<u8>)>> {
        match self {
            Net::Udp(s) => {
                let (n, source) = s.recv_from(tmp).await?;
                Ok(vec![(source, tmp[..n].to_vec())])
            }
            Net::Tcp {
                stream,
                server,
                buf,
            } => {
                let n = stream.read(tmp).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&tmp[..n]);
                let mut out = Vec::new();
                while buf.len() >= 2 {
                    let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
                    if buf.len() < 2 + len {
                        break;
                    }
                    out.push((*server, buf[2..2 + len].to_vec()));
                    buf.drain(..2 + len);
                }
                Ok(out)
            }
        }
    }
}

struct Peer {
    rtc: Rtc,
    socket: Net,
    addr: SocketAddr,
    audio: Option<Mid>,
    video: Option<Mid>,
    counts: Arc<Counts>,
    simulcast: bool,
    /// Bytes of a video frame (without simulcast).
    video_size: usize,
    /// Layers ("" without simulcast) whose next frame is a keyframe.
    keyframes: Vec<String>,
}

impl Peer {
    /// Sends what the peer wants sent; returns its next timeout.
    async fn drain(&mut self) -> Instant {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => return t,
                Ok(Output::Transmit(t)) => {
                    self.socket.send(t.destination, &t.contents).await;
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => self.counts.connected.store(true, Ordering::Relaxed),
                    Event::MediaData(d) => {
                        let n = match self.rtc.media(d.mid).map(|m| m.kind()) {
                            Some(MediaKind::Audio) => &self.counts.audio_frames,
                            _ => {
                                let size = d.data.len() as u64;
                                self.counts.last_video_size.store(size, Ordering::Relaxed);
                                if let Some(sent) = d.data.get(6..14)
                                    && d.data.get(14..16) == Some(&STAMP_MARK[..])
                                {
                                    let sent = u64::from_be_bytes(sent.try_into().unwrap());
                                    let now = epoch().elapsed().as_micros() as u64;
                                    let mut delays = self.counts.video_delays_us.lock().unwrap();
                                    delays.push((now, now.saturating_sub(sent)));
                                }
                                &self.counts.video_frames
                            }
                        };
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::KeyframeRequest(r) => {
                        let rid = r.rid.map(|r| r.to_string()).unwrap_or_default();
                        if !self.keyframes.contains(&rid) {
                            self.keyframes.push(rid);
                        }
                    }
                    _ => {}
                },
                // A frame that cannot be depacketized, or a stack that
                // stopped: nothing more to send now.
                Err(_) => return Instant::now() + Duration::from_millis(5),
            }
        }
    }

    fn write_audio(&mut self, now: Instant, start: Instant) {
        let Some(mid) = self.audio else { return };
        if !self.rtc.is_connected() {
            return;
        }
        let Some(w) = self.rtc.writer(mid) else {
            return;
        };
        let Some(pt) = w
            .payload_params()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt())
        else {
            return;
        };
        let t = MediaTime::from_millis((now - start).as_millis() as u64)
            .rebase(Frequency::FORTY_EIGHT_KHZ);
        let _ = w.write(pt, now, t, vec![0xfc, 0xff, 0xfe, 0x01]);
    }

    fn write_video(&mut self, now: Instant, start: Instant) {
        let Some(mid) = self.video else { return };
        if !self.rtc.is_connected() {
            return;
        }
        let single = [("", self.video_size)];
        let layers: &[(&str, usize)] = if self.simulcast { &LAYERS } else { &single };
        let ticks = (now - start).as_micros() as u64 * 90 / 1000;
        for (rid, size) in layers {
            // Each layer has a clock of its own, as browsers' do.
            let base = rid.bytes().map(u64::from).sum::<u64>() * 1_000_000;
            let t = MediaTime::from_90khz(base + ticks);
            let Some(mut w) = self.rtc.writer(mid) else {
                return;
            };
            let Some(pt) = w
                .payload_params()
                .find(|p| p.spec().codec == Codec::Vp8)
                .map(|p| p.pt())
            else {
                return;
            };
            if !rid.is_empty() {
                w = w.rid((*rid).into());
            }
            let key = match self.keyframes.iter().position(|r| r == rid) {
                Some(i) => {
                    self.keyframes.swap_remove(i);
                    true
                }
                None => false,
            };
            // A VP8 frame tag: bit 0 clear marks a keyframe.
            let mut frame = vec![if key { 0x10 } else { 0x11 }, 0x02, 0x00, 0x9d, 0x01, 0x2a];
            let sent = epoch().elapsed().as_micros() as u64;
            frame.extend_from_slice(&sent.to_be_bytes());
            frame.extend_from_slice(&STAMP_MARK);
            frame.resize(*size, 0x55);
            let _ = w.write(pt, now, t, frame);
        }
    }
}
