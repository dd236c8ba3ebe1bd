//! The driver task: the only owner of the sockets and the core.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::task::Poll;
use std::time::Instant;

use tokio::io::ReadBuf;
use tokio::sync::mpsc;
use vela_media_core::{Output, ParticipantId, RoomEvent, Sfu, Signal, Transmit};

use crate::handle::{Command, MediaError};
use crate::socket::MediaSockets;

/// Big enough for any datagram WebRTC sends (MTU-sized, with headroom).
const RECV_BUF: usize = 2048;
/// Datagrams taken from a socket before the core's output is drained; bounds
/// the delay this adds to the first of them.
const RECV_BATCH: usize = 32;
/// Due timeouts handled in a row before the sockets and commands are polled.
const MAX_IMMEDIATE_TIMEOUTS: u32 = 64;

struct Driver {
    sfu: Sfu,
    sockets: MediaSockets,
    sinks: HashMap<ParticipantId, mpsc::UnboundedSender<Signal>>,
    send_errors: u64,
    /// Where room events go (webhooks, metrics); never waited on.
    events: Option<mpsc::Sender<RoomEvent>>,
    events_dropped: u64,
}

pub(crate) async fn run(
    sfu: Sfu,
    sockets: MediaSockets,
    mut rx: mpsc::Receiver<Command>,
    events: Option<mpsc::Sender<RoomEvent>>,
) {
    let mut d = Driver {
        sfu,
        sockets,
        sinks: HashMap::new(),
        send_errors: 0,
        events,
        events_dropped: 0,
    };
    let mut buf = vec![0u8; RECV_BUF];
    // Timeouts already due (str0m's pacer asks for "now" after each packet it
    // releases) run at once: tokio's sleep rounds up to its next millisecond
    // tick, which would pace packets by timer ticks instead of CPU. Bounded,
    // so the sockets and commands are still served.
    let mut immediate = 0u32;
    loop {
        let timeout = d.drain().await;
        let now = Instant::now();
        if timeout <= now && immediate < MAX_IMMEDIATE_TIMEOUTS {
            immediate += 1;
            d.sfu.handle_timeout(now);
            continue;
        }
        immediate = 0;
        let sockets = &d.sockets.sockets;
        let recv = poll_fn(|cx| {
            for (i, (s, _)) in sockets.iter().enumerate() {
                let mut rb = ReadBuf::new(&mut buf);
                if let Poll::Ready(r) = s.poll_recv_from(cx, &mut rb) {
                    return Poll::Ready((i, r.map(|src| (src, rb.filled().len()))));
                }
            }
            Poll::Pending
        });
        tokio::select! {
            biased;
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                if d.command(cmd).await {
                    break;
                }
            }
            (i, r) = recv => match r {
                Ok((source, n)) => {
                    let destination = d.sockets.sockets[i].1;
                    d.sfu.handle_receive(Instant::now(), source, destination, &buf[..n]);
                    // Take what else is queued before draining, so each peer is
                    // polled once per burst rather than once per datagram.
                    let socket = &d.sockets.sockets[i].0;
                    for _ in 1..RECV_BATCH {
                        match socket.try_recv_from(&mut buf) {
                            Ok((n, source)) => {
                                d.sfu.handle_receive(Instant::now(), source, destination, &buf[..n]);
                            }
                            Err(_) => break,
                        }
                    }
                }
                // ICMP port unreachable from a gone client, and the like.
                Err(e) => tracing::debug!(error = %e, "udp receive failed"),
            },
            _ = tokio::time::sleep_until(timeout.into()) => {
                d.sfu.handle_timeout(Instant::now());
            }
        }
    }
    tracing::info!(send_errors = d.send_errors, "media driver stopped");
}

impl Driver {
    /// Carries out the core's outputs until it only waits for time.
    async fn drain(&mut self) -> Instant {
        loop {
            match self.sfu.poll_output() {
                Output::Timeout(t) => return t,
                Output::Transmit(t) => self.send(t).await,
                Output::Signal(p, s) => self.deliver(p, s),
                Output::Event(e) => self.event(e),
                _ => {}
            }
        }
    }

    async fn send(&mut self, t: Transmit) {
        let Some((socket, _)) = self
            .sockets
            .sockets
            .iter()
            .find(|(_, a)| *a == t.source)
            .or_else(|| self.sockets.sockets.first())
        else {
            return;
        };
        let r = match socket.try_send_to(&t.contents, t.destination) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                socket.send_to(&t.contents, t.destination).await
            }
            r => r,
        };
        if let Err(e) = r {
            self.send_errors += 1;
            tracing::debug!(destination = %t.destination, error = %e, "udp send failed");
        }
    }

    /// Hands a room event on without waiting: a full queue drops it (counted)
    /// rather than stall media.
    fn event(&mut self, e: RoomEvent) {
        tracing::debug!(event = ?e, "room event");
        if let Some(tx) = &self.events
            && tx.try_send(e).is_err()
        {
            self.events_dropped += 1;
            if self.events_dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.events_dropped,
                    "room event queue full; events dropped"
                );
            }
        }
    }

    fn deliver(&mut self, p: ParticipantId, s: Signal) {
        let left = matches!(s, Signal::Left { .. });
        if let Some(sink) = self.sinks.get(&p) {
            let _ = sink.send(s);
        }
        if left {
            self.sinks.remove(&p);
        }
    }

    /// Runs one command; true when the driver is to stop.
    async fn command(&mut self, cmd: Command) -> bool {
        let now = Instant::now();
        match cmd {
            Command::Join(req, sink, reply) => {
                let r = self.sfu.handle_join(now, *req);
                if let Ok(j) = &r {
                    self.sinks.insert(j.connection, sink);
                }
                let _ = reply.send(r.map_err(MediaError::from));
            }
            Command::Handover(from, req, sink, reply) => {
                let r = self.sfu.handle_handover(now, from, *req);
                if let Ok(j) = &r {
                    self.sinks.insert(j.connection, sink);
                }
                let _ = reply.send(r.map_err(MediaError::from));
            }
            Command::Offer(p, offer, reply) => {
                let _ = reply.send(self.sfu.handle_offer(now, p, *offer).map_err(Into::into));
            }
            Command::Answer(p, answer, reply) => {
                let _ = reply.send(self.sfu.handle_answer(now, p, *answer).map_err(Into::into));
            }
            Command::Candidate(p, c, reply) => {
                let _ = reply.send(self.sfu.handle_candidate(p, &c).map_err(Into::into));
            }
            Command::Mute(p, track, kind, muted, reply) => {
                let r = self.sfu.handle_mute(p, track, kind.map(Into::into), muted);
                let _ = reply.send(r.map_err(Into::into));
            }
            Command::TrackSettings(p, track, settings, reply) => {
                let r = self.sfu.handle_track_settings(p, track, settings);
                let _ = reply.send(r.map_err(Into::into));
            }
            Command::Leave(p, reason) => self.sfu.handle_leave(now, p, reason),
            Command::Participants(room, reply) => {
                let _ = reply.send(self.sfu.participants(&room));
            }
            Command::With(f) => f(&mut self.sfu, now),
            Command::Stats(reply) => {
                let _ = reply.send(self.sfu.stats());
            }
            Command::Shutdown(reply) => {
                self.sfu.handle_shutdown(now);
                self.drain().await;
                let _ = reply.send(());
                return true;
            }
        }
        false
    }
}
