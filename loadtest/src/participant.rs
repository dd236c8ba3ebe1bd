//! The participant engine: many synthetic participants on one thread.
//!
//! Each participant owns a UDP socket and either a str0m `Rtc` (in RTP mode:
//! the engine writes the packets, so the VP8 descriptors are its own) or a
//! plain link to the raw relay. One thread runs them all with `mio`: a
//! readiness event drains that socket; a timer heap wakes participants for
//! str0m timeouts and their media schedule (20 ms audio, 1/fps video).
//! Signaling (WebSocket, WHIP, WHEP) runs elsewhere and talks to the engine
//! through [`Engine`] commands.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{MediaKind, Mid, Pt, Rid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite};
use str0m::{Event, Input, Output, Rtc};
use tokio::sync::oneshot;
use webrtc_util::marshal::{Marshal, MarshalSize, Unmarshal};

use crate::measure::{Route, RouteKey, Window};
use crate::media::{
    AUDIO_INTERVAL, AudioSource, OpusLibrary, Packet, TailAssembler, Trailer, VideoSource,
    VideoSpec,
};
use crate::relay;

const WAKER: Token = Token(usize::MAX);
/// Media writes later than this are skipped rather than caught up.
const MAX_CATCH_UP: Duration = Duration::from_millis(100);
const RAW_JOIN_RETRY: Duration = Duration::from_millis(200);
/// Datagrams read from one socket before the others get their turn.
const READ_BUDGET: usize = 32;

/// What every participant of one engine shares.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Time zero of the trailers' send timestamps.
    pub epoch: Instant,
    /// Percent of RTP/RTCP datagrams dropped each way once connected (S6).
    pub loss_pct: f64,
    /// Seed for loss and media variation.
    pub seed: u64,
    /// The Opus frames publishers play.
    pub opus: Arc<OpusLibrary>,
    /// The video publishers send.
    pub video: Arc<VideoSpec>,
}

/// How a participant reaches the server.
pub enum Transport {
    /// A WebRTC connection; the answer is already applied.
    Rtc(Box<Rtc>),
    /// The raw relay: join `room` at `relay`, receiving when `subscribe`.
    Raw {
        /// The relay's address.
        relay: SocketAddr,
        /// Room number.
        room: u32,
        /// Receive the room's media.
        subscribe: bool,
    },
}

/// A participant handed to the engine after signaling.
pub struct NewClient {
    /// Participant index in the run (unique per engine).
    pub id: u32,
    /// Its UDP socket (bound, the address used in its candidate).
    pub socket: std::net::UdpSocket,
    /// Its connection.
    pub transport: Transport,
    /// The audio m-line it publishes on (raw: any value, `Some` to publish).
    pub audio: Option<Mid>,
    /// The video m-line it publishes on.
    pub video: Option<Mid>,
    /// When its join began (WebSocket connect or HTTP POST).
    pub join_started: Instant,
    /// When the server's answer arrived.
    pub answered: Instant,
}

/// Join timings of one participant, since its join began.
#[derive(Debug, Clone, Copy)]
pub struct JoinTiming {
    /// Participant index.
    pub id: u32,
    /// Until the server's SDP answer.
    pub answer: Duration,
    /// Until ICE and DTLS completed (raw: the relay acknowledged).
    pub connected: Option<Duration>,
    /// Until the first media frame arrived.
    pub first_media: Option<Duration>,
}

/// Engine-wide counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Datagrams received on participant sockets.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Sends refused by a full socket buffer (dropped).
    pub send_blocked: u64,
    /// Sends that failed otherwise.
    pub send_errors: u64,
    /// Datagrams dropped by the loss simulation, inbound.
    pub dropped_in: u64,
    /// Datagrams dropped by the loss simulation, outbound.
    pub dropped_out: u64,
    /// Media frames skipped because the engine fell more than 100 ms behind.
    pub skipped_frames: u64,
    /// Connections str0m reported failed.
    pub rtc_errors: u64,
    /// Participants removed (after they left).
    pub departed: u64,
    /// Of those, how many had connected (ICE and DTLS).
    pub departed_connected: u64,
    /// Of those, how many had received media.
    pub departed_with_media: u64,
}

/// A progress snapshot; the interval resets with each one.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Participants in the engine.
    pub clients: usize,
    /// Of those, connected.
    pub connected: usize,
    /// Routes that carried at least one frame.
    pub routes: usize,
    /// Since the previous snapshot.
    pub interval: Window,
    /// Totals so far.
    pub counters: Counters,
}

/// Everything measured, at the end of a run.
#[derive(Debug, Clone, Default)]
pub struct Final {
    /// The measuring window (from [`Engine::reset_window`]).
    pub window: Window,
    /// Every route.
    pub routes: HashMap<RouteKey, Route>,
    /// Last frame sequence each sending track wrote.
    pub last_sent: HashMap<u32, u32>,
    /// Per participant join timings.
    pub joins: Vec<JoinTiming>,
    /// RTP sequence holes at the receivers.
    pub packet_holes: u64,
    /// Totals.
    pub counters: Counters,
}

enum Command {
    Add(Box<NewClient>),
    Offer(
        u32,
        Box<SdpOffer>,
        oneshot::Sender<Result<SdpAnswer, String>>,
    ),
    Remove(u32),
    Layers(u32, Vec<String>),
    StopMedia,
    ResetWindow,
    Snapshot(oneshot::Sender<Snapshot>),
    Finish(oneshot::Sender<Box<Final>>),
    Shutdown,
}

/// A handle to an engine thread.
pub struct Engine {
    tx: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Engine {
    /// Starts an engine thread.
    pub fn start(cfg: EngineConfig) -> io::Result<Engine> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("loadtest-engine".into())
            .spawn(move || Core::new(cfg, poll, rx).run())?;
        Ok(Engine {
            tx,
            waker,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    fn send(&self, c: Command) {
        if self.tx.send(c).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Adds a participant.
    pub fn add(&self, c: NewClient) {
        self.send(Command::Add(Box::new(c)));
    }

    /// Applies a server offer to participant `id`; returns the answer.
    pub async fn offer(&self, id: u32, offer: SdpOffer) -> Result<SdpAnswer, String> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Offer(id, Box::new(offer), tx));
        rx.await.map_err(|_| "engine stopped".to_owned())?
    }

    /// Drops participant `id` (after it left the server).
    pub fn remove(&self, id: u32) {
        self.send(Command::Remove(id));
    }

    /// Participant `id` sends only these simulcast rids from now on (the
    /// server said which layers anyone needs); a layer coming back starts
    /// with a keyframe.
    pub fn set_layers(&self, id: u32, rids: Vec<String>) {
        self.send(Command::Layers(id, rids));
    }

    /// Publishers stop writing media (the drain before the final count).
    pub fn stop_media(&self) {
        self.send(Command::StopMedia);
    }

    /// Starts the measuring window: clears its counters and histograms.
    pub fn reset_window(&self) {
        self.send(Command::ResetWindow);
    }

    /// Progress since the previous snapshot.
    pub async fn snapshot(&self) -> Snapshot {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Snapshot(tx));
        rx.await.unwrap_or_default()
    }

    /// The final measurements.
    pub async fn finish(&self) -> Final {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Finish(tx));
        rx.await.map(|b| *b).unwrap_or_default()
    }

    /// Stops the thread and waits for it.
    pub fn shutdown(&self) {
        let t = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = t {
            self.send(Command::Shutdown);
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct AudioOut {
    mid: Mid,
    ssrc: u32,
    rtp_seq: u64,
    source: AudioSource,
    next: Instant,
}

struct LayerOut {
    rid: Option<Rid>,
    ssrc: u32,
    rtp_seq: u64,
    active: bool,
}

struct VideoOut {
    mid: Mid,
    layers: Vec<LayerOut>,
    source: VideoSource,
    next: Instant,
}

struct RxStream {
    video: bool,
    asm: TailAssembler,
    first: u64,
    max: u64,
    received: u64,
}

enum Link {
    Rtc(Box<Rtc>),
    Raw {
        relay: SocketAddr,
        room: u32,
        subscribe: bool,
        next_join: Instant,
    },
}

struct Client {
    id: u32,
    socket: UdpSocket,
    local: SocketAddr,
    link: Link,
    audio: Option<AudioOut>,
    video: Option<VideoOut>,
    pts: Option<(Pt, Pt)>,
    rtc_timeout: Instant,
    scheduled: Option<Instant>,
    connected: bool,
    dead: bool,
    rx: HashMap<u32, RxStream>,
    /// In the engine's list of sockets to read.
    queued: bool,
    join_started: Instant,
    answered: Instant,
    connected_at: Option<Instant>,
    first_media_at: Option<Instant>,
}

/// Payload types on the raw relay path.
pub const RAW_PT_OPUS: u8 = 111;
/// VP8 payload type on the raw relay path.
pub const RAW_PT_VP8: u8 = 96;
/// RTP header extension id carrying the rid on the raw relay path.
pub const RAW_RID_EXT: u8 = 10;

struct Stats {
    recording: bool,
    window: Window,
    interval: Window,
    routes: HashMap<RouteKey, Route>,
    last_sent: HashMap<u32, u32>,
    counters: Counters,
    departed_holes: u64,
}

struct Core {
    cfg: EngineConfig,
    poll: Poll,
    rx: mpsc::Receiver<Command>,
    clients: Vec<Option<Client>>,
    slots: HashMap<u32, usize>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    stats: Stats,
    rng: fastrand::Rng,
    stopped: bool,
    buf: Vec<u8>,
    /// Sockets with data to read, in turn.
    pending: std::collections::VecDeque<usize>,
}

fn is_rtp_or_rtcp(b: &[u8]) -> bool {
    b.first().is_some_and(|x| (128..192).contains(x))
}

impl Core {
    fn new(cfg: EngineConfig, poll: Poll, rx: mpsc::Receiver<Command>) -> Self {
        let rng = fastrand::Rng::with_seed(cfg.seed);
        Core {
            cfg,
            poll,
            rx,
            clients: Vec::new(),
            slots: HashMap::new(),
            timers: BinaryHeap::new(),
            stats: Stats {
                recording: false,
                window: Window::default(),
                interval: Window::default(),
                routes: HashMap::new(),
                last_sent: HashMap::new(),
                counters: Counters::default(),
                departed_holes: 0,
            },
            rng,
            stopped: false,
            buf: vec![0u8; 2048],
            pending: std::collections::VecDeque::new(),
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            loop {
                match self.rx.try_recv() {
                    Ok(Command::Shutdown) | Err(mpsc::TryRecvError::Disconnected) => return,
                    Ok(c) => self.command(c),
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
            self.fire_timers();
            let wait = if self.pending.is_empty() {
                self.timers
                    .peek()
                    .map(|Reverse((t, _))| t.saturating_duration_since(Instant::now()))
                    .unwrap_or(Duration::from_millis(100))
            } else {
                Duration::ZERO
            };
            // epoll waits in whole milliseconds (rounded up): sleep short
            // waits precisely instead, and round long ones down.
            let wait = if wait.is_zero() {
                wait
            } else if wait < Duration::from_millis(1) {
                std::thread::sleep(wait);
                Duration::ZERO
            } else {
                Duration::from_millis(wait.as_millis() as u64)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(wait))
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(error = %e, "engine poll failed");
                return;
            }
            for ev in events.iter() {
                let slot = ev.token().0;
                if ev.token() != WAKER
                    && let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut)
                    && !c.queued
                {
                    c.queued = true;
                    self.pending.push_back(slot);
                }
            }
            // One bounded pass over the readable sockets, timers in between,
            // so a burst on one socket cannot hold up everyone's schedule.
            for _ in 0..self.pending.len() {
                let Some(slot) = self.pending.pop_front() else {
                    break;
                };
                let more = self.readable(slot, READ_BUDGET);
                if let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) {
                    if more {
                        self.pending.push_back(slot);
                    } else {
                        c.queued = false;
                    }
                }
                self.fire_timers();
            }
        }
    }

    /// Runs every participant whose timer is due.
    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((t, slot))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let due = self.clients.get(slot).and_then(|c| c.as_ref()?.scheduled);
            if due == Some(t) {
                self.timeout(slot, now);
            }
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Add(n) => self.add(*n),
            Command::Offer(id, offer, reply) => {
                let r = self.slots.get(&id).copied().map_or_else(
                    || Err(format!("no participant {id}")),
                    |slot| {
                        let Some(c) = self.clients[slot].as_mut() else {
                            return Err("gone".into());
                        };
                        let Link::Rtc(rtc) = &mut c.link else {
                            return Err("not a WebRTC participant".into());
                        };
                        let r = rtc
                            .sdp_api()
                            .accept_offer(*offer)
                            .map_err(|e| e.to_string());
                        self.drive(slot, Instant::now());
                        r
                    },
                );
                let _ = reply.send(r);
            }
            Command::Remove(id) => {
                if let Some(slot) = self.slots.remove(&id)
                    && let Some(mut c) = self.clients[slot].take()
                {
                    self.stats.departed_holes += holes(&c);
                    let n = &mut self.stats.counters;
                    n.departed += 1;
                    n.departed_connected += u64::from(c.connected_at.is_some());
                    n.departed_with_media += u64::from(c.first_media_at.is_some());
                    match &mut c.link {
                        Link::Rtc(rtc) => rtc.disconnect(),
                        Link::Raw { relay, .. } => {
                            let _ = c.socket.send_to(relay::LEAVE, *relay);
                        }
                    }
                    let _ = self.poll.registry().deregister(&mut c.socket);
                }
            }
            Command::Layers(id, rids) => {
                if let Some(slot) = self.slots.get(&id).copied()
                    && let Some(c) = self.clients[slot].as_mut()
                    && let Some(v) = c.video.as_mut()
                {
                    for i in 0..v.layers.len() {
                        let l = &mut v.layers[i];
                        let on = l.rid.is_none_or(|r| rids.iter().any(|x| *x == *r));
                        if on && !l.active {
                            v.source.request_keyframe(Some(i));
                        }
                        v.layers[i].active = on;
                    }
                }
            }
            Command::StopMedia => self.stopped = true,
            Command::ResetWindow => {
                self.stats.window = Window::default();
                self.stats.recording = true;
            }
            Command::Snapshot(reply) => {
                let clients = self.clients.iter().flatten();
                let s = Snapshot {
                    clients: clients.clone().count(),
                    connected: clients.filter(|c| c.connected).count(),
                    routes: self.stats.routes.len(),
                    interval: std::mem::take(&mut self.stats.interval),
                    counters: self.stats.counters,
                };
                let _ = reply.send(s);
            }
            Command::Finish(reply) => {
                let joins = self
                    .clients
                    .iter()
                    .flatten()
                    .map(|c| JoinTiming {
                        id: c.id,
                        answer: c.answered.saturating_duration_since(c.join_started),
                        connected: c
                            .connected_at
                            .map(|t| t.saturating_duration_since(c.join_started)),
                        first_media: c
                            .first_media_at
                            .map(|t| t.saturating_duration_since(c.join_started)),
                    })
                    .collect();
                let packet_holes = self.stats.departed_holes
                    + self.clients.iter().flatten().map(holes).sum::<u64>();
                self.stats.recording = false;
                let f = Final {
                    window: std::mem::take(&mut self.stats.window),
                    routes: self.stats.routes.clone(),
                    last_sent: self.stats.last_sent.clone(),
                    joins,
                    packet_holes,
                    counters: self.stats.counters,
                };
                let _ = reply.send(Box::new(f));
            }
            Command::Shutdown => {}
        }
    }

    fn add(&mut self, n: NewClient) {
        let now = Instant::now();
        if let Err(e) = n.socket.set_nonblocking(true) {
            tracing::warn!(error = %e, "socket");
            return;
        }
        let mut socket = UdpSocket::from_std(n.socket);
        let Ok(local) = socket.local_addr() else {
            return;
        };
        let slot = self
            .clients
            .iter()
            .position(Option::is_none)
            .unwrap_or_else(|| {
                self.clients.push(None);
                self.clients.len() - 1
            });
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut socket, Token(slot), Interest::READABLE)
        {
            tracing::warn!(error = %e, "register socket");
            return;
        }
        let seed = self.cfg.seed ^ (u64::from(n.id) << 20);
        let mut rng = fastrand::Rng::with_seed(seed);
        let opus_offset = rng.usize(..self.cfg.opus.len().max(1));
        let audio = n.audio.map(|mid| AudioOut {
            mid,
            ssrc: rng.u32(..),
            rtp_seq: u64::from(rng.u16(..30_000)),
            source: AudioSource::new(opus_offset),
            next: now,
        });
        let video = n.video.map(|mid| VideoOut {
            mid,
            layers: self
                .cfg
                .video
                .layers
                .iter()
                .map(|l| LayerOut {
                    rid: (!l.rid.is_empty()).then(|| Rid::from(l.rid.as_str())),
                    ssrc: rng.u32(..),
                    rtp_seq: u64::from(rng.u16(..30_000)),
                    active: true,
                })
                .collect(),
            source: VideoSource::new(&self.cfg.video, seed),
            next: now,
        });
        let link = match n.transport {
            Transport::Rtc(rtc) => Link::Rtc(rtc),
            Transport::Raw {
                relay,
                room,
                subscribe,
            } => Link::Raw {
                relay,
                room,
                subscribe,
                next_join: now,
            },
        };
        self.clients[slot] = Some(Client {
            id: n.id,
            socket,
            local,
            link,
            audio,
            video,
            pts: None,
            rtc_timeout: now,
            scheduled: None,
            connected: false,
            dead: false,
            rx: HashMap::new(),
            queued: false,
            join_started: n.join_started,
            answered: n.answered,
            connected_at: None,
            first_media_at: None,
        });
        self.slots.insert(n.id, slot);
        self.timeout(slot, now);
    }

    /// Timer expiry: media due, str0m timeout, raw join retries.
    fn timeout(&mut self, slot: usize, now: Instant) {
        let Some(c) = self.clients[slot].as_mut() else {
            return;
        };
        c.scheduled = None;
        if let Link::Raw {
            relay,
            room,
            subscribe,
            next_join,
        } = &mut c.link
            && !c.connected
            && *next_join <= now
        {
            let msg = relay::join_message(*room, *subscribe);
            let _ = c.socket.send_to(&msg, *relay);
            *next_join = now + RAW_JOIN_RETRY;
        }
        if c.connected && !c.dead && !self.stopped {
            self.send_media(slot, now);
        }
        self.drive(slot, now);
    }

    /// Writes every media frame that is due.
    fn send_media(&mut self, slot: usize, now: Instant) {
        let Some(c) = self.clients[slot].as_mut() else {
            return;
        };
        let cfg = &self.cfg;
        let stats = &mut self.stats;
        let epoch = cfg.epoch;
        if let Some(mut a) = c.audio.take() {
            while a.next <= now {
                let lag = now - a.next;
                if lag > MAX_CATCH_UP {
                    stats.counters.skipped_frames += lag.as_micros() as u64 / 20_000;
                    a.next = now;
                }
                record_lag(stats, lag);
                let sender = Trailer::sender_id(c.id, false);
                let seq = a.source.seq;
                let p = a.source.next(&cfg.opus, sender, micros(now, epoch));
                let t = AudioSource::rtp_time(seq);
                c.write(
                    stats,
                    &a.mid,
                    None,
                    a.ssrc,
                    &mut a.rtp_seq,
                    t,
                    now,
                    p,
                    false,
                );
                stats.last_sent.insert(sender, seq);
                count_sent(stats, 1, 1);
                a.next += AUDIO_INTERVAL;
            }
            c.audio = Some(a);
        }
        if let Some(mut v) = c.video.take() {
            let interval = cfg.video.interval();
            while v.next <= now {
                let lag = now - v.next;
                if lag > MAX_CATCH_UP {
                    stats.counters.skipped_frames +=
                        (lag.as_micros() / interval.as_micros().max(1)) as u64;
                    v.next = now;
                }
                record_lag(stats, lag);
                let sender = Trailer::sender_id(c.id, true);
                let seq = v.source.seq;
                let frames = v.source.next(&cfg.video, sender, micros(now, epoch));
                let t = VideoSource::rtp_time(seq, cfg.video.fps);
                for f in frames {
                    let Some(l) = v.layers.get_mut(f.layer).filter(|l| l.active) else {
                        continue;
                    };
                    let n = f.packets.len() as u64;
                    for p in f.packets {
                        c.write(
                            stats,
                            &v.mid,
                            l.rid,
                            l.ssrc,
                            &mut l.rtp_seq,
                            t,
                            now,
                            p,
                            true,
                        );
                    }
                    count_sent(stats, 1, n);
                }
                stats.last_sent.insert(sender, seq);
                v.next += interval;
            }
            c.video = Some(v);
        }
    }

    /// Reads up to `budget` datagrams from a participant's socket; true when
    /// it may hold more (the socket is edge-triggered: it must be revisited).
    fn readable(&mut self, slot: usize, budget: usize) -> bool {
        for _ in 0..budget {
            let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
                return false;
            };
            let (n, src) = match c.socket.recv_from(&mut self.buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => continue, // ICMP errors and the like
            };
            let now = Instant::now();
            self.stats.counters.datagrams_in += 1;
            let data = &self.buf[..n];
            if c.connected
                && self.cfg.loss_pct > 0.0
                && is_rtp_or_rtcp(data)
                && self.rng.f64() * 100.0 < self.cfg.loss_pct
            {
                self.stats.counters.dropped_in += 1;
                continue;
            }
            match &mut c.link {
                Link::Rtc(rtc) => {
                    let Ok(r) = Receive::new(Protocol::Udp, src, c.local, data) else {
                        continue;
                    };
                    if rtc.handle_input(Input::Receive(now, r)).is_err() {
                        self.stats.counters.rtc_errors += 1;
                        c.dead = true;
                    }
                    self.drive(slot, now);
                }
                Link::Raw { .. } => {
                    if data.starts_with(relay::JOIN_OK) {
                        if !c.connected {
                            c.connected = true;
                            c.connected_at = Some(now);
                            start_media(c, now, &mut self.rng, &self.cfg);
                            self.reschedule(slot);
                        }
                        continue;
                    }
                    let Ok(p) = rtp::packet::Packet::unmarshal(&mut &data[..]) else {
                        continue;
                    };
                    let video = p.header.payload_type == RAW_PT_VP8;
                    let seq = p.header.sequence_number;
                    let st = c.rx.entry(p.header.ssrc).or_insert_with(|| RxStream {
                        video,
                        asm: TailAssembler::default(),
                        first: u64::from(seq),
                        max: u64::from(seq),
                        received: 0,
                    });
                    let ext = extend_seq(st.max, seq);
                    on_rtp(
                        c,
                        &mut self.stats,
                        self.cfg.epoch,
                        p.header.ssrc,
                        ext,
                        p.header.marker,
                        &p.payload,
                        now,
                    );
                }
            }
        }
        true
    }

    /// Drains a WebRTC participant's output and reschedules it.
    fn drive(&mut self, slot: usize, now: Instant) {
        let Some(c) = self.clients[slot].as_mut() else {
            return;
        };
        if let Link::Rtc(rtc) = &mut c.link {
            if !c.dead && rtc.handle_input(Input::Timeout(now)).is_err() {
                self.stats.counters.rtc_errors += 1;
                c.dead = true;
            }
            while !c.dead {
                let Link::Rtc(rtc) = &mut c.link else { break };
                match rtc.poll_output() {
                    Ok(Output::Timeout(t)) => {
                        c.rtc_timeout = t;
                        break;
                    }
                    Ok(Output::Transmit(t)) => {
                        let drop = c.connected
                            && self.cfg.loss_pct > 0.0
                            && is_rtp_or_rtcp(&t.contents)
                            && self.rng.f64() * 100.0 < self.cfg.loss_pct;
                        if drop {
                            self.stats.counters.dropped_out += 1;
                        } else {
                            send(
                                &c.socket,
                                &mut self.stats.counters,
                                &t.contents,
                                t.destination,
                            );
                        }
                    }
                    Ok(Output::Event(e)) => {
                        on_event(c, &mut self.stats, &self.cfg, &mut self.rng, e, now)
                    }
                    Err(e) => {
                        tracing::debug!(id = c.id, error = %e, "rtc failed");
                        self.stats.counters.rtc_errors += 1;
                        c.dead = true;
                    }
                }
            }
        }
        self.reschedule(slot);
    }

    fn reschedule(&mut self, slot: usize) {
        let Some(c) = self.clients[slot].as_mut() else {
            return;
        };
        let mut next = match &c.link {
            Link::Rtc(_) if !c.dead => Some(c.rtc_timeout),
            Link::Raw { next_join, .. } if !c.connected => Some(*next_join),
            _ => None,
        };
        if c.connected && !c.dead && !self.stopped {
            for t in [
                c.audio.as_ref().map(|a| a.next),
                c.video.as_ref().map(|v| v.next),
            ]
            .into_iter()
            .flatten()
            {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        if let Some(t) = next
            && c.scheduled != Some(t)
        {
            c.scheduled = Some(t);
            self.timers.push(Reverse((t, slot)));
        }
    }
}

fn micros(t: Instant, epoch: Instant) -> u64 {
    t.saturating_duration_since(epoch).as_micros() as u64
}

fn record_lag(stats: &mut Stats, lag: Duration) {
    let us = lag.as_micros() as u64;
    stats.interval.lag.record(us);
    if stats.recording {
        stats.window.lag.record(us);
    }
}

fn count_sent(stats: &mut Stats, frames: u64, packets: u64) {
    stats.interval.frames_sent += frames;
    stats.interval.packets_sent += packets;
    if stats.recording {
        stats.window.frames_sent += frames;
        stats.window.packets_sent += packets;
    }
}

fn send(socket: &UdpSocket, counters: &mut Counters, data: &[u8], to: SocketAddr) {
    match socket.send_to(data, to) {
        Ok(_) => counters.datagrams_out += 1,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => counters.send_blocked += 1,
        Err(_) => counters.send_errors += 1,
    }
}

fn holes(c: &Client) -> u64 {
    c.rx.values()
        .map(|s| (s.max + 1 - s.first).saturating_sub(s.received))
        .sum()
}

/// Extends a 16-bit sequence number against the highest extended one seen.
fn extend_seq(max: u64, seq: u16) -> u64 {
    let roc = max >> 16;
    let cands = [roc.wrapping_sub(1), roc, roc + 1].map(|r| (r << 16) | u64::from(seq));
    cands
        .into_iter()
        .filter(|c| *c < (1 << 62))
        .min_by_key(|c| c.abs_diff(max))
        .unwrap_or(u64::from(seq))
}

/// Media starts a random fraction of an interval after connecting, so
/// publishers that connect together do not send in lockstep.
fn start_media(c: &mut Client, now: Instant, rng: &mut fastrand::Rng, cfg: &EngineConfig) {
    if let Some(a) = c.audio.as_mut() {
        a.next = now + AUDIO_INTERVAL.mul_f64(rng.f64());
    }
    if let Some(v) = c.video.as_mut() {
        v.next = now + cfg.video.interval().mul_f64(rng.f64());
    }
}

#[allow(clippy::too_many_arguments)]
fn on_rtp(
    c: &mut Client,
    stats: &mut Stats,
    epoch: Instant,
    ssrc: u32,
    seq: u64,
    marker: bool,
    payload: &[u8],
    at: Instant,
) {
    stats.interval.rtp_packets += 1;
    stats.interval.rtp_bytes += payload.len() as u64;
    if stats.recording {
        stats.window.rtp_packets += 1;
        stats.window.rtp_bytes += payload.len() as u64;
    }
    let Some(st) = c.rx.get_mut(&ssrc) else {
        return;
    };
    if seq < st.first {
        st.first = seq;
    }
    st.max = st.max.max(seq);
    st.received += 1;
    let trailer = if st.video {
        st.asm.push(seq, payload, marker)
    } else {
        Trailer::parse(payload)
    };
    let Some(t) = trailer else {
        return;
    };
    let recv_us = micros(at, epoch);
    let latency = recv_us.saturating_sub(t.sent_us);
    stats.interval.frame(t.video, t.layer, latency);
    if stats.recording {
        stats.window.frame(t.video, t.layer, latency);
    }
    stats
        .routes
        .entry((c.id, t.sender))
        .or_default()
        .record(&t, recv_us);
    if c.first_media_at.is_none() {
        c.first_media_at = Some(at);
    }
}

fn on_event(
    c: &mut Client,
    stats: &mut Stats,
    cfg: &EngineConfig,
    rng: &mut fastrand::Rng,
    e: Event,
    now: Instant,
) {
    let Link::Rtc(rtc) = &mut c.link else {
        return;
    };
    match e {
        Event::Connected => {
            c.connected = true;
            c.connected_at = Some(now);
            let pt = |codec| {
                rtc.codec_config()
                    .find(|p| p.spec().codec == codec)
                    .map(|p| p.pt())
            };
            c.pts = pt(Codec::Opus).zip(pt(Codec::Vp8));
            start_media(c, now, rng, cfg);
        }
        Event::RtpPacket(p) => {
            let ssrc = *p.header.ssrc;
            if let std::collections::hash_map::Entry::Vacant(e) = c.rx.entry(ssrc) {
                let mid = rtc.direct_api().stream_rx(&p.header.ssrc).map(|s| s.mid());
                let video = mid
                    .and_then(|m| rtc.media(m))
                    .map(|m| m.kind() == MediaKind::Video)
                    .unwrap_or(false);
                e.insert(RxStream {
                    video,
                    asm: TailAssembler::default(),
                    first: *p.seq_no,
                    max: *p.seq_no,
                    received: 0,
                });
            }
            on_rtp(
                c,
                stats,
                cfg.epoch,
                ssrc,
                *p.seq_no,
                p.header.marker,
                &p.payload,
                p.timestamp,
            );
        }
        Event::KeyframeRequest(r) => {
            if let Some(v) = c.video.as_mut()
                && v.mid == r.mid
            {
                let layer = r
                    .rid
                    .and_then(|rid| v.layers.iter().position(|l| l.rid == Some(rid)));
                v.source.request_keyframe(layer);
            }
        }
        _ => {}
    }
}

impl Client {
    /// Writes one RTP payload on the given stream.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        stats: &mut Stats,
        mid: &Mid,
        rid: Option<Rid>,
        ssrc: u32,
        rtp_seq: &mut u64,
        rtp_time: u32,
        now: Instant,
        p: Packet,
        video: bool,
    ) {
        let seq = *rtp_seq;
        *rtp_seq += 1;
        match &mut self.link {
            Link::Rtc(rtc) => {
                let Some((opus, vp8)) = self.pts else {
                    return;
                };
                let pt = if video { vp8 } else { opus };
                let mut ext = ExtensionValues::default();
                if !video {
                    ext.audio_level = Some(-30);
                    ext.voice_activity = Some(true);
                }
                let mut api = rtc.direct_api();
                if let Some(tx) = api.stream_tx_by_mid(*mid, rid) {
                    tx.write_rtp(
                        RtpWrite::new(pt, seq.into(), rtp_time, now, p.payload)
                            .marker(p.marker)
                            .ext_vals(ext)
                            .nackable(video),
                    );
                }
            }
            Link::Raw { relay, .. } => {
                let mut header = rtp::header::Header {
                    version: 2,
                    marker: p.marker,
                    payload_type: if video { RAW_PT_VP8 } else { RAW_PT_OPUS },
                    sequence_number: seq as u16,
                    timestamp: rtp_time,
                    ssrc,
                    ..Default::default()
                };
                if let Some(rid) = rid {
                    let _ =
                        header.set_extension(RAW_RID_EXT, Bytes::copy_from_slice(rid.as_bytes()));
                }
                let pkt = rtp::packet::Packet {
                    header,
                    payload: Bytes::from(p.payload),
                };
                let mut buf = [0u8; 1600];
                let size = pkt.marshal_size();
                if size <= buf.len()
                    && let Ok(n) = pkt.marshal_to(&mut buf)
                {
                    let relay = *relay;
                    send(&self.socket, &mut stats.counters, &buf[..n], relay);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_extension() {
        assert_eq!(extend_seq(10, 11), 11);
        assert_eq!(extend_seq(65_535, 0), 65_536);
        assert_eq!(extend_seq(65_536 + 3, 65_534), 65_534);
        assert_eq!(extend_seq(0, 65_535), 65_535);
    }
}
