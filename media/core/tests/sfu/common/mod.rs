//! An in-memory world for driving str0m client peers against the core on a
//! virtual clock: no sockets, no real time.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output as RtcOutput, Rtc};
use vela_media_core::{
    ConnectionId, JoinRequest, Joined, LeaveReason, LinkId, Output, ParticipantId, PeerKind,
    RelayMessage, RoomId, Sfu, SfuConfig, Signal,
};

pub mod mesh;

/// Media one client received on one m-line.
#[derive(Debug, Clone)]
pub struct Received {
    pub kind: MediaKind,
    /// The publisher's participant id, from the msid stream id.
    pub from: String,
    pub frames: u64,
    /// Size of the last frame (tells the simulcast layer in these tests).
    pub last_size: usize,
    /// Frames whose timestamp did not advance past the previous one.
    pub time_regressions: u64,
    last_time: Option<u64>,
    /// The sending client's tag (its index in the world), from the last frame.
    pub last_tag: Option<u8>,
    /// When the last frame arrived (virtual time).
    pub last_at: Option<Instant>,
    /// The longest time between two frames.
    pub max_gap: Duration,
    /// Frames whose first RTP sequence number did not follow the previous
    /// frame's last (a hole or a jump in what the server sent).
    pub seq_breaks: u64,
    last_seq: Option<u64>,
    /// The audio level (-dBov) the last frame's header extension carried.
    pub last_audio_level: Option<i8>,
    /// The longest an audio frame took from the publisher's write to here
    /// (the write's virtual time rides in the payload).
    pub max_audio_delay: Duration,
}

/// A str0m peer standing in for a browser.
pub struct Client {
    pub name: String,
    pub rtc: Rtc,
    pub addr: SocketAddr,
    /// The participant the room sees (the predecessor's after a handover).
    pub id: ParticipantId,
    /// Its connection (the key of the core's per-connection calls).
    pub conn: ConnectionId,
    pub audio: Option<Mid>,
    pub video: Option<Mid>,
    pub pending: Option<SdpPendingOffer>,
    pub received: HashMap<Mid, Received>,
    pub keyframe_requests: u64,
    pub signals: Vec<String>,
    pub left: Option<LeaveReason>,
    pub connected: bool,
    pub timeout: Instant,
    /// The RFC 6464 level its audio packets carry (-dBov; -127 is silence).
    pub audio_level: i8,
    /// Its network is down: nothing it sends or is sent arrives.
    pub offline: bool,
    /// While `offline`, the STUN it sends still arrives (its checks reach
    /// the node by another path, as over ICE-TCP during a UDP outage).
    pub stun_gets_through: bool,
    /// Publishes video as three simulcast layers q, h, f.
    pub simulcast: bool,
    force_keyframe_rids: Vec<String>,
    frame: u64,
    force_keyframe: bool,
    /// Bytes of a keyframe on a single-layer track (None: a delta frame's).
    pub keyframe_size: Option<usize>,
    /// The SSRC of each RTP packet the SFU sent it, in order.
    pub rtp_ssrcs: Vec<u32>,
    /// Frames it received that could not be depacketized.
    pub undecodable: u64,
    /// The participants its join said were already in the room.
    pub others: Vec<ParticipantId>,
    /// Its data channel, once open.
    pub channel: Option<str0m::channel::ChannelId>,
}

impl Client {
    /// A client as `joined` made it, publishing nothing, receiving nothing
    /// yet; the join paths set what differs.
    fn new(name: String, rtc: Rtc, addr: SocketAddr, joined: &Joined, now: Instant) -> Self {
        Client {
            name,
            rtc,
            addr,
            id: joined.participant.id,
            conn: joined.connection,
            audio: None,
            video: None,
            pending: None,
            received: HashMap::new(),
            keyframe_requests: 0,
            signals: Vec::new(),
            left: None,
            connected: false,
            timeout: now,
            audio_level: -127,
            offline: false,
            stun_gets_through: false,
            simulcast: false,
            force_keyframe_rids: Vec::new(),
            frame: 0,
            force_keyframe: false,
            keyframe_size: None,
            rtp_ssrcs: Vec::new(),
            undecodable: 0,
            others: joined.others.iter().map(|p| p.id).collect(),
            channel: None,
        }
    }

    /// Its next single-layer video frame is a keyframe.
    pub fn send_keyframe(&mut self) {
        self.force_keyframe = true;
    }

    /// A keyframe was asked for and not written yet.
    pub fn keyframe_pending(&self) -> bool {
        self.force_keyframe
    }

    /// Frames received from `publisher` of `kind`, over all its m-lines.
    pub fn frames_from(&self, publisher: ParticipantId, kind: MediaKind) -> u64 {
        let p = publisher.to_string();
        self.received
            .values()
            .filter(|r| r.from == p && r.kind == kind)
            .map(|r| r.frames)
            .sum()
    }

    /// Publishers this client has an active (not stopped) m-line from.
    pub fn active_sources(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .received
            .keys()
            .filter_map(|mid| self.rtc.media(*mid))
            .filter(|m| !m.stopped() && !m.disabled() && m.direction() != Direction::Inactive)
            .map(|m| m.stream_id().to_string())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// The core plus its clients, joined by a lossless in-memory network.
pub struct World {
    pub sfu: Sfu,
    pub server: SocketAddr,
    pub now: Instant,
    pub clients: Vec<Client>,
    pub events: Vec<vela_media_core::RoomEvent>,
    /// The source of each RTP packet the SFU was given, in order.
    pub rtp_in: Vec<SocketAddr>,
    /// The last RTP sequence number the SFU was given, per SSRC (headers are
    /// in the clear in SRTP).
    pub last_rtp_seq: HashMap<u32, u16>,
    to_server: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Fraction of server-to-client datagrams dropped (seeded, repeatable).
    pub downlink_loss: f64,
    /// Fraction of client-to-server datagrams dropped.
    pub uplink_loss: f64,
    /// Only this client's datagrams suffer the losses above (all when `None`).
    pub lossy: Option<SocketAddr>,
    rng: u64,
    pub dropped: u64,
    next_audio: Instant,
    next_video: Instant,
    /// Virtual time zero, for the send times carried in audio payloads.
    start: Instant,
    /// What the core asked to send to other cores (see `mesh`), not yet delivered.
    pub relayed: Vec<(LinkId, RelayMessage)>,
}

/// The SSRC of an RTP datagram (in the clear, SRTP or not); None for RTCP
/// (RFC 5761), STUN and DTLS.
pub fn rtp_ssrc(datagram: &[u8]) -> Option<u32> {
    match *datagram {
        [b0, b1, _, _, _, _, _, _, s0, s1, s2, s3, ..]
            if b0 >> 6 == 2 && !(64..96).contains(&(b1 & 0x7f)) =>
        {
            Some(u32::from_be_bytes([s0, s1, s2, s3]))
        }
        _ => None,
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

/// What a joining test client publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publish {
    Nothing,
    Audio,
    AudioVideo,
    Simulcast,
    /// Simulcast with the layers listed highest first in the SDP, as some
    /// Firefox versions list them.
    SimulcastHighFirst,
}

impl World {
    pub fn new() -> World {
        Self::with_config(|c| c)
    }

    pub fn with_config(f: impl FnOnce(SfuConfig) -> SfuConfig) -> World {
        Self::with_clock(Instant::now(), f)
    }

    /// A world whose clock starts at `now` (cores of one mesh share it).
    pub fn with_clock(now: Instant, f: impl FnOnce(SfuConfig) -> SfuConfig) -> World {
        init_log();
        let server: SocketAddr = "127.0.0.1:7882".parse().unwrap();
        World {
            sfu: Sfu::new(f(SfuConfig::new(vec![server])), now),
            server,
            now,
            clients: Vec::new(),
            events: Vec::new(),
            rtp_in: Vec::new(),
            last_rtp_seq: HashMap::new(),
            to_server: VecDeque::new(),
            downlink_loss: 0.0,
            uplink_loss: 0.0,
            lossy: None,
            rng: 0x9e37_79b9_7f4a_7c15,
            dropped: 0,
            next_audio: now,
            next_video: now,
            start: now,
            relayed: Vec::new(),
        }
    }

    /// A session client joins `room`, publishing audio and video if asked.
    pub fn join(&mut self, room: &str, name: &str, publish: bool) -> usize {
        let publish = if publish {
            Publish::AudioVideo
        } else {
            Publish::Nothing
        };
        self.join_with(room, name, publish, None)
    }

    /// A session client that publishes audio only.
    pub fn join_audio(&mut self, room: &str, name: &str) -> usize {
        self.join_with(room, name, Publish::Audio, None)
    }

    /// A session client that publishes audio and three-layer simulcast video.
    pub fn join_simulcast(&mut self, room: &str, name: &str) -> usize {
        self.join_with(room, name, Publish::Simulcast, None)
    }

    /// [`World::join_simulcast`] with the layers listed `f;h;q` in the offer.
    pub fn join_simulcast_high_first(&mut self, room: &str, name: &str) -> usize {
        self.join_with(room, name, Publish::SimulcastHighFirst, None)
    }

    /// A WHEP viewer: its offer receives one audio and one video track,
    /// fed from the room's tracks.
    pub fn join_whep(&mut self, room: &str, name: &str) -> usize {
        let n = self.clients.len() as u8 + 2;
        let addr: SocketAddr = format!("127.0.0.{n}:5000").parse().unwrap();
        let mut rtc = Rtc::builder().build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut change = rtc.sdp_api();
        let a = change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let v = change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let (offer, pending) = change.apply().unwrap();
        // Its own m-lines raise no MediaAdded: counted from the start.
        let received: HashMap<Mid, Received> = [(a, MediaKind::Audio), (v, MediaKind::Video)]
            .into_iter()
            .map(|(mid, kind)| {
                let r = Received {
                    kind,
                    from: String::new(),
                    frames: 0,
                    last_size: 0,
                    time_regressions: 0,
                    last_time: None,
                    last_tag: None,
                    last_at: None,
                    max_gap: Duration::ZERO,
                    seq_breaks: 0,
                    last_seq: None,
                    last_audio_level: None,
                    max_audio_delay: Duration::ZERO,
                };
                (mid, r)
            })
            .collect();
        let mut joined = self
            .sfu
            .handle_join(
                self.now,
                JoinRequest::new(RoomId::new(room).unwrap(), name, PeerKind::Whep)
                    .with_offer(offer),
            )
            .unwrap();
        rtc.sdp_api()
            .accept_answer(pending, joined.answer.take().unwrap())
            .unwrap();
        self.clients.push(Client {
            received,
            ..Client::new(name.to_owned(), rtc, addr, &joined, self.now)
        });
        self.clients.len() - 1
    }

    /// A second, receive-only connection of client `of` (as LiveKit's
    /// subscriber connection): it makes no offer, the server offers first
    /// (with a data channel `_reliable`), msids named by `stream_ids`.
    pub fn join_receiver(
        &mut self,
        room: &str,
        of: usize,
        stream_ids: Option<vela_media_core::StreamIds>,
    ) -> usize {
        let n = self.clients.len() as u8 + 2;
        let addr: SocketAddr = format!("127.0.0.{n}:5000").parse().unwrap();
        let mut rtc = Rtc::builder().build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        // Its ICE agent keeps no timeout until it has been given a time
        // once; a client that offers first gets one from its own offer.
        rtc.handle_input(Input::Timeout(self.now)).unwrap();
        let channels = vec![vela_media_core::ChannelConfig {
            label: "_reliable".into(),
            ..Default::default()
        }];
        let name = self.clients[of].name.clone();
        let mut req = JoinRequest::new(RoomId::new(room).unwrap(), name.clone(), PeerKind::Session)
            .receiving_for(self.clients[of].conn, channels);
        if let Some(f) = stream_ids {
            req = req.with_stream_ids(f);
        }
        let joined = self.sfu.handle_join(self.now, req).unwrap();
        self.clients
            .push(Client::new(name, rtc, addr, &joined, self.now));
        self.clients.len() - 1
    }

    /// A new client (device) of `from`'s identity takes over its call.
    pub fn handover(&mut self, room: &str, from: usize, name: &str) -> usize {
        self.join_with(room, name, Publish::AudioVideo, Some(from))
    }

    fn join_with(
        &mut self,
        room: &str,
        name: &str,
        publish: Publish,
        from: Option<usize>,
    ) -> usize {
        let simulcast = matches!(publish, Publish::Simulcast | Publish::SimulcastHighFirst);
        let n = self.clients.len() as u8 + 2;
        let addr: SocketAddr = format!("127.0.0.{n}:5000").parse().unwrap();
        // After a lost audio packet a browser's jitter buffer plays on; str0m
        // would wait 15 packets (300 ms) for it by default.
        let mut rtc = Rtc::builder().set_reordering_size_audio(3).build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let joined = match from {
            None => self.sfu.handle_join(
                self.now,
                JoinRequest::new(RoomId::new(room).unwrap(), name, PeerKind::Session),
            ),
            Some(f) => self.sfu.handle_handover(
                self.now,
                self.clients[f].conn,
                JoinRequest::new(
                    RoomId::new(room).unwrap(),
                    self.clients[f].name.clone(),
                    PeerKind::Session,
                ),
            ),
        }
        .unwrap();
        let mut change = rtc.sdp_api();
        let (mut audio, mut video) = (None, None);
        if publish != Publish::Nothing {
            audio = Some(change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
        }
        if publish != Publish::Nothing && publish != Publish::Audio {
            let rids = if publish == Publish::SimulcastHighFirst {
                ["f", "h", "q"]
            } else {
                ["q", "h", "f"]
            };
            let layers = simulcast.then(|| {
                let mut s = str0m::media::Simulcast::new();
                for rid in rids {
                    s.add_send_layer(str0m::media::SimulcastLayer::new(rid));
                }
                s
            });
            video =
                Some(change.add_media(MediaKind::Video, Direction::SendOnly, None, None, layers));
        }
        if publish == Publish::Nothing {
            change.add_channel("vela".into());
        }
        let (offer, pending) = change.apply().unwrap();
        let answer = self
            .sfu
            .handle_offer(self.now, joined.connection, offer)
            .unwrap();
        rtc.sdp_api().accept_answer(pending, answer).unwrap();
        let name = match from {
            Some(f) => self.clients[f].name.clone(),
            None => name.to_owned(),
        };
        self.clients.push(Client {
            audio,
            video,
            simulcast,
            force_keyframe_rids: vec!["q".into(), "h".into(), "f".into()],
            force_keyframe: true,
            ..Client::new(name, rtc, addr, &joined, self.now)
        });
        self.clients.len() - 1
    }

    /// The client moves to a new address (another network) and restarts ICE.
    pub fn change_network(&mut self, idx: usize) {
        let n = 100 + idx as u8;
        let addr: SocketAddr = format!("127.0.0.{n}:6000").parse().unwrap();
        let c = &mut self.clients[idx];
        c.addr = addr;
        c.rtc
            .add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut change = c.rtc.sdp_api();
        change.ice_restart(true);
        let (offer, pending) = change.apply().unwrap();
        let answer = self.sfu.handle_offer(self.now, c.conn, offer).unwrap();
        c.rtc.sdp_api().accept_answer(pending, answer).unwrap();
    }

    pub fn leave(&mut self, idx: usize) {
        let id = self.clients[idx].conn;
        self.sfu
            .handle_leave(self.now, id, LeaveReason::ClientLeave);
        self.clients[idx].rtc.disconnect();
    }

    /// Client `who` asks for a keyframe (a PLI) of `publisher`'s video it
    /// receives, as a browser's decoder does when it is stuck.
    pub fn request_keyframe_of(&mut self, who: usize, publisher: ParticipantId) {
        let p = publisher.to_string();
        let c = &mut self.clients[who];
        let mids: Vec<Mid> = c
            .received
            .iter()
            .filter(|(_, r)| r.from == p && r.kind == MediaKind::Video)
            .map(|(m, _)| *m)
            .collect();
        for mid in mids {
            if let Some(rx) = c.rtc.direct_api().stream_rx_by_mid(mid, None) {
                rx.request_keyframe(KeyframeRequestKind::Pli);
            }
        }
    }

    /// Runs the world for `d` of virtual time in 5 ms steps.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.produce_media();
            self.pump();
            self.tick(Duration::from_millis(5));
        }
        self.pump();
    }

    /// The clock moves on by `d`: the core's and the clients' timeouts run.
    pub fn tick(&mut self, d: Duration) {
        self.now += d;
        self.sfu.handle_timeout(self.now);
        for c in &mut self.clients {
            if c.rtc.is_alive() && c.timeout <= self.now {
                c.rtc.handle_input(Input::Timeout(self.now)).unwrap();
            }
        }
    }

    /// Runs until `cond` holds, at most `limit` of virtual time; true if it held.
    pub fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&World) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if cond(self) {
                return true;
            }
            self.run_for(Duration::from_millis(20));
        }
        cond(self)
    }

    /// xorshift64*: a repeatable coin for the emulated loss.
    fn lose(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        let lost = (x as f64 / (1u64 << 53) as f64) < p;
        if lost {
            self.dropped += 1;
        }
        lost
    }

    pub fn produce_media(&mut self) {
        let audio_due = self.now >= self.next_audio;
        let video_due = self.now >= self.next_video;
        if audio_due {
            self.next_audio += Duration::from_millis(20);
        }
        if video_due {
            self.next_video += Duration::from_millis(50);
        }
        let (now, start) = (self.now, self.start);
        for (tag, c) in self.clients.iter_mut().enumerate() {
            let tag = tag as u8;
            if !c.connected || !c.rtc.is_alive() {
                continue;
            }
            c.frame += 1;
            if audio_due && let Some(mid) = c.audio {
                let w = c.rtc.writer(mid).unwrap();
                let pt = w
                    .payload_params()
                    .find(|p| p.spec().codec == Codec::Opus)
                    .unwrap()
                    .pt();
                let t = MediaTime::from_millis(c.frame * 20)
                    .rebase(str0m::media::Frequency::FORTY_EIGHT_KHZ);
                // An Opus TOC and filler, the send time, and the sender's tag last.
                let mut payload = vec![0xfc, 0xff, 0xfe, c.frame as u8];
                payload.extend_from_slice(&((now - start).as_nanos() as u64).to_le_bytes());
                payload.push(tag);
                w.audio_level(c.audio_level, c.audio_level > -60)
                    .write(pt, now, t, payload)
                    .unwrap();
            }
            if video_due && let Some(mid) = c.video {
                // Simulcast layers differ in size: 300, 800 and 2000 bytes a frame.
                let layers: &[(&str, usize)] = if c.simulcast {
                    &[("q", 300), ("h", 800), ("f", 2000)]
                } else {
                    &[("", 1200)]
                };
                for (rid, size) in layers {
                    let mut w = c.rtc.writer(mid).unwrap();
                    let pt = w
                        .payload_params()
                        .find(|p| p.spec().codec == Codec::Vp8)
                        .unwrap()
                        .pt();
                    let key = if rid.is_empty() {
                        std::mem::take(&mut c.force_keyframe)
                    } else {
                        let k = c.force_keyframe_rids.iter().any(|r| r == rid);
                        c.force_keyframe_rids.retain(|r| r != rid);
                        k
                    };
                    if !rid.is_empty() {
                        w = w.rid((*rid).into());
                    }
                    // A VP8 frame tag: bit 0 clear marks a keyframe.
                    let mut frame =
                        vec![if key { 0x10 } else { 0x11 }, 0x02, 0x00, 0x9d, 0x01, 0x2a];
                    let size = match c.keyframe_size {
                        Some(k) if key && rid.is_empty() => k,
                        _ => *size,
                    };
                    // The last byte names the sender.
                    frame.resize(size, tag);
                    // Each layer has a clock of its own, as browsers' do.
                    let base = rid.bytes().map(u64::from).sum::<u64>() * 1_000_000;
                    let t = MediaTime::from_90khz(base + c.frame * 4500);
                    w.write(pt, now, t, frame).unwrap();
                }
            }
        }
    }

    /// Moves packets and signals until nothing is left to move.
    pub fn pump(&mut self) {
        let start = self.start;
        for _ in 0..200 {
            let mut moved = false;
            for c in &mut self.clients {
                if !c.rtc.is_alive() {
                    continue;
                }
                loop {
                    let output = match c.rtc.poll_output() {
                        // A frame that cannot be depacketized: a browser drops it.
                        Err(str0m::RtcError::Packet(..)) => {
                            c.undecodable += 1;
                            continue;
                        }
                        other => other.unwrap(),
                    };
                    match output {
                        RtcOutput::Timeout(t) => {
                            c.timeout = t;
                            break;
                        }
                        RtcOutput::Transmit(t) => {
                            // RFC 7983: a first byte of 0..=3 is STUN.
                            let stun = t.contents.first().is_some_and(|b| *b < 4);
                            if !c.offline || (c.stun_gets_through && stun) {
                                self.to_server.push_back((c.addr, t.contents.to_vec()));
                            }
                        }
                        RtcOutput::Event(e) => match e {
                            Event::Connected => c.connected = true,
                            Event::MediaAdded(m) if m.direction.is_receiving() => {
                                let from = c
                                    .rtc
                                    .media(m.mid)
                                    .map(|x| x.stream_id().to_string())
                                    .unwrap_or_default();
                                c.received.insert(
                                    m.mid,
                                    Received {
                                        kind: m.kind,
                                        from,
                                        frames: 0,
                                        last_size: 0,
                                        time_regressions: 0,
                                        last_time: None,
                                        last_tag: None,
                                        last_at: None,
                                        max_gap: Duration::ZERO,
                                        seq_breaks: 0,
                                        last_seq: None,
                                        last_audio_level: None,
                                        max_audio_delay: Duration::ZERO,
                                    },
                                );
                            }
                            Event::MediaData(d) => {
                                if let Some(r) = c.received.get_mut(&d.mid) {
                                    r.frames += 1;
                                    r.last_size = d.data.len();
                                    let t = d.time.numer();
                                    if r.last_time.is_some_and(|l| t <= l) {
                                        r.time_regressions += 1;
                                    }
                                    r.last_time = Some(t);
                                    r.last_tag = d.data.last().copied();
                                    let (first, last) =
                                        (**d.seq_range.start(), **d.seq_range.end());
                                    if r.last_seq.is_some_and(|l| first != l + 1) {
                                        r.seq_breaks += 1;
                                    }
                                    r.last_seq = Some(last);
                                    r.last_audio_level = d.ext_vals.audio_level;
                                    if r.kind == MediaKind::Audio
                                        && let Some(sent) = d.data.get(4..12)
                                    {
                                        let sent = u64::from_le_bytes(sent.try_into().unwrap());
                                        let delay = self.now - (start + Duration::from_nanos(sent));
                                        r.max_audio_delay = r.max_audio_delay.max(delay);
                                    }
                                    if let Some(t) = r.last_at {
                                        r.max_gap = r.max_gap.max(self.now - t);
                                    }
                                    r.last_at = Some(self.now);
                                }
                            }
                            Event::ChannelOpen(id, _) => c.channel = Some(id),
                            Event::ChannelData(d) => c
                                .signals
                                .push(format!("channel:{}", String::from_utf8_lossy(&d.data))),
                            Event::KeyframeRequest(r) => {
                                c.keyframe_requests += 1;
                                c.force_keyframe = true;
                                match r.rid {
                                    Some(rid) => c.force_keyframe_rids.push(rid.to_string()),
                                    None => {
                                        c.force_keyframe_rids =
                                            vec!["q".into(), "h".into(), "f".into()]
                                    }
                                }
                            }
                            _ => {}
                        },
                    }
                }
            }
            while let Some((src, data)) = self.to_server.pop_front() {
                moved = true;
                // Only media is impaired: the handshake is not what these tests study.
                let media = data.first().is_some_and(|b| (128..192).contains(b));
                let hit = self.lossy.is_none_or(|a| a == src);
                if media && hit && self.lose(self.uplink_loss) {
                    continue;
                }
                if let Some(ssrc) = rtp_ssrc(&data) {
                    self.rtp_in.push(src);
                    self.last_rtp_seq
                        .insert(ssrc, u16::from_be_bytes([data[2], data[3]]));
                }
                self.sfu.handle_receive(self.now, src, self.server, &data);
            }
            loop {
                match self.sfu.poll_output() {
                    Output::Timeout(_) => break,
                    Output::Transmit(t) => {
                        moved = true;
                        let media = t.contents.first().is_some_and(|b| (128..192).contains(b));
                        let hit = self.lossy.is_none_or(|a| a == t.destination);
                        if media && hit && self.lose(self.downlink_loss) {
                            continue;
                        }
                        if let Some(c) = self.clients.iter_mut().find(|c| c.addr == t.destination) {
                            if !c.rtc.is_alive() || c.offline {
                                continue;
                            }
                            if let Some(ssrc) = rtp_ssrc(&t.contents) {
                                c.rtp_ssrcs.push(ssrc);
                            }
                            let r =
                                Receive::new(Protocol::Udp, t.source, t.destination, &t.contents)
                                    .unwrap();
                            c.rtc.handle_input(Input::Receive(self.now, r)).unwrap();
                        }
                    }
                    Output::Signal(p, s) => {
                        moved = true;
                        self.signal(p, s);
                    }
                    Output::Event(e) => self.events.push(e),
                    Output::Relay(l, m) => {
                        moved = true;
                        self.relayed.push((l, m));
                    }
                    _ => {}
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn signal(&mut self, p: ConnectionId, s: Signal) {
        let Some(c) = self.clients.iter_mut().find(|c| c.conn == p) else {
            return;
        };
        match s {
            Signal::Offer(offer) => {
                if !c.rtc.is_alive() {
                    return;
                }
                let answer: SdpAnswer = c.rtc.sdp_api().accept_offer(offer).unwrap();
                c.signals.push("offer".into());
                // Mark new receiving m-lines now, so media is counted from the first frame.
                self.sfu.handle_answer(self.now, p, answer).unwrap();
            }
            Signal::LayersNeeded { rids, .. } => {
                c.signals.push(format!("layers:{}", rids.join(",")))
            }
            Signal::ActiveSpeakers(list) => {
                let ids: Vec<String> = list.iter().map(|s| s.participant.to_string()).collect();
                c.signals.push(format!("speakers:{}", ids.join(",")));
            }
            Signal::Left { reason } => {
                c.left = Some(reason);
                c.signals.push(format!("left:{}", reason.as_str()));
            }
            Signal::ParticipantJoined(i) => c.signals.push(format!("joined:{}", i.id)),
            Signal::ParticipantLeft { participant, .. } => {
                c.signals.push(format!("participant_left:{participant}"))
            }
            Signal::TrackPublished { participant, track } => c
                .signals
                .push(format!("track_published:{participant}:{}", track.id)),
            Signal::TrackUnpublished { participant, track } => c
                .signals
                .push(format!("track_unpublished:{participant}:{track}")),
            Signal::ConnectionQuality(list) => {
                for q in list {
                    c.signals
                        .push(format!("quality:{}={}", q.participant, q.quality.as_str()));
                }
            }
            other => c.signals.push(format!("{other:?}")),
        }
    }
}
