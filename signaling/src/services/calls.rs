//! The calls task: owns the [`Calls`] state machine, runs its ring timers on
//! the wall clock, pushes its events to devices through the hub, stores
//! history entries, and removes room connections it asks to.
//!
//! Calls live in memory, but what each would leave in the history is kept
//! in the store as it changes, so after a crash the next start records the
//! calls it interrupted, ended at the server's last heartbeat, as a
//! shutdown would have.
//!
//! Every operation goes through this one task, in arrival order, and its
//! outputs (pushes, history) are carried out before the caller gets its
//! answer: two accepts at the same instant, or a cancel against an accept,
//! resolve one way, the same for every device.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use vela_media::MediaHandle;
use vela_media::core::{ConnectionId, LeaveReason, ParticipantId};

use crate::domain::call::is_call_room;
use crate::domain::call::state::{
    Call, CallError, Calls, ChatMessage, Invitee, Notice, Output, Person,
};
use crate::domain::ids::{AccountId, CallId, DeviceId, now_ms};
use crate::services::hub::Hub;
use crate::services::push::Push;
use crate::services::store::Store;

/// Work for the task: runs on the state machine, returns what answers the caller.
type Job = Box<dyn FnOnce(&mut Calls, i64) -> Box<dyn FnOnce() + Send> + Send>;

/// Sends operations to the calls task; cheap to clone.
#[derive(Debug, Clone)]
pub struct CallsHandle {
    tx: mpsc::UnboundedSender<Job>,
}

/// Why the calls service did not carry out an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallsError {
    /// The state machine refused it.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The calls task has stopped: the server is shutting down (503).
    #[error("shutting down")]
    ShuttingDown,
}

impl CallsHandle {
    /// Starts the calls task. It stops when `shutdown` turns true, after
    /// ending every call still going on (so each leaves its history).
    pub async fn spawn(
        config: &vela_config::CallsConfig,
        store: Store,
        hub: Hub,
        media: MediaHandle,
        webhooks: crate::services::webhook::WebhookHandle,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(CallsHandle, JoinHandle<()>), crate::services::store::StoreError> {
        let recovered = store.recover_open_calls(now_ms()).await?;
        if !recovered.is_empty() {
            tracing::warn!(
                calls = recovered.len(),
                entries = recovered.iter().map(|c| c.stored.len()).sum::<usize>(),
                "recorded calls that a crash interrupted"
            );
        }
        for c in recovered {
            // Integrations learn that these calls are over.
            webhooks.call(Notice::Ended {
                call: Box::new(crate::domain::call::state::interrupted(c.call, c.ended_at)),
            });
        }
        let first = store.next_call_id().await?;
        let calls = Calls::new(
            first,
            Duration::from_millis(config.ring_timeout_ms),
            Duration::from_millis(config.join_timeout_ms),
            config.max_participants as usize,
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let out = Outlets {
            store,
            hub,
            media,
            webhooks,
        };
        let task = tokio::spawn(run(calls, rx, out, shutdown));
        Ok((CallsHandle { tx }, task))
    }

    async fn ask<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Calls, i64) -> T + Send + 'static,
    ) -> Result<T, CallsError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |calls, now| {
            let value = f(calls, now);
            Box::new(move || {
                let _ = tx.send(value);
            })
        });
        self.tx.send(job).map_err(|_| CallsError::ShuttingDown)?;
        rx.await.map_err(|_| CallsError::ShuttingDown)
    }

    /// Places a call.
    pub async fn invite(
        &self,
        caller: Person,
        device: DeviceId,
        invitees: Vec<Invitee>,
        video: bool,
    ) -> Result<Call, CallsError> {
        Ok(self
            .ask(move |c, now| c.handle_invite(now, caller, device, invitees, video))
            .await??)
    }

    /// Adds people to a running call.
    pub async fn add(
        &self,
        id: CallId,
        by: AccountId,
        invitees: Vec<Invitee>,
    ) -> Result<Call, CallsError> {
        Ok(self
            .ask(move |c, now| c.handle_add(now, id, by, invitees))
            .await??)
    }

    /// Accepts on a device (first wins).
    pub async fn accept(
        &self,
        id: CallId,
        account: AccountId,
        device: DeviceId,
        client: Option<String>,
    ) -> Result<Call, CallsError> {
        Ok(self
            .ask(move |c, now| c.handle_accept(now, id, account, device, client))
            .await??)
    }

    /// Declines.
    pub async fn decline(&self, id: CallId, account: AccountId) -> Result<Call, CallsError> {
        Ok(self
            .ask(move |c, now| c.handle_decline(now, id, account))
            .await??)
    }

    /// The caller cancels before an answer.
    pub async fn cancel(&self, id: CallId, account: AccountId) -> Result<Call, CallsError> {
        Ok(self
            .ask(move |c, now| c.handle_cancel(now, id, account))
            .await??)
    }

    /// Hangs up.
    pub async fn leave(&self, id: CallId, account: AccountId) -> Result<Call, CallsError> {
        Ok(self
            .ask(move |c, now| c.handle_leave(now, id, account))
            .await??)
    }

    /// Sends a chat message to everyone in the call.
    pub async fn message(
        &self,
        id: CallId,
        account: AccountId,
        device: DeviceId,
        text: String,
    ) -> Result<ChatMessage, CallsError> {
        Ok(self
            .ask(move |c, now| c.handle_message(now, id, account, device, text))
            .await??)
    }

    /// A call as `account` sees it, with its chat.
    pub async fn call(
        &self,
        id: CallId,
        account: AccountId,
    ) -> Result<(Call, Vec<ChatMessage>), CallsError> {
        self.ask(move |c, _| {
            c.call(id, account)
                .map(|call| (call.clone(), call.messages().cloned().collect()))
        })
        .await?
        .ok_or_else(|| CallError::NotFound.into())
    }

    /// The calls `account` is ringing for or in.
    pub async fn active(&self, account: AccountId) -> Result<Vec<Call>, CallsError> {
        self.ask(move |c, _| c.active_for(account).into_iter().cloned().collect())
            .await
    }

    /// Checks a join of `room` (a call room) and resolves `take_over` to
    /// the connection to hand over from.
    pub async fn authorize_join(
        &self,
        room: String,
        account: AccountId,
        device: DeviceId,
        take_over: Option<ConnectionId>,
    ) -> Result<Option<ConnectionId>, CallsError> {
        Ok(self
            .ask(move |c, _| c.authorize_join(&room, account, device, take_over))
            .await??)
    }

    /// Tracks a room session of a signed-in device; the call (if the room is
    /// one) learns its participant id now and its end when the guard drops.
    pub fn track_session(
        &self,
        room: &str,
        account: Option<(AccountId, DeviceId)>,
        connection: ConnectionId,
        public: ParticipantId,
    ) -> Option<CallRoomGuard> {
        let (account, device) = account?;
        if !is_call_room(room) {
            return None;
        }
        let room = room.to_owned();
        let job: Job = Box::new(move |c, _| {
            c.handle_room_joined(&room, account, device, connection, public);
            Box::new(|| {})
        });
        let _ = self.tx.send(job);
        Some(CallRoomGuard {
            tx: self.tx.clone(),
            connection,
        })
    }
}

/// Tells the calls task that a room session ended, when dropped.
#[derive(Debug)]
pub struct CallRoomGuard {
    tx: mpsc::UnboundedSender<Job>,
    connection: ConnectionId,
}

impl Drop for CallRoomGuard {
    fn drop(&mut self) {
        let connection = self.connection;
        let job: Job = Box::new(move |c, now| {
            c.handle_room_left(now, connection);
            Box::new(|| {})
        });
        let _ = self.tx.send(job);
    }
}

/// Where the state machine's outputs go.
struct Outlets {
    store: Store,
    hub: Hub,
    media: MediaHandle,
    webhooks: crate::services::webhook::WebhookHandle,
}

async fn run(
    mut calls: Calls,
    mut rx: mpsc::UnboundedReceiver<Job>,
    out: Outlets,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let deadline = calls.poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => {
                    let wait = u64::try_from(d.saturating_sub(now_ms())).unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            job = rx.recv() => {
                let Some(job) = job else { break };
                let reply = job(&mut calls, now_ms());
                carry_out(&mut calls, &out).await;
                reply();
            }
            _ = sleep => {
                calls.handle_timeout(now_ms());
                carry_out(&mut calls, &out).await;
            }
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        }
    }
    calls.handle_shutdown(now_ms());
    carry_out(&mut calls, &out).await;
}

/// Does what the state machine asked: pushes, history entries, removals.
async fn carry_out(calls: &mut Calls, outlets: &Outlets) {
    let Outlets {
        store,
        hub,
        media,
        webhooks,
    } = outlets;
    while let Some(out) = calls.poll_output() {
        match out {
            Output::Push(account, event) => hub.push(account, &Push::Call(event)),
            Output::Record(record) => {
                let account = record.account_id;
                match store.add_call_record(&record).await {
                    Ok(stored) => {
                        let unseen = stored.unseen;
                        hub.push(
                            account,
                            &Push::CallHistory {
                                record: Box::new(stored),
                            },
                        );
                        if unseen {
                            push_missed(store, hub, account).await;
                        }
                    }
                    Err(e) => tracing::error!(%account, error = %e, "cannot store a call record"),
                }
            }
            Output::Kick(connection) => media.leave(connection, LeaveReason::Removed).await,
            Output::Notice(n) => webhooks.call(n),
            Output::Journal(id, open) => {
                let kept = match open {
                    Some(open) => store.put_open_call(id, &open, now_ms()).await,
                    None => store.remove_open_call(id).await,
                };
                if let Err(e) = kept {
                    tracing::error!(call = %id, error = %e, "cannot keep an open call");
                }
            }
        }
    }
}

/// Pushes the account's count of unseen missed calls to all its devices.
pub(crate) async fn push_missed(store: &Store, hub: &Hub, account: AccountId) {
    match store.missed_count(account).await {
        Ok(count) => hub.push(account, &Push::MissedCalls { count }),
        Err(e) => tracing::error!(%account, error = %e, "cannot count missed calls"),
    }
}
