//! The calls of a cluster (issue 18): one node owns them all, the others
//! forward every operation to it over Redis.
//!
//! # Why one owner
//! The state machine's rules span calls: an invitee already in *any* call
//! is busy, and two accepts, or an accept and a cancel, must resolve one
//! way for every device. One `Calls` on one node keeps those exact with
//! the single-node code unchanged: its task handles every operation in
//! the order it reaches it (this node's own operations and the others',
//! in the order Redis delivered them), carries out the outputs (pushes
//! through the hub, which reach every node's devices; history in the
//! shared store; webhooks once, from here) before answering. An owner per
//! call would need busy (a cross-call check) and call creation to agree
//! between owners; the load of calls (a few operations per call, none on
//! the media path) fits one node well past what one room node serves.
//!
//! # The lease
//! `vela:calls:owner` holds the owner's token (`<node id>#<random>`, new
//! each start, so a restarted node never mistakes the previous run's lease
//! for its own). Every `cluster.heartbeat_ms` each node either renews it
//! (a script: `PEXPIRE` only if it is still ours) or tries to take it
//! (`SET NX PX`), with `cluster.node_timeout_ms` as its expiry. An owner
//! that has not renewed for the node timeout less four heartbeats (counted
//! from when it sent its last successful renewal, so before Redis lets it
//! expire; each command of the heartbeat is bounded by one) stops owning: it drops its calls as they are, without ending
//! them: the next owner has them from their journal. A graceful shutdown
//! hands over the same way and deletes the lease at once.
//!
//! # Taking over
//! The new owner reads every call's journal (`open_calls`, written after
//! each change; it now keeps what the view leaves out: deadlines, devices)
//! and restores them (`Calls::restore`): ringing goes on to its deadline;
//! members in an answered call must be in its room or join it within
//! `calls.join_timeout_ms`, else they leave with their history entry (once:
//! the journal is the only copy, and only the owner writes history). Every
//! node announces its call-room sessions again when it hears of the new
//! owner (`owner` on `vela:calls:nodes`), so members whose room survived
//! keep the call without doing anything; those whose room was on the dead
//! node rejoin it (it reopens on a live node). The chat so far is lost.
//!
//! # Forwarding
//! A node sends `{from, id, deadline, op}` (JSON) to `vela:calls:ops:<owner
//! token>` and waits for `{id, answer}` on its own `vela:calls:replies:<its
//! token>`, for [`REQUEST_TIMEOUT`] at most. No owner yet, nobody
//! subscribed to its channel (`PUBLISH` counted none), or an answer of
//! `null` (the node is not, or not yet, the owner: the operation was not
//! run) are retried until then; after it the caller gets
//! [`CallsError::Unavailable`] (HTTP 503 with `Retry-After`). The owner
//! skips an operation whose deadline passed (its sender has answered 503),
//! so a late one is not carried out behind the client's back, unless its
//! answer itself came too late (clocks of different hosts, or a slow
//! publish): a 503 says the outcome is unknown, as any timeout does.
//!
//! Room events (a member's session joined or left the call's room, on the
//! room's node) go the same way, in order, from one queue per node, and
//! are retried for [`EVENT_PATIENCE`].
//!
//! # What the owner asks of other nodes
//! Removing a room connection (a member left, the call ended): `kick` on
//! `vela:calls:nodes`; the node holding the session (room and connection:
//! a connection id is unique on its node only) removes it.
//!
//! # A room's node killed
//! Each node keeps `vela:calls:alive:<token>` (expiring after the node
//! timeout, renewed each heartbeat). The owner remembers which node
//! announced each session; when a node's key is gone, its sessions are
//! lost (`Calls::handle_room_lost`): their members rejoin within the join
//! timeout (the room reopens elsewhere) or leave.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use vela_media::core::{ConnectionId, LeaveReason};

use super::{Answer, CallsError, Job, Op, Outlets, new_calls, run};
use crate::domain::ids::{AccountId, now_ms};
use crate::services::cluster::Cluster;

/// The longest an operation waits for the owner's answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a room event is retried while no owner answers (a new owner
/// is told of live sessions anyway).
pub const EVENT_PATIENCE: Duration = Duration::from_secs(30);
/// The wait between two tries.
const RETRY: Duration = Duration::from_millis(50);

/// Renews the lease if it is still this node's.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";
/// Deletes the lease if it is still this node's.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

fn owner_key() -> String {
    Cluster::key(&["calls", "owner"])
}

fn alive_key(token: &str) -> String {
    Cluster::key(&["calls", "alive", token])
}

fn ops_channel(token: &str) -> String {
    Cluster::key(&["calls", "ops", token])
}

fn replies_channel(token: &str) -> String {
    Cluster::key(&["calls", "replies", token])
}

fn nodes_channel() -> String {
    Cluster::key(&["calls", "nodes"])
}

/// An operation sent to the owner.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    /// The sender's token (where the answer goes).
    from: String,
    id: u64,
    /// When the sender stops waiting (ms since the epoch).
    deadline: i64,
    op: Op,
}

/// The owner's answer; `None`: not run, this node does not own the calls.
#[derive(Debug, Serialize, Deserialize)]
struct Response {
    id: u64,
    answer: Option<Answer>,
}

/// What every node hears.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Broadcast {
    /// `owner` took the calls over: announce your call-room sessions.
    Owner { owner: String },
    /// Remove this session, if it is yours.
    Kick {
        from: String,
        room: String,
        connection: ConnectionId,
    },
}

/// This node's call-room sessions (as their `RoomJoined`), by room and
/// connection.
#[derive(Debug, Default)]
pub(crate) struct Sessions(Mutex<BTreeMap<(String, ConnectionId), Op>>);

impl Sessions {
    pub(crate) fn insert(&self, joined: &Op) {
        if let Op::RoomJoined {
            room, connection, ..
        } = joined
            && let Ok(mut s) = self.0.lock()
        {
            s.insert((room.clone(), *connection), joined.clone());
        }
    }

    pub(crate) fn remove(&self, room: &str, connection: ConnectionId) {
        if let Ok(mut s) = self.0.lock() {
            s.remove(&(room.to_owned(), connection));
        }
    }

    fn contains(&self, room: &str, connection: ConnectionId) -> bool {
        self.0
            .lock()
            .is_ok_and(|s| s.contains_key(&(room.to_owned(), connection)))
    }

    fn all(&self) -> Vec<Op> {
        self.0
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// While this node owns the calls: its task's queue, and which node
/// announced each session of the other nodes.
struct Owned {
    queue: mpsc::UnboundedSender<Job>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// This node's part of the cluster's calls.
pub struct ClusterCalls {
    cluster: Cluster,
    /// `<node id>#<random>`: the lease's value while this node owns the
    /// calls, and the name of its channels.
    me: String,
    config: vela_config::CallsConfig,
    outlets: Outlets,
    pending: Mutex<HashMap<u64, oneshot::Sender<Option<Answer>>>>,
    next_request: AtomicU64,
    owned: Mutex<Option<Owned>>,
    /// The sessions announced to this node as the owner (room, member,
    /// connection), by the token of the node that announced them (see "A
    /// room's node killed").
    origins: Mutex<BTreeMap<(String, AccountId, ConnectionId), String>>,
    pub(crate) sessions: Sessions,
    events: mpsc::UnboundedSender<Op>,
    /// The owner this node last saw (it announces its sessions to a new one).
    seen_owner: Mutex<Option<String>>,
}

impl std::fmt::Debug for ClusterCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCalls")
            .field("me", &self.me)
            .finish()
    }
}

/// A token unique to this run of node `id`.
fn token(id: &str) -> String {
    let mut r = [0u8; 8];
    if getrandom::fill(&mut r).is_err() {
        r = now_ms().to_le_bytes();
    }
    format!("{id}#{:016x}", u64::from_le_bytes(r))
}

impl ClusterCalls {
    /// Starts this node's part: its subscription, its lease heartbeat (the
    /// returned task: it ends after `shutdown`, having handed the calls
    /// over if it owned them) and its queue of room events.
    pub(super) fn start(
        cluster: Cluster,
        config: vela_config::CallsConfig,
        mut outlets: Outlets,
        shutdown: watch::Receiver<bool>,
    ) -> (Arc<ClusterCalls>, JoinHandle<()>) {
        let (events, events_rx) = mpsc::unbounded_channel();
        let (kicks, kicks_rx) = mpsc::unbounded_channel();
        outlets.kicks = Some(kicks);
        let calls = Arc::new(ClusterCalls {
            me: token(&cluster.node().id),
            cluster,
            config,
            outlets,
            pending: Mutex::default(),
            next_request: AtomicU64::new(1),
            owned: Mutex::default(),
            origins: Mutex::default(),
            sessions: Sessions::default(),
            events,
            seen_owner: Mutex::default(),
        });
        tokio::spawn(subscribe_loop(calls.clone(), shutdown.clone()));
        tokio::spawn(events_loop(calls.clone(), events_rx, shutdown.clone()));
        tokio::spawn(kicks_loop(calls.clone(), kicks_rx));
        let task = tokio::spawn(lease_loop(calls.clone(), shutdown));
        (calls, task)
    }

    fn retry_after_secs(&self) -> u64 {
        self.cluster.config().node_timeout_ms.div_ceil(1000).max(1)
    }

    fn unavailable(&self, why: &'static str) -> CallsError {
        CallsError::Unavailable {
            why,
            retry_after_secs: self.retry_after_secs(),
        }
    }

    fn queue(&self) -> Option<mpsc::UnboundedSender<Job>> {
        self.owned
            .lock()
            .ok()
            .and_then(|o| o.as_ref().map(|o| o.queue.clone()))
    }

    /// Runs `op` on the owner (this node or another) and waits for its
    /// answer, [`REQUEST_TIMEOUT`] at most.
    pub(super) async fn ask(&self, op: Op) -> Result<Answer, CallsError> {
        self.ask_within(op, REQUEST_TIMEOUT).await
    }

    async fn ask_within(&self, op: Op, wait: Duration) -> Result<Answer, CallsError> {
        let deadline = Instant::now() + wait;
        let deadline_ms = now_ms().saturating_add(i64::try_from(wait.as_millis()).unwrap_or(0));
        loop {
            if let Some(queue) = self.queue() {
                let (reply, rx) = oneshot::channel();
                self.note_origin(&self.me, &op);
                if queue.send((op.clone(), Some(reply))).is_ok() {
                    match tokio::time::timeout_at(deadline, rx).await {
                        Ok(Ok(answer)) => return Ok(answer),
                        // Dropped unrun: this node stopped owning the calls.
                        Ok(Err(_)) => {}
                        Err(_) => return Err(self.unavailable("the calls did not answer in time")),
                    }
                }
            } else if let Some(answer) = self.forward(&op, deadline_ms, deadline).await? {
                return Ok(answer);
            }
            if Instant::now() + RETRY >= deadline {
                return Err(self.unavailable("no node serves the calls now"));
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// One try at the owner over Redis; `None`: not run, try again.
    async fn forward(
        &self,
        op: &Op,
        deadline_ms: i64,
        deadline: Instant,
    ) -> Result<Option<Answer>, CallsError> {
        let mut redis = self.cluster.redis();
        let owner: Option<String> = match redis::cmd("GET")
            .arg(owner_key())
            .query_async(&mut redis)
            .await
        {
            Ok(o) => o,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the calls' owner");
                return Ok(None);
            }
        };
        // None yet; or this node, not ready yet.
        let Some(owner) = owner.filter(|o| *o != self.me) else {
            return Ok(None);
        };
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let request = Request {
            from: self.me.clone(),
            id,
            deadline: deadline_ms,
            op: op.clone(),
        };
        let Ok(body) = serde_json::to_vec(&request) else {
            return Err(self.unavailable("cannot encode the operation"));
        };
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id, tx);
        }
        let heard: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(ops_channel(&owner))
            .arg(body)
            .query_async(&mut redis)
            .await;
        if !matches!(heard, Ok(n) if n > 0) {
            // The owner is gone (its lease not expired yet) or Redis is.
            self.forget(id);
            return Ok(None);
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Ok(None),
            Err(_) => {
                self.forget(id);
                Err(self.unavailable("the calls' owner did not answer in time"))
            }
        }
    }

    fn forget(&self, id: u64) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&id);
        }
    }

    /// Notes the owner this node sees (from the broadcast, or the lease
    /// read on its heartbeat: a broadcast missed during an outage); a new
    /// one (not this node) is told this node's call sessions.
    fn saw_owner(&self, owner: Option<String>) {
        let Some(owner) = owner else {
            return;
        };
        let new = match self.seen_owner.lock() {
            Ok(mut seen) if seen.as_deref() != Some(&owner) => {
                *seen = Some(owner.clone());
                true
            }
            _ => false,
        };
        if new && owner != self.me {
            self.announce(&owner);
        }
    }

    /// Tells the owner this node's call sessions again.
    fn announce(&self, owner: &str) {
        let sessions = self.sessions.all();
        if !sessions.is_empty() {
            tracing::info!(%owner, sessions = sessions.len(), "announcing this node's call sessions to the owner of the calls");
        }
        for joined in sessions {
            self.tell(joined);
        }
    }

    /// Queues a room event for the owner (in order, retried).
    pub(super) fn tell(&self, op: Op) {
        let _ = self.events.send(op);
    }

    /// Handles a message of this node's subscription.
    fn receive(self: &Arc<Self>, channel: &str, payload: &[u8]) {
        if channel == nodes_channel() {
            match serde_json::from_slice::<Broadcast>(payload) {
                Ok(Broadcast::Owner { owner }) => self.saw_owner(Some(owner)),
                Ok(Broadcast::Kick {
                    from,
                    room,
                    connection,
                }) => {
                    if from != self.me && self.sessions.contains(&room, connection) {
                        let media = self.outlets.media.clone();
                        tokio::spawn(async move {
                            media.leave(connection, LeaveReason::Removed).await;
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "an unreadable calls broadcast: ignored"),
            }
        } else if channel == replies_channel(&self.me) {
            match serde_json::from_slice::<Response>(payload) {
                Ok(r) => {
                    let waiter = self.pending.lock().ok().and_then(|mut p| p.remove(&r.id));
                    if let Some(w) = waiter {
                        let _ = w.send(r.answer);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "an unreadable calls answer: ignored"),
            }
        } else {
            match serde_json::from_slice::<Request>(payload) {
                Ok(r) => self.run_request(r),
                Err(e) => tracing::warn!(error = %e, "an unreadable calls operation: ignored"),
            }
        }
    }

    /// Queues another node's operation on this node's calls task (in the
    /// order of the subscription), and answers it once run.
    fn run_request(self: &Arc<Self>, r: Request) {
        if now_ms() > r.deadline {
            // Its sender has given up (503): not run behind its back.
            tracing::debug!(from = %r.from, id = r.id, "a calls operation too late: skipped");
            return;
        }
        let answer = match self.queue() {
            Some(queue) => {
                self.note_origin(&r.from, &r.op);
                let (tx, rx) = oneshot::channel();
                if queue.send((r.op, Some(tx))).is_ok() {
                    Some(rx)
                } else {
                    None
                }
            }
            None => None,
        };
        let calls = self.clone();
        let (from, id) = (r.from, r.id);
        tokio::spawn(async move {
            // Not run (not the owner, or stopped owning first): `None`.
            let answer = match answer {
                Some(rx) => rx.await.ok(),
                None => None,
            };
            let response = Response { id, answer };
            let Ok(body) = serde_json::to_vec(&response) else {
                return;
            };
            let mut redis = calls.cluster.redis();
            let sent: Result<i64, _> = redis::cmd("PUBLISH")
                .arg(replies_channel(&from))
                .arg(body)
                .query_async(&mut redis)
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, to = %from, "cannot answer a calls operation");
            }
        });
    }

    /// As the owner: which node a session is on (room events only).
    fn note_origin(&self, from: &str, op: &Op) {
        let Ok(mut origins) = self.origins.lock() else {
            return;
        };
        match op {
            Op::RoomJoined {
                room,
                account,
                connection,
                ..
            } => {
                origins.insert((room.clone(), *account, *connection), from.to_owned());
            }
            Op::RoomLeft {
                room,
                account,
                connection,
            } => {
                origins.remove(&(room.clone(), *account, *connection));
            }
            _ => {}
        }
    }

    async fn publish(&self, b: &Broadcast) -> Result<(), redis::RedisError> {
        let Ok(body) = serde_json::to_vec(b) else {
            return Ok(());
        };
        let mut redis = self.cluster.redis();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(nodes_channel())
            .arg(body)
            .query_async(&mut redis)
            .await?;
        Ok(())
    }

    /// Takes the calls over: restores them from their journals, starts
    /// the task, tells the nodes. `false` if the store could not be read.
    async fn take_over(self: &Arc<Self>) -> bool {
        let store = &self.outlets.store;
        let loaded = async {
            let calls = new_calls(&self.config, store).await?;
            let open = store.open_calls().await?;
            Ok::<_, crate::services::store::StoreError>((calls, open))
        };
        let (mut calls, open) = match loaded.await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot take the calls over: the store failed");
                return false;
            }
        };
        let restored = open.len();
        calls.restore(now_ms(), open);
        let (queue, rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(calls, rx, self.outlets.clone(), stop_rx, false));
        // This node's own sessions first, in its task's order.
        for joined in self.sessions.all() {
            let _ = queue.send((joined, None));
        }
        if let Ok(mut o) = self.owned.lock() {
            *o = Some(Owned { queue, stop, task });
        }
        if let Ok(mut origins) = self.origins.lock() {
            origins.clear();
        }
        tracing::warn!(restored, "this node owns the calls now");
        if let Err(e) = self
            .publish(&Broadcast::Owner {
                owner: self.me.clone(),
            })
            .await
        {
            tracing::warn!(error = %e, "cannot tell the nodes of the new owner of the calls");
        }
        true
    }

    /// Stops owning the calls: the task drops them as they are (their
    /// journals stay for the next owner).
    async fn step_down(&self, why: &str) {
        let owned = self.owned.lock().ok().and_then(|mut o| o.take());
        if let Some(o) = owned {
            tracing::warn!(why, "this node no longer owns the calls");
            let _ = o.stop.send(true);
            let _ = o.task.await;
        }
    }

    /// The owner's check of the nodes that announced sessions: a node
    /// whose heartbeat expired lost them.
    async fn check_origins(&self, redis: &mut redis::aio::ConnectionManager) {
        let tokens: BTreeSet<String> = match self.origins.lock() {
            Ok(o) => o.values().cloned().collect(),
            Err(_) => return,
        };
        for t in tokens.into_iter().filter(|t| *t != self.me) {
            let alive: Result<bool, _> = redis::cmd("EXISTS")
                .arg(alive_key(&t))
                .query_async(redis)
                .await;
            if !matches!(alive, Ok(false)) {
                continue;
            }
            let lost: Vec<(String, AccountId, ConnectionId)> = match self.origins.lock() {
                Ok(mut o) => {
                    let lost = o
                        .iter()
                        .filter(|(_, v)| **v == t)
                        .map(|(k, _)| k.clone())
                        .collect::<Vec<_>>();
                    for k in &lost {
                        o.remove(k);
                    }
                    lost
                }
                Err(_) => return,
            };
            tracing::warn!(node = %t, sessions = lost.len(), "a node with call sessions is gone: its members rejoin or leave");
            if let Some(queue) = self.queue() {
                for (room, account, connection) in lost {
                    let _ = queue.send((
                        Op::RoomLost {
                            room,
                            account,
                            connection,
                        },
                        None,
                    ));
                }
            }
        }
    }
}

/// Keeps this node subscribed to its channels.
async fn subscribe_loop(calls: Arc<ClusterCalls>, mut shutdown: watch::Receiver<bool>) {
    let channels = [
        ops_channel(&calls.me),
        replies_channel(&calls.me),
        nodes_channel(),
    ];
    let mut resubscribed = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let Some(mut stream) = calls
            .cluster
            .subscribe(&channels, "the calls' channels", &mut shutdown)
            .await
        else {
            return;
        };
        tracing::debug!("subscribed to the calls' channels");
        if resubscribed {
            // Room events may have been lost meanwhile: the owner hears
            // this node's sessions again.
            let owner = calls.seen_owner.lock().ok().and_then(|o| o.clone());
            if let Some(owner) = owner.filter(|o| *o != calls.me) {
                calls.announce(&owner);
            }
        }
        resubscribed = true;
        loop {
            tokio::select! {
                m = stream.next() => match m {
                    Some(m) => calls.receive(m.get_channel_name(), m.get_payload_bytes()),
                    None => break,
                },
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
        tracing::warn!("lost the calls' channels: subscribing again");
        tokio::time::sleep(crate::services::cluster::RESUBSCRIBE_DELAY).await;
    }
}

/// Sends this node's room events to the owner, in order, each retried for
/// [`EVENT_PATIENCE`].
async fn events_loop(
    calls: Arc<ClusterCalls>,
    mut rx: mpsc::UnboundedReceiver<Op>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let op = tokio::select! {
            op = rx.recv() => match op {
                Some(op) => op,
                None => return,
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let given_up = Instant::now() + EVENT_PATIENCE;
        loop {
            match calls.ask(op.clone()).await {
                Ok(_) => break,
                Err(e) if Instant::now() < given_up && !*shutdown.borrow() => {
                    tracing::debug!(error = %e, "a room event not delivered yet: trying again");
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?op, "a room event could not reach the calls' owner: dropped");
                    break;
                }
            }
        }
    }
}

/// Removes the room connections the owner asks to: this node's at once,
/// the others' through their nodes.
async fn kicks_loop(
    calls: Arc<ClusterCalls>,
    mut rx: mpsc::UnboundedReceiver<(String, ConnectionId)>,
) {
    while let Some((room, connection)) = rx.recv().await {
        if calls.sessions.contains(&room, connection) {
            calls
                .outlets
                .media
                .leave(connection, LeaveReason::Removed)
                .await;
            continue;
        }
        let kick = Broadcast::Kick {
            from: calls.me.clone(),
            room,
            connection,
        };
        if let Err(e) = calls.publish(&kick).await {
            tracing::warn!(error = %e, ?kick, "cannot ask for a room connection's removal");
        }
    }
}

/// Every `cluster.heartbeat_ms` (at most a fifth of the node timeout):
/// this node's liveness, and the lease (renewed, or taken when free). At
/// shutdown, hands the calls over.
async fn lease_loop(calls: Arc<ClusterCalls>, mut shutdown: watch::Receiver<bool>) {
    let config = calls.cluster.config().clone();
    let ttl = config.node_timeout_ms.max(100);
    let every = Duration::from_millis(config.heartbeat_ms.clamp(10, ttl / 5));
    // The lease is ours until `ttl` after a renewal was sent. Each Redis
    // command here is bounded by `every` and validity is checked on each
    // tick, so a check can come up to about three beats late: stop owning
    // four beats before the expiry, and two nodes never own the calls at
    // once (clocks running at the same rate).
    let margin = Duration::from_millis(ttl).saturating_sub(every * 4);
    let mut valid_until: Option<Instant> = None;
    let renew = redis::Script::new(RENEW);
    let release = redis::Script::new(RELEASE);
    let mut redis = calls.cluster.redis();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        if valid_until.is_some_and(|v| Instant::now() >= v) {
            valid_until = None;
            calls
                .step_down("its lease could not be renewed in time")
                .await;
        }
        let sent = Instant::now();
        let _: Option<Result<(), _>> = bounded(
            every,
            redis::cmd("SET")
                .arg(alive_key(&calls.me))
                .arg(1)
                .arg("PX")
                .arg(ttl)
                .query_async(&mut redis),
        )
        .await;
        if valid_until.is_some() {
            let renewed: Option<Result<i64, _>> = bounded(
                every,
                renew
                    .key(owner_key())
                    .arg(&calls.me)
                    .arg(ttl)
                    .invoke_async(&mut redis),
            )
            .await;
            match renewed {
                Some(Ok(1)) => {
                    valid_until = Some(sent + margin);
                    let _ = bounded(every, calls.check_origins(&mut redis)).await;
                }
                Some(Ok(_)) => {
                    valid_until = None;
                    calls.step_down("its lease was taken").await;
                }
                Some(Err(e)) => tracing::warn!(error = %e, "cannot renew the calls' lease"),
                None => tracing::warn!("cannot renew the calls' lease: Redis is slow"),
            }
            continue;
        }
        let taken: Option<Result<Option<String>, _>> = bounded(
            every,
            redis::cmd("SET")
                .arg(owner_key())
                .arg(&calls.me)
                .arg("NX")
                .arg("PX")
                .arg(ttl)
                .query_async(&mut redis),
        )
        .await;
        match taken {
            Some(Ok(Some(_))) => {
                calls.saw_owner(Some(calls.me.clone()));
                valid_until = Some(sent + margin);
                if !calls.take_over().await {
                    valid_until = None;
                    let _: Option<Result<i64, _>> = bounded(
                        every,
                        release
                            .key(owner_key())
                            .arg(&calls.me)
                            .invoke_async(&mut redis),
                    )
                    .await;
                }
            }
            Some(Ok(None)) => {
                let owner: Option<Result<Option<String>, _>> = bounded(
                    every,
                    redis::cmd("GET").arg(owner_key()).query_async(&mut redis),
                )
                .await;
                if let Some(Ok(owner)) = owner {
                    calls.saw_owner(owner);
                }
            }
            _ => {}
        }
    }
    // Handing over: the calls stay in their journals for the next owner.
    if valid_until.is_some() {
        calls.step_down("shutting down").await;
        let _: Option<Result<i64, _>> = bounded(
            every,
            release
                .key(owner_key())
                .arg(&calls.me)
                .invoke_async(&mut redis),
        )
        .await;
    }
    let _: Option<Result<i64, _>> = bounded(
        every,
        redis::cmd("DEL")
            .arg(alive_key(&calls.me))
            .query_async(&mut redis),
    )
    .await;
}

/// `f`'s result, or `None` after `limit`.
async fn bounded<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(limit, f).await.ok()
}

#[cfg(test)]
mod tests;
