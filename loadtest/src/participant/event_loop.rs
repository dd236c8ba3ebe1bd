//! The engine thread's loop: `mio` readiness and the timer heap, the
//! commands from [`Engine`](super::Engine), adding participants, and
//! draining each str0m `Rtc`'s output.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mio::net::{TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};
use str0m::media::Rid;
use str0m::{Input, Output};

use super::receive::{holes, on_event};
use super::send::send;
use super::{
    AudioOut, Client, ClientSocket, Command, Core, Counters, EngineConfig, Final, JoinTiming,
    LayerOut, Link, NewClient, Snapshot, Sock, Stats, TCP_QUEUE, TcpConn, Transport, VideoOut,
    WAKER, simulated_loss,
};
use crate::measure::Window;
use crate::media::{AudioSource, VideoSource};
use crate::relay;
use crate::tcp::{Decoder, TxQueue};

const RAW_JOIN_RETRY: Duration = Duration::from_millis(200);
/// Datagrams read from one socket before the others get their turn.
const READ_BUDGET: usize = 32;

impl Core {
    pub(super) fn new(cfg: EngineConfig, poll: Poll, rx: mpsc::Receiver<Command>) -> Self {
        let rng = fastrand::Rng::with_seed(cfg.seed);
        Core {
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
                nodes: cfg.nodes.clone(),
                served_by: Vec::new(),
            },
            rng,
            stopped: false,
            buf: vec![0u8; 2048],
            pending: std::collections::VecDeque::new(),
            cfg,
        }
    }

    pub(super) fn run(mut self) {
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
                            if let Sock::Udp(s) = &c.socket {
                                let _ = s.send_to(relay::LEAVE, *relay);
                            }
                        }
                    }
                    let _ = self.poll.registry().deregister(c.socket.source());
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
        let i = n.id as usize;
        if self.stats.served_by.len() <= i {
            self.stats.served_by.resize(i + 1, None);
        }
        self.stats.served_by[i] = n.served_by;
        let (mut socket, local, interest) = match n.socket {
            ClientSocket::Udp(s) => {
                if let Err(e) = s.set_nonblocking(true) {
                    tracing::warn!(error = %e, "socket");
                    return;
                }
                let s = UdpSocket::from_std(s);
                let Ok(local) = s.local_addr() else {
                    return;
                };
                (Sock::Udp(s), local, Interest::READABLE)
            }
            ClientSocket::Tcp(s) => {
                if let Err(e) = s.set_nonblocking(true) {
                    tracing::warn!(error = %e, "socket");
                    return;
                }
                let (Ok(local), Ok(peer)) = (s.local_addr(), s.peer_addr()) else {
                    return;
                };
                let conn = TcpConn {
                    stream: TcpStream::from_std(s),
                    peer,
                    rx: Decoder::default(),
                    tx: TxQueue::new(TCP_QUEUE),
                };
                // Writable too: a send queue that filled is flushed when
                // the socket drains (edge-triggered, so no busy wake-ups).
                (
                    Sock::Tcp(Box::new(conn)),
                    local,
                    Interest::READABLE | Interest::WRITABLE,
                )
            }
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
            .register(socket.source(), Token(slot), interest)
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
            if let Sock::Udp(s) = &c.socket {
                let _ = s.send_to(&msg, *relay);
            }
            *next_join = now + RAW_JOIN_RETRY;
        }
        if c.connected && !c.dead && !self.stopped {
            self.send_media(slot, now);
        }
        self.drive(slot, now);
    }

    /// Drains a WebRTC participant's output and reschedules it.
    pub(super) fn drive(&mut self, slot: usize, now: Instant) {
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
                        let counters = &mut self.stats.counters;
                        if simulated_loss(&self.cfg, &mut self.rng, c.connected, &t.contents) {
                            counters.dropped_out += 1;
                        } else {
                            match &mut c.socket {
                                Sock::Udp(s) => send(s, counters, &t.contents, t.destination),
                                // Queued and written at once after the
                                // drive: one write for the burst.
                                Sock::Tcp(conn) => {
                                    if conn.tx.push(&t.contents) {
                                        counters.datagrams_out += 1;
                                    } else {
                                        counters.send_blocked += 1;
                                    }
                                }
                            }
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
        self.flush_tcp(slot);
        self.reschedule(slot);
    }

    /// Writes what a TCP participant queued; false when its stream failed
    /// (the participant is then dead). UDP participants: true.
    pub(super) fn flush_tcp(&mut self, slot: usize) -> bool {
        let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        let Sock::Tcp(conn) = &mut c.socket else {
            return true;
        };
        if conn.tx.is_empty() {
            return true;
        }
        match conn.tx.flush(&mut conn.stream) {
            Ok(_) => true,
            Err(e) => {
                self.tcp_closed(slot, &e.to_string());
                false
            }
        }
    }

    /// A TCP participant's stream ended or failed: it is dead from now on
    /// (counted, and its socket no longer polled).
    pub(super) fn tcp_closed(&mut self, slot: usize, why: &str) {
        let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if !c.dead {
            tracing::debug!(id = c.id, why, "tcp stream closed");
            self.stats.counters.tcp_closed += 1;
            c.dead = true;
        }
        let _ = self.poll.registry().deregister(c.socket.source());
    }

    pub(super) fn reschedule(&mut self, slot: usize) {
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
