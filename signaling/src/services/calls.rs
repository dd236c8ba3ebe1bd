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

/// Where the calls task sends an operation's answer.
type Reply<T> = oneshot::Sender<T>;

/// An operation for the calls task, with where its answer goes.
#[derive(Debug)]
enum Command {
    Invite {
        caller: Person,
        device: DeviceId,
        invitees: Vec<Invitee>,
        video: bool,
        reply: Reply<Result<Call, CallError>>,
    },
    Add {
        id: CallId,
        by: AccountId,
        invitees: Vec<Invitee>,
        reply: Reply<Result<Call, CallError>>,
    },
    Accept {
        id: CallId,
        account: AccountId,
        device: DeviceId,
        client: Option<String>,
        reply: Reply<Result<Call, CallError>>,
    },
    Decline {
        id: CallId,
        account: AccountId,
        reply: Reply<Result<Call, CallError>>,
    },
    Cancel {
        id: CallId,
        account: AccountId,
        reply: Reply<Result<Call, CallError>>,
    },
    Leave {
        id: CallId,
        account: AccountId,
        reply: Reply<Result<Call, CallError>>,
    },
    Message {
        id: CallId,
        account: AccountId,
        device: DeviceId,
        text: String,
        reply: Reply<Result<ChatMessage, CallError>>,
    },
    Get {
        id: CallId,
        account: AccountId,
        reply: Reply<Option<(Call, Vec<ChatMessage>)>>,
    },
    Active {
        account: AccountId,
        reply: Reply<Vec<Call>>,
    },
    AuthorizeJoin {
        room: String,
        account: AccountId,
        device: DeviceId,
        take_over: Option<ConnectionId>,
        reply: Reply<Result<Option<ConnectionId>, CallError>>,
    },
    RoomJoined {
        room: String,
        account: AccountId,
        device: DeviceId,
        connection: ConnectionId,
        public: ParticipantId,
    },
    RoomLeft {
        connection: ConnectionId,
    },
}

/// An answer held until the command's outputs are carried out.
struct Answer(Option<Box<dyn FnOnce() + Send>>);

impl Answer {
    fn to<T: Send + 'static>(reply: Reply<T>, value: T) -> Self {
        Answer(Some(Box::new(move || {
            let _ = reply.send(value);
        })))
    }

    fn none() -> Self {
        Answer(None)
    }

    fn send(self) {
        if let Some(f) = self.0 {
            f();
        }
    }
}

impl Command {
    /// Runs the command on the state machine; the answer to send once its
    /// outputs are carried out.
    fn apply(self, calls: &mut Calls, now: i64) -> Answer {
        match self {
            Command::Invite {
                caller,
                device,
                invitees,
                video,
                reply,
            } => Answer::to(
                reply,
                calls.handle_invite(now, caller, device, invitees, video),
            ),
            Command::Add {
                id,
                by,
                invitees,
                reply,
            } => Answer::to(reply, calls.handle_add(now, id, by, invitees)),
            Command::Accept {
                id,
                account,
                device,
                client,
                reply,
            } => Answer::to(reply, calls.handle_accept(now, id, account, device, client)),
            Command::Decline { id, account, reply } => {
                Answer::to(reply, calls.handle_decline(now, id, account))
            }
            Command::Cancel { id, account, reply } => {
                Answer::to(reply, calls.handle_cancel(now, id, account))
            }
            Command::Leave { id, account, reply } => {
                Answer::to(reply, calls.handle_leave(now, id, account))
            }
            Command::Message {
                id,
                account,
                device,
                text,
                reply,
            } => Answer::to(reply, calls.handle_message(now, id, account, device, text)),
            Command::Get { id, account, reply } => {
                let found = calls
                    .call(id, account)
                    .map(|call| (call.clone(), call.messages().cloned().collect()));
                Answer::to(reply, found)
            }
            Command::Active { account, reply } => Answer::to(
                reply,
                calls.active_for(account).into_iter().cloned().collect(),
            ),
            Command::AuthorizeJoin {
                room,
                account,
                device,
                take_over,
                reply,
            } => Answer::to(
                reply,
                calls.authorize_join(&room, account, device, take_over),
            ),
            Command::RoomJoined {
                room,
                account,
                device,
                connection,
                public,
            } => {
                calls.handle_room_joined(&room, account, device, connection, public);
                Answer::none()
            }
            Command::RoomLeft { connection } => {
                calls.handle_room_left(now, connection);
                Answer::none()
            }
        }
    }
}

/// Sends operations to the calls task; cheap to clone.
#[derive(Debug, Clone)]
pub struct CallsHandle {
    tx: mpsc::UnboundedSender<Command>,
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

    /// Sends the command `make` builds around a reply, and waits for the answer.
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, CallsError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .map_err(|_| CallsError::ShuttingDown)?;
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
            .ask(|reply| Command::Invite {
                caller,
                device,
                invitees,
                video,
                reply,
            })
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
            .ask(|reply| Command::Add {
                id,
                by,
                invitees,
                reply,
            })
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
            .ask(|reply| Command::Accept {
                id,
                account,
                device,
                client,
                reply,
            })
            .await??)
    }

    /// Declines.
    pub async fn decline(&self, id: CallId, account: AccountId) -> Result<Call, CallsError> {
        Ok(self
            .ask(|reply| Command::Decline { id, account, reply })
            .await??)
    }

    /// The caller cancels before an answer.
    pub async fn cancel(&self, id: CallId, account: AccountId) -> Result<Call, CallsError> {
        Ok(self
            .ask(|reply| Command::Cancel { id, account, reply })
            .await??)
    }

    /// Hangs up.
    pub async fn leave(&self, id: CallId, account: AccountId) -> Result<Call, CallsError> {
        Ok(self
            .ask(|reply| Command::Leave { id, account, reply })
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
            .ask(|reply| Command::Message {
                id,
                account,
                device,
                text,
                reply,
            })
            .await??)
    }

    /// A call as `account` sees it, with its chat.
    pub async fn call(
        &self,
        id: CallId,
        account: AccountId,
    ) -> Result<(Call, Vec<ChatMessage>), CallsError> {
        self.ask(|reply| Command::Get { id, account, reply })
            .await?
            .ok_or_else(|| CallError::NotFound.into())
    }

    /// The calls `account` is ringing for or in.
    pub async fn active(&self, account: AccountId) -> Result<Vec<Call>, CallsError> {
        self.ask(|reply| Command::Active { account, reply }).await
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
            .ask(|reply| Command::AuthorizeJoin {
                room,
                account,
                device,
                take_over,
                reply,
            })
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
        let _ = self.tx.send(Command::RoomJoined {
            room,
            account,
            device,
            connection,
            public,
        });
        Some(CallRoomGuard {
            tx: self.tx.clone(),
            connection,
        })
    }
}

/// Tells the calls task that a room session ended, when dropped.
#[derive(Debug)]
pub struct CallRoomGuard {
    tx: mpsc::UnboundedSender<Command>,
    connection: ConnectionId,
}

impl Drop for CallRoomGuard {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::RoomLeft {
            connection: self.connection,
        });
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
    mut rx: mpsc::UnboundedReceiver<Command>,
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
            command = rx.recv() => {
                let Some(command) = command else { break };
                let answer = command.apply(&mut calls, now_ms());
                carry_out(&mut calls, &out).await;
                answer.send();
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
