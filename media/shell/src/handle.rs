//! The control channel: what signaling asks of the media driver.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use str0m::media::Mid;
use tokio::sync::{mpsc, oneshot};
#[cfg(feature = "test-hooks")]
use vela_media_core::Sfu;
use vela_media_core::{
    ConnectionId, DataMessage, JoinError, JoinRequest, Joined, LeaveReason, ParticipantInfo,
    Permissions, RoomId, RoomInfo, RoomOptions, SdpAnswer, SdpOffer, SfuStats, Signal, SignalError,
    TrackId, TrackInfo, TrackKind, TrackSettings, TrackSource, id_shard,
};

use crate::placement::Placement;

/// Signals held for one participant by default before it counts as too
/// slow ([`MediaHandle::with_signal_queue`]).
pub const DEFAULT_SIGNAL_QUEUE: usize = 1024;

/// How long a room's part on another shard, opened with the room's
/// settings ahead of its first participant there, stays open empty when
/// the room itself closes as its last participant leaves.
const SPREAD_PART_EMPTY_TIMEOUT_SECS: u64 = 10;

/// Where the driver delivers one participant's signals.
#[derive(Debug)]
pub(crate) struct SignalSink {
    tx: mpsc::Sender<Signal>,
    too_slow: Arc<AtomicBool>,
}

impl SignalSink {
    /// Queues `s`; `false` when the queue is full (the participant is too
    /// slow: nothing more is queued, and its receiver ends with a `left`).
    pub(crate) fn deliver(&self, s: Signal) -> bool {
        match self.tx.try_send(s) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.too_slow.store(true, Ordering::Relaxed);
                false
            }
        }
    }
}

/// The signals for one participant, in order; ends after [`Signal::Left`].
/// At most the handle's signal queue waits: a participant that falls that
/// far behind leaves the room ([`LeaveReason::TooSlow`]), and its receiver
/// yields what was queued, then that `left`.
#[derive(Debug)]
pub struct SignalReceiver {
    rx: mpsc::Receiver<Signal>,
    too_slow: Arc<AtomicBool>,
}

impl SignalReceiver {
    fn pair(capacity: usize) -> (SignalSink, SignalReceiver) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let too_slow = Arc::new(AtomicBool::new(false));
        (
            SignalSink {
                tx,
                too_slow: too_slow.clone(),
            },
            SignalReceiver { rx, too_slow },
        )
    }

    /// The next signal; `None` once the participant is gone and everything
    /// was received.
    pub async fn recv(&mut self) -> Option<Signal> {
        match self.rx.recv().await {
            Some(s) => Some(s),
            None if self.too_slow.swap(false, Ordering::Relaxed) => Some(Signal::Left {
                reason: LeaveReason::TooSlow,
            }),
            None => None,
        }
    }
}

/// Why a media operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// The join was refused.
    #[error(transparent)]
    Join(#[from] JoinError),
    /// The signal was refused.
    #[error(transparent)]
    Signal(#[from] SignalError),
    /// The media driver has stopped (server shutting down).
    #[error("media server is not running")]
    Stopped,
    /// A relay operation on a node started without a relay.
    #[error("this node has no media relay")]
    NoRelay,
}

/// Work run on the core by the driver task (tests only).
#[cfg(feature = "test-hooks")]
pub(crate) type CoreJob = Box<dyn FnOnce(&mut Sfu, Instant) + Send>;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, MediaError>>;

/// Requests to the driver task.
pub(crate) enum Command {
    Join(Box<JoinRequest>, SignalSink, Reply<Joined>),
    Handover(ConnectionId, Box<JoinRequest>, SignalSink, Reply<Joined>),
    Offer(
        ConnectionId,
        Box<SdpOffer>,
        Vec<(Mid, TrackSource)>,
        Reply<SdpAnswer>,
    ),
    Answer(ConnectionId, Box<SdpAnswer>, Reply<()>),
    Candidate(ConnectionId, String, Reply<()>),
    ChannelSend(ConnectionId, Arc<str>, Vec<u8>, Reply<bool>),
    Mute(
        ConnectionId,
        Option<TrackId>,
        Option<TrackKind>,
        bool,
        Reply<TrackId>,
    ),
    TrackSettings(ConnectionId, TrackId, TrackSettings, Reply<()>),
    Leave(ConnectionId, LeaveReason),
    Participants(RoomId, oneshot::Sender<Vec<ParticipantInfo>>),
    /// The server API's operations on a room (see [`RoomCommand`]).
    Room(RoomId, RoomCommand),
    /// A data message from a connection's client to its room.
    DataFrom(ConnectionId, DataMessage, Reply<usize>),
    /// Runs a closure on the core (tests only).
    #[cfg(feature = "test-hooks")]
    With(CoreJob),
    /// Every room of the shard.
    Rooms(oneshot::Sender<Vec<RoomInfo>>),
    Stats(oneshot::Sender<SfuStats>),
    LocalLinkStats(oneshot::Sender<crate::relay::LocalLinkStats>),
    CoreLinkStats(oneshot::Sender<Vec<crate::relay::CoreLinkStats>>),
    Shutdown(oneshot::Sender<()>),
}

/// The server API's operations on one room, each with its reply.
pub(crate) enum RoomCommand {
    Create(RoomOptions, Reply<RoomInfo>),
    Delete(Reply<bool>),
    Info(Reply<Option<RoomInfo>>),
    /// Fails with [`SignalError::UnknownRoom`] when there is no such room.
    Participants(Reply<Vec<ParticipantInfo>>),
    /// `None`: no such participant; fails when there is no such room.
    Participant(String, Reply<Option<ParticipantInfo>>),
    Remove(String, Reply<()>),
    UpdatePermissions(String, PermissionsUpdate, Reply<ParticipantInfo>),
    MuteTrack(String, TrackId, bool, Reply<TrackInfo>),
    Data(DataMessage, Reply<usize>),
}

/// A change of a participant's permissions: what is `None` keeps its value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PermissionsUpdate {
    /// May publish tracks.
    pub publish: Option<bool>,
    /// May receive others' tracks.
    pub subscribe: Option<bool>,
    /// May send data messages.
    pub publish_data: Option<bool>,
}

impl PermissionsUpdate {
    /// `current` with this change applied.
    pub fn apply(self, current: Permissions) -> Permissions {
        Permissions {
            publish: self.publish.unwrap_or(current.publish),
            subscribe: self.subscribe.unwrap_or(current.subscribe),
            publish_data: self.publish_data.unwrap_or(current.publish_data),
        }
    }
}

/// A cheap, cloneable handle to the media drivers: one per shard (a core
/// with its own socket and rooms; every participant of a room is on the
/// room's shard).
#[derive(Debug, Clone)]
pub struct MediaHandle {
    shards: Arc<[mpsc::Sender<Command>]>,
    /// Where rooms are, with more than one shard (the drivers update it).
    placement: Option<Arc<Mutex<Placement>>>,
    /// The relay to other nodes, if this node has one.
    relay: Option<Arc<crate::relay::node::NodeRelay>>,
    /// Signals held for one participant before it counts as too slow.
    signal_queue: usize,
    /// The node's ICE-over-TCP counters, if it listens on TCP.
    tcp: Option<Arc<crate::tcp::Counters>>,
}

impl MediaHandle {
    pub(crate) fn new(
        mut shards: Vec<mpsc::Sender<Command>>,
        placement: Option<Arc<Mutex<Placement>>>,
    ) -> Self {
        if shards.is_empty() {
            // No driver: a closed channel, so every call fails with `Stopped`.
            shards.push(mpsc::channel(1).0);
        }
        MediaHandle {
            shards: shards.into(),
            placement,
            relay: None,
            signal_queue: DEFAULT_SIGNAL_QUEUE,
            tcp: None,
        }
    }

    pub(crate) fn with_relay(mut self, relay: Option<Arc<crate::relay::node::NodeRelay>>) -> Self {
        self.relay = relay;
        self
    }

    pub(crate) fn with_tcp(mut self, tcp: Option<Arc<crate::tcp::Counters>>) -> Self {
        self.tcp = tcp;
        self
    }

    /// The node's ICE-over-TCP counters; `None` when it does not listen on
    /// TCP ([`crate::NodeOptions::set_tcp`]).
    pub fn tcp_stats(&self) -> Option<crate::TcpStats> {
        self.tcp.as_ref().map(|c| c.stats())
    }

    /// Signaling's word that these other nodes hold `room` too (and no
    /// others: an empty list unlinks it from every node). This node's
    /// shards holding the room link to theirs over the relay, and keep
    /// doing so as shards on either side open or close their part of it.
    /// Fails with [`MediaError::NoRelay`] on a node without a relay.
    pub async fn relay_room(
        &self,
        room: &RoomId,
        peers: Vec<crate::NodePeer>,
    ) -> Result<(), MediaError> {
        let relay = self.relay.as_ref().ok_or(MediaError::NoRelay)?;
        relay.relay_room(room, peers).await;
        Ok(())
    }

    /// The relay endpoint's counters per other node (datagrams, bytes,
    /// losses, round-trip time, congestion window); empty without a relay.
    pub fn relay_stats(&self) -> crate::relay::quic::RelayStats {
        self.relay
            .as_ref()
            .map(|r| r.endpoint.stats())
            .unwrap_or_default()
    }

    /// Holds at most `n` signals for each participant joined through this
    /// handle (and its clones) while it is slow to take them; one that falls
    /// that far behind leaves its room ([`LeaveReason::TooSlow`]).
    pub fn with_signal_queue(mut self, n: usize) -> Self {
        self.signal_queue = n.max(1);
        self
    }

    /// How many shards serve media.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// The shard that answers for `room` (its home), if the room is placed
    /// (with one shard, always the first). A new room goes to the shard with
    /// the fewest participants and stays there while it is open.
    pub fn shard_of_room(&self, room: &RoomId) -> Option<usize> {
        match &self.placement {
            None => Some(0),
            Some(p) => p
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .shard_of(room),
        }
    }

    /// Every shard holding a part of `room`, its home first (a room spreads
    /// over shards past the node's participants per shard, linked by the
    /// relay); empty if it is not placed.
    pub fn shards_of_room(&self, room: &RoomId) -> Vec<usize> {
        match &self.placement {
            None => vec![0],
            Some(p) => p
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .shards_of(room),
        }
    }

    /// The driver of `room`'s shard, placing the room if it is new.
    fn room_tx(&self, room: &RoomId) -> &mpsc::Sender<Command> {
        let k = match &self.placement {
            None => 0,
            Some(p) => p
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .place(Instant::now(), room),
        };
        &self.shards[k.min(self.shards.len() - 1)]
    }

    /// The shard for a new participant of `room` (reserved there until the
    /// driver answers the join).
    /// With it, the shard where the room is open already, when the join
    /// opens it on another (see [`MediaHandle::copy_room_settings`]).
    fn join_shard(&self, room: &RoomId) -> (usize, Option<usize>) {
        let (k, from) = match &self.placement {
            None => (0, None),
            Some(p) => p
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .place_join_from(Instant::now(), room),
        };
        let last = self.shards.len() - 1;
        (k.min(last), from.map(|f| f.min(last)))
    }

    /// A room the server API created with settings of its own (participant
    /// limit, metadata, empty timeout) gets them on a shard it spreads to,
    /// before its first participant there: that core enforces the limit
    /// for its joins. A room without such settings is left to the join.
    async fn copy_room_settings(
        &self,
        room: &RoomId,
        from: usize,
        to: usize,
    ) -> Result<(), MediaError> {
        let info = Self::call(&self.shards[from], |r| {
            Command::Room(room.clone(), RoomCommand::Info(r))
        })
        .await?;
        let Some(info) = info else { return Ok(()) };
        if info.max_participants == 0
            && info.metadata.is_empty()
            && info.empty_timeout_secs.is_none()
        {
            return Ok(());
        }
        let options = RoomOptions {
            max_participants: info.max_participants,
            metadata: info.metadata,
            // Opened ahead of its participant, the part must close by
            // itself should that join fail.
            empty_timeout: Some(Duration::from_secs(
                info.empty_timeout_secs
                    .unwrap_or(SPREAD_PART_EMPTY_TIMEOUT_SECS),
            )),
        };
        Self::call(&self.shards[to], |r| {
            Command::Room(room.clone(), RoomCommand::Create(options, r))
        })
        .await?;
        Ok(())
    }

    /// The driver of the shard that numbered this connection.
    fn connection_tx(&self, p: ConnectionId) -> &mpsc::Sender<Command> {
        &self.shards[id_shard(p.0, self.shards.len())]
    }

    async fn call<T>(
        tx: &mpsc::Sender<Command>,
        f: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, MediaError> {
        let (reply, rx) = oneshot::channel();
        tx.send(f(reply)).await.map_err(|_| MediaError::Stopped)?;
        rx.await.map_err(|_| MediaError::Stopped)?
    }

    /// Puts a participant in a room; its signals arrive on the receiver.
    pub async fn join(&self, req: JoinRequest) -> Result<(Joined, SignalReceiver), MediaError> {
        let (stx, srx) = SignalReceiver::pair(self.signal_queue);
        let (shard, from) = self.join_shard(req.room());
        let room = req.room().clone();
        let copied = match from {
            Some(from) => self.copy_room_settings(&room, from, shard).await,
            None => Ok(()),
        };
        let sent = match copied {
            Ok(()) => {
                Self::call(&self.shards[shard], |r| {
                    Command::Join(Box::new(req), stx, r)
                })
                .await
            }
            Err(e) => Err(e),
        };
        if let (Err(MediaError::Stopped), Some(p)) = (&sent, &self.placement) {
            // Never reached the driver, which would have freed the place.
            p.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .joined(&room, shard, false);
        }
        Ok((sent?, srx))
    }

    /// Moves `from`'s call to a new connection (another device); its signals
    /// arrive on the receiver. See [`vela_media_core::Sfu::handle_handover`].
    pub async fn handover(
        &self,
        from: ConnectionId,
        req: JoinRequest,
    ) -> Result<(Joined, SignalReceiver), MediaError> {
        let (stx, srx) = SignalReceiver::pair(self.signal_queue);
        let tx = self.connection_tx(from);
        let joined = Self::call(tx, |r| Command::Handover(from, Box::new(req), stx, r)).await?;
        Ok((joined, srx))
    }

    /// Hands a client's offer to its connection; returns the answer.
    pub async fn offer(&self, p: ConnectionId, offer: SdpOffer) -> Result<SdpAnswer, MediaError> {
        self.offer_with_sources(p, offer, Vec::new()).await
    }

    /// Like [`MediaHandle::offer`], with what the offer's m-lines carry, by
    /// mid (a screen share, ...; see [`vela_media_core::Sfu::set_track_sources`]).
    pub async fn offer_with_sources(
        &self,
        p: ConnectionId,
        offer: SdpOffer,
        sources: Vec<(String, TrackSource)>,
    ) -> Result<SdpAnswer, MediaError> {
        let sources = sources
            .into_iter()
            .map(|(mid, s)| (Mid::from(mid.as_str()), s))
            .collect();
        Self::call(self.connection_tx(p), |r| {
            Command::Offer(p, Box::new(offer), sources, r)
        })
        .await
    }

    /// Hands a client's answer to the server's offer.
    pub async fn answer(&self, p: ConnectionId, answer: SdpAnswer) -> Result<(), MediaError> {
        Self::call(self.connection_tx(p), |r| {
            Command::Answer(p, Box::new(answer), r)
        })
        .await
    }

    /// Adds a client's trickled ICE candidate.
    pub async fn candidate(&self, p: ConnectionId, candidate: String) -> Result<(), MediaError> {
        Self::call(self.connection_tx(p), |r| {
            Command::Candidate(p, candidate, r)
        })
        .await
    }

    /// Writes a binary message on a connection's open data channel
    /// `label`; false when it has none open (yet) or its buffer is full.
    pub async fn channel_send(
        &self,
        p: ConnectionId,
        label: Arc<str>,
        data: Vec<u8>,
    ) -> Result<bool, MediaError> {
        Self::call(self.connection_tx(p), |r| {
            Command::ChannelSend(p, label, data, r)
        })
        .await
    }

    /// Marks a published track muted or not (by id, or the first of a kind).
    pub async fn mute(
        &self,
        p: ConnectionId,
        track: Option<TrackId>,
        kind: Option<TrackKind>,
        muted: bool,
    ) -> Result<TrackId, MediaError> {
        Self::call(self.connection_tx(p), |r| {
            Command::Mute(p, track, kind, muted, r)
        })
        .await
    }

    /// A subscriber's wishes for a remote track: on or off, and its rendered size.
    pub async fn track_settings(
        &self,
        p: ConnectionId,
        track: TrackId,
        settings: TrackSettings,
    ) -> Result<(), MediaError> {
        Self::call(self.connection_tx(p), |r| {
            Command::TrackSettings(p, track, settings, r)
        })
        .await
    }

    /// Closes a connection (its participant leaves, unless handed over); a
    /// no-op if it is gone already.
    pub async fn leave(&self, p: ConnectionId, reason: LeaveReason) {
        let _ = self.connection_tx(p).send(Command::Leave(p, reason)).await;
    }

    /// The visible participants of a room.
    pub async fn participants(&self, room: RoomId) -> Result<Vec<ParticipantInfo>, MediaError> {
        let (tx, rx) = oneshot::channel();
        self.room_tx(&room)
            .send(Command::Participants(room, tx))
            .await
            .map_err(|_| MediaError::Stopped)?;
        rx.await.map_err(|_| MediaError::Stopped)
    }

    /// Asks a room's shard (placing the room if it is new).
    async fn room_call<T>(
        &self,
        room: &RoomId,
        f: impl FnOnce(Reply<T>) -> RoomCommand,
    ) -> Result<T, MediaError> {
        Self::call(self.room_tx(room), |r| Command::Room(room.clone(), f(r))).await
    }

    /// Opens a room with these options (or changes an open room's).
    pub async fn create_room(
        &self,
        room: &RoomId,
        options: RoomOptions,
    ) -> Result<RoomInfo, MediaError> {
        self.room_call(room, |r| RoomCommand::Create(options, r))
            .await
    }

    /// Closes a room (its part on every shard): everyone in it leaves.
    /// False if there was no such room.
    pub async fn delete_room(&self, room: &RoomId) -> Result<bool, MediaError> {
        let shards = self.shards_of_room(room);
        if shards.len() <= 1 {
            return self.room_call(room, RoomCommand::Delete).await;
        }
        let mut any = false;
        for k in shards {
            let tx = &self.shards[k.min(self.shards.len() - 1)];
            any |= Self::call(tx, |r| Command::Room(room.clone(), RoomCommand::Delete(r))).await?;
        }
        Ok(any)
    }

    /// An open room.
    pub async fn room(&self, room: &RoomId) -> Result<Option<RoomInfo>, MediaError> {
        self.room_call(room, RoomCommand::Info).await
    }

    /// Every open room, of every shard (in no particular order); a room
    /// spread over shards once, as its home shard describes it.
    pub async fn rooms(&self) -> Result<Vec<RoomInfo>, MediaError> {
        let mut all: Vec<RoomInfo> = Vec::new();
        let mut seen: rustc_hash::FxHashMap<RoomId, (usize, bool)> = Default::default();
        for (k, tx) in self.shards.iter().enumerate() {
            let (reply, rx) = oneshot::channel();
            tx.send(Command::Rooms(reply))
                .await
                .map_err(|_| MediaError::Stopped)?;
            for info in rx.await.map_err(|_| MediaError::Stopped)? {
                let home = self.shard_of_room(&info.name) == Some(k);
                match seen.get(&info.name) {
                    None => {
                        seen.insert(info.name.clone(), (all.len(), home));
                        all.push(info);
                    }
                    Some(&(i, false)) if home => {
                        seen.insert(info.name.clone(), (i, true));
                        all[i] = info;
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(all)
    }

    /// The visible participants of a room; fails with
    /// [`SignalError::UnknownRoom`] if there is no such room.
    pub async fn room_participants(
        &self,
        room: &RoomId,
    ) -> Result<Vec<ParticipantInfo>, MediaError> {
        self.room_call(room, RoomCommand::Participants).await
    }

    /// A participant of a room by identity (`None`: not in it); fails with
    /// [`SignalError::UnknownRoom`] if there is no such room.
    pub async fn participant(
        &self,
        room: &RoomId,
        identity: &str,
    ) -> Result<Option<ParticipantInfo>, MediaError> {
        let identity = identity.to_owned();
        self.room_call(room, |r| RoomCommand::Participant(identity, r))
            .await
    }

    /// Removes a participant (every connection of it) from a room.
    pub async fn remove_participant(
        &self,
        room: &RoomId,
        identity: &str,
    ) -> Result<(), MediaError> {
        let identity = identity.to_owned();
        self.room_call(room, |r| RoomCommand::Remove(identity, r))
            .await
    }

    /// Changes what a participant may do, at once; returns it as it is now.
    pub async fn update_permissions(
        &self,
        room: &RoomId,
        identity: &str,
        update: PermissionsUpdate,
    ) -> Result<ParticipantInfo, MediaError> {
        let identity = identity.to_owned();
        self.room_call(room, |r| {
            RoomCommand::UpdatePermissions(identity, update, r)
        })
        .await
    }

    /// Mutes or unmutes a participant's published track for everyone.
    pub async fn mute_track(
        &self,
        room: &RoomId,
        identity: &str,
        track: TrackId,
        muted: bool,
    ) -> Result<TrackInfo, MediaError> {
        let identity = identity.to_owned();
        self.room_call(room, |r| RoomCommand::MuteTrack(identity, track, muted, r))
            .await
    }

    /// Sends a data message from the server to a room (everyone, or the
    /// message's destinations); returns how many connections it went to.
    pub async fn send_data(
        &self,
        room: &RoomId,
        message: DataMessage,
    ) -> Result<usize, MediaError> {
        self.room_call(room, |r| RoomCommand::Data(message, r))
            .await
    }

    /// Sends a data message from a connection's client to the others in its
    /// room; returns how many connections it went to.
    pub async fn send_data_from(
        &self,
        connection: ConnectionId,
        message: DataMessage,
    ) -> Result<usize, MediaError> {
        Self::call(self.connection_tx(connection), |r| {
            Command::DataFrom(connection, message, r)
        })
        .await
    }

    /// Test only: runs `f` on the core of `room`'s shard and returns its
    /// result (the typed calls above are the API).
    #[cfg(feature = "test-hooks")]
    pub async fn with_room<T: Send + 'static>(
        &self,
        room: &RoomId,
        f: impl FnOnce(&mut Sfu, Instant) -> T + Send + 'static,
    ) -> Result<T, MediaError> {
        let (reply, rx) = oneshot::channel();
        let run = move |sfu: &mut Sfu, now: Instant| {
            let _ = reply.send(f(sfu, now));
        };
        self.room_tx(room)
            .send(Command::With(Box::new(run)))
            .await
            .map_err(|_| MediaError::Stopped)?;
        rx.await.map_err(|_| MediaError::Stopped)
    }

    /// The cores' counters, added up over the shards.
    pub async fn stats(&self) -> Result<SfuStats, MediaError> {
        let mut total = SfuStats::default();
        for s in self.shard_stats().await? {
            total += s;
        }
        Ok(total)
    }

    /// Each core's counters, by shard.
    pub async fn shard_stats(&self) -> Result<Vec<SfuStats>, MediaError> {
        let mut all = Vec::with_capacity(self.shards.len());
        for tx in self.shards.iter() {
            let (reply, rx) = oneshot::channel();
            tx.send(Command::Stats(reply))
                .await
                .map_err(|_| MediaError::Stopped)?;
            all.push(rx.await.map_err(|_| MediaError::Stopped)?);
        }
        Ok(all)
    }

    /// The counters of each shard's links to the node's other shards, by
    /// shard (all zero with one shard).
    pub async fn local_link_stats(&self) -> Result<Vec<crate::relay::LocalLinkStats>, MediaError> {
        let mut all = Vec::with_capacity(self.shards.len());
        for tx in self.shards.iter() {
            let (reply, rx) = oneshot::channel();
            tx.send(Command::LocalLinkStats(reply))
                .await
                .map_err(|_| MediaError::Stopped)?;
            all.push(rx.await.map_err(|_| MediaError::Stopped)?);
        }
        Ok(all)
    }

    /// Every core's relay links, each with the core behind it and the
    /// core's counters (for `/metrics`: layers carried each way, packets,
    /// NACKs; a node link of the endpoint carries all of its shards' links
    /// to that node).
    pub async fn core_link_stats(&self) -> Result<Vec<crate::relay::CoreLinkStats>, MediaError> {
        let mut all = Vec::new();
        for tx in self.shards.iter() {
            let (reply, rx) = oneshot::channel();
            tx.send(Command::CoreLinkStats(reply))
                .await
                .map_err(|_| MediaError::Stopped)?;
            all.extend(rx.await.map_err(|_| MediaError::Stopped)?);
        }
        Ok(all)
    }

    /// Closes every peer, sends their goodbyes, stops the drivers and
    /// closes the relay to other nodes.
    pub async fn shutdown(&self) {
        let waits = self.shards.iter().map(|tx| async move {
            let (reply, rx) = oneshot::channel();
            if tx.send(Command::Shutdown(reply)).await.is_ok() {
                let _ = rx.await;
            }
        });
        futures_util::future::join_all(waits).await;
        // The cores said their goodbyes over the links; the other nodes
        // see the links close now rather than after the idle timeout.
        if let Some(r) = &self.relay {
            r.endpoint.shutdown(Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    fn handle(shards: usize) -> (MediaHandle, Vec<mpsc::Receiver<Command>>) {
        let (txs, rxs) = (0..shards).map(|_| mpsc::channel(8)).unzip();
        (MediaHandle::new(txs, None), rxs)
    }

    #[tokio::test]
    async fn a_new_room_goes_to_a_shard_without_rooms_and_stays_there() {
        let (txs, mut rxs): (Vec<_>, Vec<_>) = (0..2).map(|_| mpsc::channel(8)).unzip();
        let h = MediaHandle::new(txs, Some(Arc::new(Mutex::new(Placement::new(2, 0)))));
        let (a, b) = (RoomId::new("a").unwrap(), RoomId::new("b").unwrap());
        assert_eq!(h.shard_of_room(&a), None);
        for room in [&a, &b, &a] {
            let _ = h.participants(room.clone()).now_or_never();
        }
        assert_eq!(
            (h.shard_of_room(&a), h.shard_of_room(&b)),
            (Some(0), Some(1))
        );
        let asked = |rx: &mut mpsc::Receiver<Command>| {
            std::iter::from_fn(|| match rx.try_recv() {
                Ok(Command::Participants(r, _)) => Some(r),
                _ => None,
            })
            .collect::<Vec<_>>()
        };
        assert_eq!(asked(&mut rxs[0]), [a.clone(), a]);
        assert_eq!(asked(&mut rxs[1]), [b]);
    }

    #[tokio::test]
    async fn a_connection_is_asked_on_the_shard_that_numbered_it() {
        let (h, mut rxs) = handle(3);
        // Shard k numbers k+1, k+4, ...: PA5 is shard 1's.
        h.leave(ConnectionId(5), LeaveReason::ClientLeave).await;
        assert!(matches!(rxs[1].try_recv(), Ok(Command::Leave(p, _)) if p == ConnectionId(5)));
        assert!(rxs[0].try_recv().is_err() && rxs[2].try_recv().is_err());
    }

    #[tokio::test]
    async fn a_data_message_from_a_connection_goes_to_its_shard() {
        let (h, mut rxs) = handle(3);
        let message = DataMessage {
            payload: vec![1u8].into(),
            topic: None,
            destinations: Vec::new(),
        };
        // Unanswered (no driver here): only where it was sent matters.
        let _ = h.send_data_from(ConnectionId(6), message).now_or_never();
        assert!(
            matches!(rxs[2].try_recv(), Ok(Command::DataFrom(p, m, _)) if p == ConnectionId(6) && *m.payload == [1])
        );
        assert!(rxs[0].try_recv().is_err() && rxs[1].try_recv().is_err());
    }

    #[tokio::test]
    async fn a_room_command_goes_to_the_rooms_shard_and_a_listing_to_all() {
        let (txs, mut rxs): (Vec<_>, Vec<_>) = (0..2).map(|_| mpsc::channel(8)).unzip();
        let h = MediaHandle::new(txs, Some(Arc::new(Mutex::new(Placement::new(2, 0)))));
        let (a, b) = (RoomId::new("a").unwrap(), RoomId::new("b").unwrap());
        let _ = h.room(&a).now_or_never();
        let _ = h.delete_room(&b).now_or_never();
        assert!(matches!(rxs[0].try_recv(), Ok(Command::Room(r, RoomCommand::Info(_))) if r == a));
        assert!(
            matches!(rxs[1].try_recv(), Ok(Command::Room(r, RoomCommand::Delete(_))) if r == b)
        );
        // The listing asks shard after shard: the first, unanswered here, holds it.
        let _ = h.rooms().now_or_never();
        assert!(matches!(rxs[0].try_recv(), Ok(Command::Rooms(_))));
    }

    #[test]
    fn a_permissions_update_keeps_what_it_leaves_out() {
        let current = Permissions {
            publish: true,
            subscribe: false,
            publish_data: true,
        };
        let update = PermissionsUpdate {
            subscribe: Some(true),
            publish_data: Some(false),
            ..PermissionsUpdate::default()
        };
        let new = update.apply(current);
        assert_eq!(
            (new.publish, new.subscribe, new.publish_data),
            (true, true, false)
        );
    }

    #[tokio::test]
    async fn without_a_driver_every_call_fails_as_stopped() {
        let h = MediaHandle::new(Vec::new(), None);
        assert!(matches!(h.stats().await, Err(MediaError::Stopped)));
        let room = RoomId::new("r").unwrap();
        assert!(matches!(
            h.participants(room).await,
            Err(MediaError::Stopped)
        ));
    }
}
