//! The participant engine: many synthetic participants on one thread.
//!
//! Each participant owns a UDP socket (or, with `--transport tcp`, a TCP
//! stream to the server's passive candidate, RFC 4571 framed: [`crate::tcp`])
//! and either a str0m `Rtc` (in RTP mode: the engine writes the packets, so
//! the VP8 descriptors are its own) or a plain link to the raw relay. One thread runs them all with `mio`: a
//! readiness event drains that socket; a timer heap wakes participants for
//! str0m timeouts and their media schedule (20 ms audio, 1/fps video).
//! Signaling (WebSocket, WHIP, WHEP) runs elsewhere and talks to the engine
//! through [`Engine`] commands.
//!
//! The handle and the state are here; the work is in the children:
//! `event_loop` (readiness, timers, commands, str0m output), `send` (the
//! media schedule and the RTP writes) and `receive` (datagrams in, trailers
//! measured).

mod event_loop;
mod receive;
mod send;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mio::net::{TcpStream, UdpSocket};
use mio::{Poll, Token, Waker};
use str0m::Rtc;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Mid, Pt, Rid};
use tokio::sync::oneshot;

use crate::measure::{Route, RouteKey, Window};
use crate::media::{AudioSource, OpusLibrary, TailAssembler, VideoSource, VideoSpec};
use crate::tcp::{Decoder, TxQueue};

const WAKER: Token = Token(usize::MAX);

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
    /// The node each participant (by index) joins through (`--nodes`), so
    /// latencies are told apart by hop; empty: one server.
    pub nodes: Arc<[u32]>,
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

/// A participant's socket, as signaling hands it over.
pub enum ClientSocket {
    /// Bound; its address is the participant's UDP host candidate.
    Udp(std::net::UdpSocket),
    /// Connected to the server's passive TCP candidate; its local address
    /// is the participant's active TCP candidate. Packets go RFC 4571
    /// framed.
    Tcp(std::net::TcpStream),
}

/// A participant handed to the engine after signaling.
pub struct NewClient {
    /// Participant index in the run (unique per engine).
    pub id: u32,
    /// Its socket.
    pub socket: ClientSocket,
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
    /// The node serving it, when the server said (a cluster's node number,
    /// from the top bits of its participant id): latencies by hop compare
    /// these rather than the nodes joined through, which placement may
    /// override.
    pub served_by: Option<u32>,
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
    /// Sends refused by a full socket buffer, or a full TCP send queue
    /// (dropped).
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
    /// TCP streams that ended or failed while their participant was in the
    /// run (`--transport tcp`).
    pub tcp_closed: u64,
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

/// A publisher's audio track: its Opus loop and its next frame's time.
struct AudioOut {
    mid: Mid,
    ssrc: u32,
    rtp_seq: u64,
    source: AudioSource,
    next: Instant,
}

/// One simulcast layer of a video track (`active`: someone receives it).
struct LayerOut {
    rid: Option<Rid>,
    ssrc: u32,
    rtp_seq: u64,
    active: bool,
}

/// A publisher's video track: its layers and its next frame's time.
struct VideoOut {
    mid: Mid,
    layers: Vec<LayerOut>,
    source: VideoSource,
    next: Instant,
}

/// One received SSRC: its extended sequence range and the video frame
/// tail being reassembled.
struct RxStream {
    video: bool,
    asm: TailAssembler,
    first: u64,
    max: u64,
    received: u64,
}

/// A participant's connection as the engine drives it.
enum Link {
    Rtc(Box<Rtc>),
    Raw {
        relay: SocketAddr,
        room: u32,
        subscribe: bool,
        next_join: Instant,
    },
}

/// Bytes of frames a participant's TCP stream may hold back when the
/// socket is full: about 200 ms of S3 video for one subscriber. Beyond it
/// frames are dropped whole (the stream stays framed), as a full UDP socket
/// buffer drops datagrams.
const TCP_QUEUE: usize = 256 * 1024;

/// A participant's TCP stream to the server and its framing both ways.
struct TcpConn {
    stream: TcpStream,
    /// The server's address (the source of what it sends).
    peer: SocketAddr,
    rx: Decoder,
    tx: TxQueue,
}

/// A participant's socket in the engine.
enum Sock {
    Udp(UdpSocket),
    Tcp(Box<TcpConn>),
}

impl Sock {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Sock::Udp(s) => s,
            Sock::Tcp(t) => &mut t.stream,
        }
    }
}

/// One participant in the engine, in its slot (its `mio` token).
struct Client {
    id: u32,
    socket: Sock,
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

/// What the engine measured: the window (from [`Engine::reset_window`]),
/// the interval since the last snapshot, routes and counters.
struct Stats {
    recording: bool,
    window: Window,
    interval: Window,
    routes: HashMap<RouteKey, Route>,
    last_sent: HashMap<u32, u32>,
    counters: Counters,
    departed_holes: u64,
    /// See [`EngineConfig::nodes`].
    nodes: Arc<[u32]>,
    /// Per participant index, the node serving it (see `NewClient::served_by`).
    served_by: Vec<Option<u32>>,
}

/// The engine thread's state; its methods are in the child modules.
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

/// The loss simulation (S6), each way: once connected, an RTP or RTCP
/// datagram (RFC 7983's first byte 128..=191; never STUN or DTLS, which
/// would only slow the join) is dropped with probability `loss_pct`.
fn simulated_loss(cfg: &EngineConfig, rng: &mut fastrand::Rng, connected: bool, b: &[u8]) -> bool {
    connected
        && cfg.loss_pct > 0.0
        && b.first().is_some_and(|x| (128..192).contains(x))
        && rng.f64() * 100.0 < cfg.loss_pct
}

/// `t` on the trailers' clock.
fn micros(t: Instant, epoch: Instant) -> u64 {
    t.saturating_duration_since(epoch).as_micros() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_simulation_drops_only_media_once_connected() {
        let opus = Arc::new(OpusLibrary::generate(1, 32_000).expect("opus"));
        let mut cfg = EngineConfig {
            epoch: Instant::now(),
            loss_pct: 20.0,
            seed: 1,
            opus,
            video: Arc::new(crate::scenario::default_video()),
            nodes: Arc::from([]),
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let (rtp, stun, dtls) = ([0x80u8, 96], [0x00u8, 1], [22u8, 254]);
        let dropped = (0..10_000)
            .filter(|_| simulated_loss(&cfg, &mut rng, true, &rtp))
            .count();
        assert!((1_500..2_500).contains(&dropped), "{dropped} of 10000");
        for _ in 0..1_000 {
            assert!(!simulated_loss(&cfg, &mut rng, false, &rtp));
            assert!(!simulated_loss(&cfg, &mut rng, true, &stun));
            assert!(!simulated_loss(&cfg, &mut rng, true, &dtls));
            assert!(!simulated_loss(&cfg, &mut rng, true, &[]));
        }
        cfg.loss_pct = 0.0;
        assert!((0..1_000).all(|_| !simulated_loss(&cfg, &mut rng, true, &rtp)));
    }
}
