//! The calls task: owns the [`Calls`] state machine, runs its ring timers on
//! the wall clock, pushes its events to devices through the hub, stores
//! history entries, and removes room connections it asks to.
//!
//! Calls live in memory, but what each would leave in the history is kept
//! in the store as it changes (its journal), so after a crash the next
//! start records the calls it interrupted, ended at the server's last
//! heartbeat, as a shutdown would have.
//!
//! Every operation goes through this one task, in arrival order, and its
//! outputs (pushes, history) are carried out before the caller gets its
//! answer: two accepts at the same instant, or a cancel against an accept,
//! resolve one way, the same for every device.
//!
//! In a cluster the task runs on one node at a time, which the others
//! forward to over Redis (`Op` and `Answer` are what travels; see
//! `calls/cluster.rs`): the same rule holds for every device of every node, and
//! a node that takes the calls over restores them from their journals
//! instead of ending them.

use std::time::Duration;

use serde::{Deserialize, Serialize};
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

mod cluster;

pub use cluster::ClusterCalls;

/// An operation on calls, as it travels: to this node's calls task, or
/// (in a cluster) over Redis to the node that owns the calls.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Op {
    Invite {
        caller: Person,
        device: DeviceId,
        invitees: Vec<Invitee>,
        video: bool,
    },
    Add {
        id: CallId,
        by: AccountId,
        invitees: Vec<Invitee>,
    },
    Accept {
        id: CallId,
        account: AccountId,
        device: DeviceId,
        client: Option<String>,
    },
    Decline {
        id: CallId,
        account: AccountId,
    },
    Cancel {
        id: CallId,
        account: AccountId,
    },
    Leave {
        id: CallId,
        account: AccountId,
    },
    Message {
        id: CallId,
        account: AccountId,
        device: DeviceId,
        text: String,
    },
    Get {
        id: CallId,
        account: AccountId,
    },
    Active {
        account: AccountId,
    },
    AuthorizeJoin {
        room: String,
        account: AccountId,
        device: DeviceId,
        take_over: Option<ConnectionId>,
    },
    RoomJoined {
        room: String,
        account: AccountId,
        device: DeviceId,
        connection: ConnectionId,
        public: ParticipantId,
    },
    RoomLeft {
        room: String,
        account: AccountId,
        connection: ConnectionId,
    },
    /// The node serving the room is gone, the session with it.
    RoomLost {
        room: String,
        account: AccountId,
        connection: ConnectionId,
    },
}

/// Why the state machine refused an operation, as it travels (a
/// [`CallError`]'s message is `&'static str`, which cannot be read back).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum Refusal {
    /// No such call for this account (404).
    #[error("no such call")]
    NotFound,
    /// Not possible in the call's current state (409).
    #[error("{0}")]
    Conflict(String),
    /// Not allowed for this account or device (403).
    #[error("{0}")]
    Forbidden(String),
    /// Bad input (400).
    #[error("{0}")]
    Invalid(String),
}

impl From<CallError> for Refusal {
    fn from(e: CallError) -> Refusal {
        match e {
            CallError::NotFound => Refusal::NotFound,
            CallError::Conflict(m) => Refusal::Conflict(m.into()),
            CallError::Forbidden(m) => Refusal::Forbidden(m.into()),
            CallError::Invalid(m) => Refusal::Invalid(m.into()),
            // A kind added later: refused as a conflict, its text kept.
            #[allow(unreachable_patterns)]
            e => Refusal::Conflict(e.to_string()),
        }
    }
}

/// An operation's answer, as it travels.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "answer", content = "value", rename_all = "snake_case")]
pub(crate) enum Answer {
    Call(Result<Call, Refusal>),
    Message(Result<ChatMessage, Refusal>),
    Found(Option<(Call, Vec<ChatMessage>)>),
    Active(Vec<Call>),
    Join(Result<Option<ConnectionId>, Refusal>),
    Done,
}

impl Op {
    /// Runs the operation on the state machine; its answer is sent once
    /// its outputs are carried out.
    fn apply(self, calls: &mut Calls, now: i64) -> Answer {
        let call = |r: Result<Call, CallError>| Answer::Call(r.map_err(Refusal::from));
        match self {
            Op::Invite {
                caller,
                device,
                invitees,
                video,
            } => call(calls.handle_invite(now, caller, device, invitees, video)),
            Op::Add { id, by, invitees } => call(calls.handle_add(now, id, by, invitees)),
            Op::Accept {
                id,
                account,
                device,
                client,
            } => call(calls.handle_accept(now, id, account, device, client)),
            Op::Decline { id, account } => call(calls.handle_decline(now, id, account)),
            Op::Cancel { id, account } => call(calls.handle_cancel(now, id, account)),
            Op::Leave { id, account } => call(calls.handle_leave(now, id, account)),
            Op::Message {
                id,
                account,
                device,
                text,
            } => Answer::Message(
                calls
                    .handle_message(now, id, account, device, text)
                    .map_err(Refusal::from),
            ),
            Op::Get { id, account } => Answer::Found(
                calls
                    .call(id, account)
                    .map(|call| (call.clone(), call.messages().cloned().collect())),
            ),
            Op::Active { account } => {
                Answer::Active(calls.active_for(account).into_iter().cloned().collect())
            }
            Op::AuthorizeJoin {
                room,
                account,
                device,
                take_over,
            } => Answer::Join(
                calls
                    .authorize_join(&room, account, device, take_over)
                    .map_err(Refusal::from),
            ),
            Op::RoomJoined {
                room,
                account,
                device,
                connection,
                public,
            } => {
                calls.handle_room_joined(&room, account, device, connection, public);
                Answer::Done
            }
            Op::RoomLeft {
                room,
                account,
                connection,
            } => {
                calls.handle_room_left_in(now, &room, account, connection);
                Answer::Done
            }
            Op::RoomLost {
                room,
                account,
                connection,
            } => {
                calls.handle_room_lost(now, &room, account, connection);
                Answer::Done
            }
        }
    }
}

/// An operation for the calls task, with where its answer goes (`None`:
/// nobody waits).
type Job = (Op, Option<oneshot::Sender<Answer>>);

/// Sends operations to the calls: this node's task, or (in a cluster) the
/// node that owns them. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CallsHandle {
    route: Route,
}

#[derive(Debug, Clone)]
enum Route {
    Local(mpsc::UnboundedSender<Job>),
    Cluster(std::sync::Arc<ClusterCalls>),
}

/// Why the calls service did not carry out an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallsError {
    /// The state machine refused it.
    #[error(transparent)]
    Call(#[from] Refusal),
    /// The calls task has stopped: the server is shutting down (503).
    #[error("shutting down")]
    ShuttingDown,
    /// In a cluster: no node owns the calls now, or the owner did not
    /// answer in time (503 with `Retry-After`). The operation may have
    /// been carried out if the owner answered too late.
    #[error("calls are unavailable: {why}")]
    Unavailable {
        /// What went wrong.
        why: &'static str,
        /// When to try again, in seconds.
        retry_after_secs: u64,
    },
}

impl From<CallError> for CallsError {
    fn from(e: CallError) -> CallsError {
        CallsError::Call(e.into())
    }
}

/// The answer was not of the operation's kind (a node of another version).
fn mismatch(answer: &Answer) -> CallsError {
    tracing::error!(?answer, "a calls answer of the wrong kind");
    CallsError::Unavailable {
        why: "an answer of the wrong kind",
        retry_after_secs: 1,
    }
}

/// The state machine the calls task starts with: ids after every call the
/// store knows of.
async fn new_calls(
    config: &vela_config::CallsConfig,
    store: &Store,
) -> Result<Calls, crate::services::store::StoreError> {
    let first = store.next_call_id().await?;
    Ok(Calls::new(
        first,
        Duration::from_millis(config.ring_timeout_ms),
        Duration::from_millis(config.join_timeout_ms),
        config.max_participants as usize,
    ))
}

impl CallsHandle {
    /// Starts the calls: on one node, its task; in a `cluster`, this
    /// node's part of the cluster's calls ([`ClusterCalls`]). A single
    /// node's task stops when `shutdown` turns true, after ending every
    /// call still going on (so each leaves its history); a cluster node
    /// hands its calls over instead.
    pub async fn spawn(
        config: &vela_config::CallsConfig,
        store: Store,
        hub: Hub,
        media: MediaHandle,
        webhooks: crate::services::webhook::WebhookHandle,
        cluster: Option<crate::services::cluster::Cluster>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(CallsHandle, JoinHandle<()>), crate::services::store::StoreError> {
        let out = Outlets {
            store: store.clone(),
            hub,
            media,
            webhooks,
            kicks: None,
        };
        if let Some(cluster) = cluster {
            let (calls, task) = ClusterCalls::start(cluster, config.clone(), out, shutdown);
            return Ok((
                CallsHandle {
                    route: Route::Cluster(calls),
                },
                task,
            ));
        }
        let recovered = store.recover_open_calls(now_ms()).await?;
        report_recovered(&out, recovered);
        let calls = new_calls(config, &store).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(calls, rx, out, shutdown, true));
        Ok((
            CallsHandle {
                route: Route::Local(tx),
            },
            task,
        ))
    }

    /// Sends `op`, and waits for the answer.
    async fn ask(&self, op: Op) -> Result<Answer, CallsError> {
        match &self.route {
            Route::Local(tx) => {
                let (reply, rx) = oneshot::channel();
                tx.send((op, Some(reply)))
                    .map_err(|_| CallsError::ShuttingDown)?;
                rx.await.map_err(|_| CallsError::ShuttingDown)
            }
            Route::Cluster(c) => c.ask(op).await,
        }
    }

    /// Sends `op`, answering a call.
    async fn ask_call(&self, op: Op) -> Result<Call, CallsError> {
        match self.ask(op).await? {
            Answer::Call(r) => Ok(r?),
            other => Err(mismatch(&other)),
        }
    }

    /// Places a call.
    pub async fn invite(
        &self,
        caller: Person,
        device: DeviceId,
        invitees: Vec<Invitee>,
        video: bool,
    ) -> Result<Call, CallsError> {
        self.ask_call(Op::Invite {
            caller,
            device,
            invitees,
            video,
        })
        .await
    }

    /// Adds people to a running call.
    pub async fn add(
        &self,
        id: CallId,
        by: AccountId,
        invitees: Vec<Invitee>,
    ) -> Result<Call, CallsError> {
        self.ask_call(Op::Add { id, by, invitees }).await
    }

    /// Accepts on a device (first wins).
    pub async fn accept(
        &self,
        id: CallId,
        account: AccountId,
        device: DeviceId,
        client: Option<String>,
    ) -> Result<Call, CallsError> {
        self.ask_call(Op::Accept {
            id,
            account,
            device,
            client,
        })
        .await
    }

    /// Declines.
    pub async fn decline(&self, id: CallId, account: AccountId) -> Result<Call, CallsError> {
        self.ask_call(Op::Decline { id, account }).await
    }

    /// The caller cancels before an answer.
    pub async fn cancel(&self, id: CallId, account: AccountId) -> Result<Call, CallsError> {
        self.ask_call(Op::Cancel { id, account }).await
    }

    /// Hangs up.
    pub async fn leave(&self, id: CallId, account: AccountId) -> Result<Call, CallsError> {
        self.ask_call(Op::Leave { id, account }).await
    }

    /// Sends a chat message to everyone in the call.
    pub async fn message(
        &self,
        id: CallId,
        account: AccountId,
        device: DeviceId,
        text: String,
    ) -> Result<ChatMessage, CallsError> {
        match self
            .ask(Op::Message {
                id,
                account,
                device,
                text,
            })
            .await?
        {
            Answer::Message(r) => Ok(r?),
            other => Err(mismatch(&other)),
        }
    }

    /// A call as `account` sees it, with its chat.
    pub async fn call(
        &self,
        id: CallId,
        account: AccountId,
    ) -> Result<(Call, Vec<ChatMessage>), CallsError> {
        match self.ask(Op::Get { id, account }).await? {
            Answer::Found(found) => found.ok_or(CallsError::Call(Refusal::NotFound)),
            other => Err(mismatch(&other)),
        }
    }

    /// The calls `account` is ringing for or in.
    pub async fn active(&self, account: AccountId) -> Result<Vec<Call>, CallsError> {
        match self.ask(Op::Active { account }).await? {
            Answer::Active(calls) => Ok(calls),
            other => Err(mismatch(&other)),
        }
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
        match self
            .ask(Op::AuthorizeJoin {
                room,
                account,
                device,
                take_over,
            })
            .await?
        {
            Answer::Join(r) => Ok(r?),
            other => Err(mismatch(&other)),
        }
    }

    /// Sends a room event (nobody waits for its answer): in order, and in
    /// a cluster retried until the owner has it.
    fn tell(&self, op: Op) {
        match &self.route {
            Route::Local(tx) => {
                let _ = tx.send((op, None));
            }
            Route::Cluster(c) => c.tell(op),
        }
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
        let joined = Op::RoomJoined {
            room: room.to_owned(),
            account,
            device,
            connection,
            public,
        };
        if let Route::Cluster(c) = &self.route {
            // Announced again to a new owner, and removable from here.
            c.sessions.insert(&joined);
        }
        self.tell(joined);
        Some(CallRoomGuard {
            calls: self.clone(),
            room: room.to_owned(),
            account,
            connection,
        })
    }
}

/// Tells the calls that a room session ended, when dropped.
#[derive(Debug)]
pub struct CallRoomGuard {
    calls: CallsHandle,
    room: String,
    account: AccountId,
    connection: ConnectionId,
}

impl Drop for CallRoomGuard {
    fn drop(&mut self) {
        if let Route::Cluster(c) = &self.calls.route {
            c.sessions.remove(&self.room, self.connection);
        }
        self.calls.tell(Op::RoomLeft {
            room: std::mem::take(&mut self.room),
            account: self.account,
            connection: self.connection,
        });
    }
}

/// Logs the calls a crash interrupted (recorded by the store), and tells
/// integrations they are over.
fn report_recovered(out: &Outlets, recovered: Vec<crate::services::store::InterruptedCall>) {
    if recovered.is_empty() {
        return;
    }
    tracing::warn!(
        calls = recovered.len(),
        entries = recovered.iter().map(|c| c.stored.len()).sum::<usize>(),
        "recorded calls that a crash interrupted"
    );
    for c in recovered {
        out.webhooks.call(Notice::Ended {
            call: Box::new(crate::domain::call::state::interrupted(c.call, c.ended_at)),
        });
    }
}

/// Where the state machine's outputs go.
#[derive(Clone)]
struct Outlets {
    store: Store,
    hub: Hub,
    media: MediaHandle,
    webhooks: crate::services::webhook::WebhookHandle,
    /// In a cluster: room connections to remove, for whichever node holds
    /// them (else they are this node's).
    kicks: Option<mpsc::UnboundedSender<(String, ConnectionId)>>,
}

/// The calls task: runs `calls` until `stop` turns true, then ends every
/// call still going on if `end_calls` (one node shutting down), or drops
/// them as they are (a cluster node handing them over: their journal
/// stays for the next owner).
async fn run(
    mut calls: Calls,
    mut rx: mpsc::UnboundedReceiver<Job>,
    out: Outlets,
    mut stop: watch::Receiver<bool>,
    end_calls: bool,
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
                let Some((op, reply)) = job else { break };
                let answer = op.apply(&mut calls, now_ms());
                carry_out(&mut calls, &out).await;
                if let Some(reply) = reply {
                    let _ = reply.send(answer);
                }
            }
            _ = sleep => {
                calls.handle_timeout(now_ms());
                carry_out(&mut calls, &out).await;
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        }
    }
    if end_calls {
        calls.handle_shutdown(now_ms());
        carry_out(&mut calls, &out).await;
    }
}

/// Does what the state machine asked: pushes, history entries, removals.
async fn carry_out(calls: &mut Calls, outlets: &Outlets) {
    let Outlets {
        store,
        hub,
        media,
        webhooks,
        kicks,
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
            Output::Kick(room, connection) => match kicks {
                Some(kicks) => {
                    let _ = kicks.send((room, connection));
                }
                None => media.leave(connection, LeaveReason::Removed).await,
            },
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
