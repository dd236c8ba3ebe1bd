//! The driver task: the only owner of the sockets and the core.

use std::future::poll_fn;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Instant;

use rustc_hash::FxHashMap;
use tokio::sync::mpsc;
use vela_media_core::{
    ConnectionId, LeaveReason, Output, RoomEvent, RoomId, Sfu, Signal, SignalError, Transmit,
};

use crate::handle::{Command, MediaError, RoomCommand, SignalSink};
use crate::placement::Placement;
use crate::socket::MediaSockets;
use crate::udp::{Receiver, Sender};

/// Due timeouts handled in a row before the sockets and commands are polled.
const MAX_IMMEDIATE_TIMEOUTS: u32 = 64;

struct Driver {
    sfu: Sfu,
    sockets: MediaSockets,
    /// One send queue per socket, same order.
    senders: Vec<Sender>,
    sinks: FxHashMap<ConnectionId, SignalSink>,
    /// Participants whose signal queue overflowed: they leave as too slow.
    too_slow: Vec<ConnectionId>,
    /// Where room events go (webhooks, metrics); never waited on.
    events: Option<mpsc::Sender<RoomEvent>>,
    events_dropped: u64,
    /// This shard's index, and where the handle places rooms (with more than
    /// one shard): told when a room opens or closes here and how many
    /// participants this shard has.
    placement: Option<(usize, Arc<Mutex<Placement>>)>,
}

pub(crate) async fn run(
    sfu: Sfu,
    sockets: MediaSockets,
    mut rx: mpsc::Receiver<Command>,
    events: Option<mpsc::Sender<RoomEvent>>,
    placement: Option<(usize, Arc<Mutex<Placement>>)>,
) {
    let senders = sockets.sockets.iter().map(|_| Sender::new()).collect();
    let mut d = Driver {
        sfu,
        sockets,
        senders,
        sinks: FxHashMap::default(),
        too_slow: Vec::new(),
        events,
        events_dropped: 0,
        placement,
    };
    let mut receiver = Receiver::new();
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
        let readable = poll_fn(|cx| {
            for (i, (s, _)) in sockets.iter().enumerate() {
                if let Poll::Ready(r) = s.poll_recv_ready(cx) {
                    return Poll::Ready((i, r));
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
            (i, r) = readable => {
                let (socket, destination) = &d.sockets.sockets[i];
                // Everything queued, up to a batch, in one system call; each
                // peer is then polled once per burst rather than per datagram.
                match r.and_then(|()| receiver.try_recv(socket)) {
                    Ok(n) => {
                        let now = Instant::now();
                        for k in 0..n {
                            let (source, datagram) = receiver.datagram(k);
                            d.sfu.handle_receive(now, source, *destination, datagram);
                        }
                    }
                    // Readiness was stale; tokio cleared it.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // ICMP port unreachable from a gone client, and the like.
                    Err(e) => tracing::debug!(error = %e, "udp receive failed"),
                }
            }
            _ = tokio::time::sleep_until(timeout.into()) => {
                d.sfu.handle_timeout(Instant::now());
            }
        }
    }
    let send_errors: u64 = d.senders.iter().map(|s| s.errors).sum();
    tracing::info!(send_errors, "media driver stopped");
}

impl Driver {
    /// Carries out the core's outputs until it only waits for time; the
    /// datagrams go out in batches (see `udp`), the last at the end.
    async fn drain(&mut self) -> Instant {
        loop {
            match self.sfu.poll_output() {
                Output::Timeout(t) => {
                    if !self.too_slow.is_empty() {
                        // Their leaving tells the others: poll again.
                        let now = Instant::now();
                        for p in std::mem::take(&mut self.too_slow) {
                            self.sfu.handle_leave(now, p, LeaveReason::TooSlow);
                        }
                        continue;
                    }
                    self.flush().await;
                    return t;
                }
                Output::Transmit(t) => self.send(t).await,
                Output::Signal(p, s) => self.deliver(p, s),
                Output::Event(e) => self.event(e),
                _ => {}
            }
        }
    }

    /// Queues a datagram on the socket of its source address (the first
    /// socket if none matches); sends that queue when it is full.
    async fn send(&mut self, t: Transmit) {
        let sockets = &self.sockets.sockets;
        let i = sockets
            .iter()
            .position(|(_, a)| *a == t.source)
            .unwrap_or(0);
        let (Some((socket, _)), Some(sender)) = (sockets.get(i), self.senders.get_mut(i)) else {
            return;
        };
        if sender.push(t) {
            sender.flush(socket).await;
        }
    }

    /// Sends every queued datagram.
    async fn flush(&mut self) {
        for ((socket, _), sender) in self.sockets.sockets.iter().zip(&mut self.senders) {
            sender.flush(socket).await;
        }
    }

    /// Hands a room event on without waiting: a full queue drops it (counted)
    /// rather than stall media.
    fn event(&mut self, e: RoomEvent) {
        tracing::debug!(event = ?e, "room event");
        if let Some((shard, placement)) = &self.placement
            && matches!(
                e,
                RoomEvent::RoomStarted { .. }
                    | RoomEvent::RoomFinished { .. }
                    | RoomEvent::ParticipantJoined { .. }
                    | RoomEvent::ParticipantLeft { .. }
            )
        {
            let participants = self.sfu.stats().participants;
            placement
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .observe(Instant::now(), *shard, &e, participants);
        }
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

    /// Queues a signal for its participant. A participant whose queue is
    /// full is too slow for its room: no more is queued for it (its
    /// receiver ends with `left`, reason `too_slow`) and it leaves.
    fn deliver(&mut self, p: ConnectionId, s: Signal) {
        let left = matches!(s, Signal::Left { .. });
        if let Some(sink) = self.sinks.get(&p)
            && !sink.deliver(s)
        {
            tracing::warn!(participant = %p, "signal queue full: the participant is too slow and leaves");
            self.sinks.remove(&p);
            self.too_slow.push(p);
            return;
        }
        if left {
            self.sinks.remove(&p);
        }
    }

    /// The server API's operations on `room`.
    fn room_command(&mut self, now: Instant, room: &RoomId, cmd: RoomCommand) {
        let sfu = &mut self.sfu;
        let known = |sfu: &Sfu| {
            sfu.room_info(room)
                .map(|_| ())
                .ok_or(MediaError::Signal(SignalError::UnknownRoom))
        };
        match cmd {
            RoomCommand::Create(options, reply) => {
                let _ = reply.send(Ok(sfu.handle_create_room(now, room.clone(), options)));
            }
            RoomCommand::Delete(reply) => {
                let _ = reply.send(Ok(sfu.handle_delete_room(now, room)));
            }
            RoomCommand::Info(reply) => {
                let _ = reply.send(Ok(sfu.room_info(room)));
            }
            RoomCommand::Participants(reply) => {
                let _ = reply.send(known(sfu).map(|()| sfu.participants(room)));
            }
            RoomCommand::Participant(identity, reply) => {
                let _ = reply.send(known(sfu).map(|()| sfu.participant(room, &identity)));
            }
            RoomCommand::Remove(identity, reply) => {
                let r = sfu.handle_remove_participant(now, room, &identity);
                let _ = reply.send(r.map_err(Into::into));
            }
            RoomCommand::UpdatePermissions(identity, update, reply) => {
                // Read and changed in one command: nothing comes between.
                let r = sfu
                    .participant(room, &identity)
                    .ok_or(SignalError::UnknownParticipant)
                    .and_then(|p| {
                        let new = update.apply(p.permissions);
                        sfu.handle_update_permissions(now, room, &identity, new)
                    });
                let _ = reply.send(r.map_err(Into::into));
            }
            RoomCommand::MuteTrack(identity, track, muted, reply) => {
                let r = sfu.handle_mute_track(now, room, &identity, track, muted);
                let _ = reply.send(r.map_err(Into::into));
            }
            RoomCommand::Data(message, reply) => {
                let r = sfu.handle_data(now, room, None, message);
                let _ = reply.send(r.map_err(Into::into));
            }
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
                let _ = reply.send(self.sfu.handle_candidate(now, p, &c).map_err(Into::into));
            }
            Command::Mute(p, track, kind, muted, reply) => {
                let r = self
                    .sfu
                    .handle_mute(now, p, track, kind.map(Into::into), muted);
                let _ = reply.send(r.map_err(Into::into));
            }
            Command::TrackSettings(p, track, settings, reply) => {
                let r = self.sfu.handle_track_settings(now, p, track, settings);
                let _ = reply.send(r.map_err(Into::into));
            }
            Command::Leave(p, reason) => self.sfu.handle_leave(now, p, reason),
            Command::Participants(room, reply) => {
                let _ = reply.send(self.sfu.participants(&room));
            }
            Command::Room(room, cmd) => self.room_command(now, &room, cmd),
            Command::DataFrom(from, message, reply) => {
                let r = match self.sfu.room_of(from).cloned() {
                    Some(room) => self.sfu.handle_data(now, &room, Some(from), message),
                    None => Err(SignalError::UnknownParticipant),
                };
                let _ = reply.send(r.map_err(Into::into));
            }
            Command::Rooms(reply) => {
                let _ = reply.send(self.sfu.rooms());
            }
            #[cfg(feature = "test-hooks")]
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
