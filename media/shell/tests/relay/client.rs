//! A str0m peer on a real UDP socket on loopback, standing in for a browser:
//! joins through a [`MediaHandle`], publishes audio and VP8 video or only
//! subscribes, answers the server's offers, and counts the frames it gets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
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
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("address");
        let now = Instant::now();
        let mut rtc = Rtc::builder().build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
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
                keyframes: vec![String::new(), "q".into(), "h".into(), "f".into()],
            };
            let start = Instant::now();
            let mut next_audio = start;
            let mut next_video = start;
            let mut buf = vec![0u8; 2000];
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
                tokio::select! {
                    r = peer.socket.recv_from(&mut buf) => {
                        let Ok((n, source)) = r else { continue };
                        let Ok(r) = Receive::new(Protocol::Udp, source, peer.addr, &buf[..n]) else {
                            continue;
                        };
                        if peer.rtc.handle_input(Input::Receive(Instant::now(), r)).is_err() {
                            return;
                        }
                    }
                    s = signals.recv() => match s {
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
                        Some(Signal::Left { .. }) | None => return,
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

struct Peer {
    rtc: Rtc,
    socket: UdpSocket,
    addr: SocketAddr,
    audio: Option<Mid>,
    video: Option<Mid>,
    counts: Arc<Counts>,
    simulcast: bool,
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
                    let _ = self.socket.send_to(&t.contents, t.destination).await;
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => self.counts.connected.store(true, Ordering::Relaxed),
                    Event::MediaData(d) => {
                        let n = match self.rtc.media(d.mid).map(|m| m.kind()) {
                            Some(MediaKind::Audio) => &self.counts.audio_frames,
                            _ => {
                                let size = d.data.len() as u64;
                                self.counts.last_video_size.store(size, Ordering::Relaxed);
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
        let layers: &[(&str, usize)] = if self.simulcast {
            &LAYERS
        } else {
            &[("", 1000)]
        };
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
            frame.resize(*size, 0x55);
            let _ = w.write(pt, now, t, frame);
        }
    }
}
