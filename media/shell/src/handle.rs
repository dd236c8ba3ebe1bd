//! The control channel: what signaling asks of the media driver.

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use vela_media_core::{
    JoinError, JoinRequest, Joined, LeaveReason, ParticipantId, ParticipantInfo, RoomId, SdpAnswer,
    SdpOffer, Sfu, SfuStats, Signal, SignalError, TrackId, TrackKind, TrackSettings,
};

/// The signals for one participant, in order; ends after [`Signal::Left`].
pub type SignalReceiver = mpsc::UnboundedReceiver<Signal>;

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
}

/// Work run on the core by the driver task.
pub(crate) type CoreJob = Box<dyn FnOnce(&mut Sfu, Instant) + Send>;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, MediaError>>;

/// Requests to the driver task.
pub(crate) enum Command {
    Join(
        Box<JoinRequest>,
        mpsc::UnboundedSender<Signal>,
        Reply<Joined>,
    ),
    Handover(
        ParticipantId,
        Box<JoinRequest>,
        mpsc::UnboundedSender<Signal>,
        Reply<Joined>,
    ),
    Offer(ParticipantId, Box<SdpOffer>, Reply<SdpAnswer>),
    Answer(ParticipantId, Box<SdpAnswer>, Reply<()>),
    Candidate(ParticipantId, String, Reply<()>),
    Mute(
        ParticipantId,
        Option<TrackId>,
        Option<TrackKind>,
        bool,
        Reply<TrackId>,
    ),
    TrackSettings(ParticipantId, TrackId, TrackSettings, Reply<()>),
    Leave(ParticipantId, LeaveReason),
    Participants(RoomId, oneshot::Sender<Vec<ParticipantInfo>>),
    /// Runs a closure on the core (the server API's operations).
    With(CoreJob),
    Stats(oneshot::Sender<SfuStats>),
    Shutdown(oneshot::Sender<()>),
}

/// A cheap, cloneable handle to the media driver.
#[derive(Debug, Clone)]
pub struct MediaHandle {
    tx: mpsc::Sender<Command>,
}

impl MediaHandle {
    pub(crate) fn new(tx: mpsc::Sender<Command>) -> Self {
        MediaHandle { tx }
    }

    async fn call<T>(&self, f: impl FnOnce(Reply<T>) -> Command) -> Result<T, MediaError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(f(tx)).await.map_err(|_| MediaError::Stopped)?;
        rx.await.map_err(|_| MediaError::Stopped)?
    }

    /// Puts a participant in a room; its signals arrive on the receiver.
    pub async fn join(&self, req: JoinRequest) -> Result<(Joined, SignalReceiver), MediaError> {
        let (stx, srx) = mpsc::unbounded_channel();
        let joined = self.call(|r| Command::Join(Box::new(req), stx, r)).await?;
        Ok((joined, srx))
    }

    /// Moves `from`'s call to a new connection (another device); its signals
    /// arrive on the receiver. See [`vela_media_core::Sfu::handle_handover`].
    pub async fn handover(
        &self,
        from: ParticipantId,
        req: JoinRequest,
    ) -> Result<(Joined, SignalReceiver), MediaError> {
        let (stx, srx) = mpsc::unbounded_channel();
        let joined = self
            .call(|r| Command::Handover(from, Box::new(req), stx, r))
            .await?;
        Ok((joined, srx))
    }

    /// Hands a client's offer to its connection; returns the answer.
    pub async fn offer(&self, p: ParticipantId, offer: SdpOffer) -> Result<SdpAnswer, MediaError> {
        self.call(|r| Command::Offer(p, Box::new(offer), r)).await
    }

    /// Hands a client's answer to the server's offer.
    pub async fn answer(&self, p: ParticipantId, answer: SdpAnswer) -> Result<(), MediaError> {
        self.call(|r| Command::Answer(p, Box::new(answer), r)).await
    }

    /// Adds a client's trickled ICE candidate.
    pub async fn candidate(&self, p: ParticipantId, candidate: String) -> Result<(), MediaError> {
        self.call(|r| Command::Candidate(p, candidate, r)).await
    }

    /// Marks a published track muted or not (by id, or the first of a kind).
    pub async fn mute(
        &self,
        p: ParticipantId,
        track: Option<TrackId>,
        kind: Option<TrackKind>,
        muted: bool,
    ) -> Result<TrackId, MediaError> {
        self.call(|r| Command::Mute(p, track, kind, muted, r)).await
    }

    /// A subscriber's wishes for a remote track: on or off, and its rendered size.
    pub async fn track_settings(
        &self,
        p: ParticipantId,
        track: TrackId,
        settings: TrackSettings,
    ) -> Result<(), MediaError> {
        self.call(|r| Command::TrackSettings(p, track, settings, r))
            .await
    }

    /// Removes a participant; a no-op if it is gone already.
    pub async fn leave(&self, p: ParticipantId, reason: LeaveReason) {
        let _ = self.tx.send(Command::Leave(p, reason)).await;
    }

    /// The visible participants of a room.
    pub async fn participants(&self, room: RoomId) -> Result<Vec<ParticipantInfo>, MediaError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Participants(room, tx))
            .await
            .map_err(|_| MediaError::Stopped)?;
        rx.await.map_err(|_| MediaError::Stopped)
    }

    /// Runs `f` on the core, on the driver task, and returns its result; the
    /// core's outputs are carried out afterwards. For the server API's
    /// operations (`Sfu::handle_create_room` and the like): keep `f` short,
    /// media waits while it runs.
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Sfu, Instant) -> T + Send + 'static,
    ) -> Result<T, MediaError> {
        let (tx, rx) = oneshot::channel();
        let run = move |sfu: &mut Sfu, now: Instant| {
            let _ = tx.send(f(sfu, now));
        };
        self.tx
            .send(Command::With(Box::new(run)))
            .await
            .map_err(|_| MediaError::Stopped)?;
        rx.await.map_err(|_| MediaError::Stopped)
    }

    /// The core's counters.
    pub async fn stats(&self) -> Result<SfuStats, MediaError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Stats(tx))
            .await
            .map_err(|_| MediaError::Stopped)?;
        rx.await.map_err(|_| MediaError::Stopped)
    }

    /// Closes every peer, sends their goodbyes and stops the driver.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}
