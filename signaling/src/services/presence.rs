//! The presence task: drives the [`PresenceTracker`] on the real clock (one
//! node), or the cluster's shared presence in Redis (`shared.rs`), records
//! last-seen times, and pushes each change to the account's own devices and
//! to its mutual contacts (the only accounts allowed to see it).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::domain::Invalid;
use crate::domain::ids::{AccountId, DeviceId};
pub use crate::domain::presence::Presence;
use crate::domain::presence::{Change, DeviceStatus, PresenceTracker, Status, check_status_text};
use crate::services::cluster::Cluster;
use crate::services::hub::Hub;
use crate::services::push::{MutualContact, Push};
use crate::services::store::{Store, StoreError};

#[derive(Debug)]
enum Cmd {
    Activity(AccountId, DeviceId),
    SetStatus {
        account: AccountId,
        device: DeviceId,
        status: Option<DeviceStatus>,
        /// The status text changed: publish even if the status did not.
        republish: bool,
    },
    CallStarted(AccountId, DeviceId),
    CallEnded(AccountId, DeviceId),
    DeviceRemoved(AccountId, DeviceId),
    AccountRemoved(AccountId),
    Statuses(Vec<AccountId>, oneshot::Sender<Vec<Status>>),
    DeviceStatuses(AccountId, Vec<DeviceId>, oneshot::Sender<Vec<Status>>),
}

mod shared;

use shared::{Op, Outcome, SharedPresence};

/// Where devices' presence is kept and aggregated per account: the seam a
/// cluster's shared presence (issue 18: Redis, with expiry) joins as a
/// variant. An enum, not a trait object: one match per input, nothing
/// boxed.
///
/// What every variant guarantees (and a remote one must keep):
/// - the inputs of one device are applied in the order it sent them, and
///   an account's status is aggregated over all its devices, on any node;
/// - a device that stops sending goes offline after the heartbeat timeout,
///   also when its node died;
/// - each change of an account's status or text is pushed once (not once
///   per node) to its own devices and its mutual contacts, through the
///   [`Hub`], and last-seen times are recorded in the store;
/// - queries answer from the same aggregated view, `Offline` when it cannot
///   be reached.
///
/// `server` picks it through the constructor: [`PresenceHandle::spawn`]
/// or [`PresenceHandle::spawn_shared`].
#[derive(Debug, Clone)]
enum PresenceBackend {
    /// One node: the presence task of this process (a [`PresenceTracker`]
    /// on the real clock), fed over a channel.
    Local(mpsc::UnboundedSender<Cmd>),
    /// A cluster: this node's presence task, fed over a channel (so one
    /// device's inputs stay in order), applies each input to the state in
    /// Redis with one script that aggregates the account and says whether
    /// it changed; this node then publishes the change over the hub's bus.
    /// Every node reaps the devices due (each popped by one node), and
    /// renews the rooms of its devices. Keys, script and expiry:
    /// `shared.rs`.
    Redis(mpsc::UnboundedSender<Cmd>),
}

/// Sends inputs to presence and asks it; cheap to clone.
#[derive(Debug, Clone)]
pub struct PresenceHandle {
    backend: PresenceBackend,
    store: Store,
}

/// Wall-clock milliseconds of a monotonic instant in the past.
fn wall_ms(at: Instant) -> i64 {
    let ago = Instant::now().saturating_duration_since(at);
    SystemTime::now()
        .checked_sub(ago)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl PresenceHandle {
    /// Starts this node's presence task (the local backend); it stops when
    /// `shutdown` turns true, after recording a last-seen time for every
    /// account still present.
    pub fn spawn(
        timeout: Duration,
        store: Store,
        hub: Hub,
        shutdown: watch::Receiver<bool>,
    ) -> (PresenceHandle, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(
            PresenceTracker::new(timeout),
            rx,
            store.clone(),
            hub,
            shutdown,
        ));
        (
            PresenceHandle {
                backend: PresenceBackend::Local(tx),
                store,
            },
            task,
        )
    }

    /// Starts this node's presence task on the cluster's shared presence
    /// (devices time out after `timeout`, a node's rooms after
    /// `cluster.node_timeout_ms` without renewal); it stops when
    /// `shutdown` turns true, leaving this node's devices to time out.
    pub fn spawn_shared(
        cluster: Cluster,
        timeout: Duration,
        store: Store,
        hub: Hub,
        shutdown: watch::Receiver<bool>,
    ) -> (PresenceHandle, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let every = Duration::from_millis(cluster.config().heartbeat_ms.max(10));
        let shared = SharedPresence::new(
            cluster.clone(),
            u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            cluster.config().node_timeout_ms,
        );
        let task = tokio::spawn(run_shared(shared, every, rx, store.clone(), hub, shutdown));
        (
            PresenceHandle {
                backend: PresenceBackend::Redis(tx),
                store,
            },
            task,
        )
    }

    fn send(&self, cmd: Cmd) {
        match &self.backend {
            // The task is gone only at shutdown, when nothing is left to tell.
            PresenceBackend::Local(tx) | PresenceBackend::Redis(tx) => {
                let _ = tx.send(cmd);
            }
        }
    }

    /// A device connected or sent something.
    pub fn activity(&self, account: AccountId, device: DeviceId) {
        self.send(Cmd::Activity(account, device));
    }

    /// A device set its status and/or the account's text (already stored).
    pub fn set_status(
        &self,
        account: AccountId,
        device: DeviceId,
        status: Option<DeviceStatus>,
        text_changed: bool,
    ) {
        self.send(Cmd::SetStatus {
            account,
            device,
            status,
            republish: text_changed,
        });
    }

    /// A device entered a room.
    pub fn call_started(&self, account: AccountId, device: DeviceId) {
        self.send(Cmd::CallStarted(account, device));
    }

    /// A device left a room.
    pub fn call_ended(&self, account: AccountId, device: DeviceId) {
        self.send(Cmd::CallEnded(account, device));
    }

    /// A device logged out or was revoked.
    pub fn device_removed(&self, account: AccountId, device: DeviceId) {
        self.send(Cmd::DeviceRemoved(account, device));
    }

    /// An account was disabled.
    pub fn account_removed(&self, account: AccountId) {
        self.send(Cmd::AccountRemoved(account));
    }

    /// The aggregated statuses of `accounts`, in order.
    pub async fn statuses(&self, accounts: Vec<AccountId>) -> Vec<Status> {
        let n = accounts.len();
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Statuses(accounts, tx));
        rx.await.unwrap_or_else(|_| vec![Status::Offline; n])
    }

    /// The own statuses of `devices` (of `account`), in order.
    pub async fn device_statuses(&self, account: AccountId, devices: Vec<DeviceId>) -> Vec<Status> {
        let n = devices.len();
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::DeviceStatuses(account, devices, tx));
        rx.await.unwrap_or_else(|_| vec![Status::Offline; n])
    }

    /// The full presence of one account.
    pub async fn presence(
        &self,
        account: AccountId,
    ) -> Result<Presence, crate::services::store::StoreError> {
        let status = self
            .statuses(vec![account])
            .await
            .first()
            .copied()
            .unwrap_or(Status::Offline);
        compose(&self.store, account, status).await
    }

    /// The full presence of several accounts, in order.
    pub async fn presences(
        &self,
        accounts: &[AccountId],
    ) -> Result<Vec<Presence>, crate::services::store::StoreError> {
        let statuses = self.statuses(accounts.to_vec()).await;
        let mut out = Vec::with_capacity(accounts.len());
        for (a, s) in accounts.iter().zip(statuses) {
            out.push(compose(&self.store, *a, s).await?);
        }
        Ok(out)
    }
}

/// Why a presence update was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// The status text breaks a rule.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PresenceHandle {
    /// A device sets its status and/or the account's status text ("" clears
    /// it): the text is checked and stored, the tracker fed.
    pub async fn update(
        &self,
        account: AccountId,
        device: DeviceId,
        status: Option<DeviceStatus>,
        text: Option<&str>,
    ) -> Result<(), PresenceError> {
        let text = text.map(check_status_text).transpose()?;
        if let Some(t) = text {
            self.store.set_status_text(account, t).await?;
        }
        self.set_status(account, device, status, text.is_some());
        Ok(())
    }

    /// The mutual contacts of `account` with their presence.
    pub async fn mutual_contacts(
        &self,
        account: AccountId,
    ) -> Result<Vec<MutualContact>, StoreError> {
        let accounts = self.store.mutual_contacts(account).await?;
        let ids: Vec<AccountId> = accounts.iter().map(|a| a.id).collect();
        let presences = self.presences(&ids).await?;
        Ok(accounts
            .into_iter()
            .zip(presences)
            .map(|(account, presence)| MutualContact { account, presence })
            .collect())
    }
}

async fn compose(
    store: &Store,
    account: AccountId,
    status: Status,
) -> Result<Presence, crate::services::store::StoreError> {
    let stored = store.presence(account).await?;
    Ok(Presence {
        account_id: account,
        status,
        text: stored.status_text,
        last_seen: if status == Status::Offline {
            stored.last_seen_at
        } else {
            None
        },
    })
}

/// Pushes an account's current presence to itself and its mutual contacts;
/// with the `version` of the shared presence, as a push that supersedes
/// the older ones (changes published by different nodes may cross).
async fn publish(
    store: &Store,
    hub: &Hub,
    account: AccountId,
    status: Status,
    version: Option<u64>,
) {
    let p = match compose(store, account, status).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(%account, error = %e, "cannot read presence");
            return;
        }
    };
    let push = Push::Presence(p);
    let ids = store.mutual_ids(account).await.unwrap_or_else(|e| {
        tracing::error!(%account, error = %e, "cannot read mutual contacts");
        Vec::new()
    });
    match version {
        Some(v) => {
            let mut to = ids;
            to.push(account);
            hub.push_versioned(account, v, &to, &push);
        }
        None => {
            hub.push(account, &push);
            hub.push_all(&ids, &push);
        }
    }
}

async fn apply(store: &Store, hub: &Hub, change: Change) {
    let Change {
        account,
        previous,
        status,
        last_active,
    } = change;
    apply_at(
        store,
        hub,
        account,
        previous,
        status,
        wall_ms(last_active),
        None,
    )
    .await;
}

/// Records and publishes a change of `account` from `previous` to `status`
/// (`last_active`: ms since the epoch).
async fn apply_at(
    store: &Store,
    hub: &Hub,
    account: AccountId,
    previous: Status,
    status: Status,
    last_active: i64,
    version: Option<u64>,
) {
    tracing::debug!(%account, from = ?previous, to = ?status, "presence");
    if status == Status::Offline {
        if let Err(e) = store.set_last_seen(account, last_active).await {
            tracing::error!(%account, error = %e, "cannot store last seen");
        }
    } else if previous == Status::Offline
        // Marked so that a crash leaves a last-seen time (the next start's
        // `Store::recover_presence`).
        && let Err(e) = store.set_present(account, last_active).await
    {
        tracing::error!(%account, error = %e, "cannot store presence");
    }
    publish(store, hub, account, status, version).await;
}

async fn run(
    mut tracker: PresenceTracker,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    store: Store,
    hub: Hub,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let deadline = tracker.poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                let now = Instant::now();
                let change = match cmd {
                    Cmd::Activity(a, d) => tracker.handle_activity(now, a, d),
                    Cmd::SetStatus { account, device, status, republish } => {
                        let change = match status {
                            Some(s) => tracker.handle_set_status(now, account, device, s),
                            None => tracker.handle_activity(now, account, device),
                        };
                        if change.is_none() && republish {
                            publish(&store, &hub, account, tracker.status(account), None).await;
                        }
                        change
                    }
                    Cmd::CallStarted(a, d) => tracker.handle_call_started(now, a, d),
                    Cmd::CallEnded(_, d) => tracker.handle_call_ended(now, d),
                    Cmd::DeviceRemoved(_, d) => tracker.handle_device_removed(now, d),
                    Cmd::AccountRemoved(a) => tracker.handle_account_removed(now, a),
                    Cmd::Statuses(accounts, reply) => {
                        let _ = reply.send(accounts.iter().map(|a| tracker.status(*a)).collect());
                        None
                    }
                    Cmd::DeviceStatuses(_, devices, reply) => {
                        let _ = reply.send(devices.iter().map(|d| tracker.device_status(*d)).collect());
                        None
                    }
                };
                if let Some(c) = change {
                    apply(&store, &hub, c).await;
                }
            }
            _ = sleep => {
                for c in tracker.handle_timeout(Instant::now()) {
                    apply(&store, &hub, c).await;
                }
            }
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        }
    }
    // Whoever is present now was last seen now.
    for account in tracker.present_accounts() {
        let _ = store.set_last_seen(account, wall_ms(Instant::now())).await;
    }
}

/// How many due devices one reaping script pops at most.
const REAP_BATCH: usize = 256;
/// After a failed Redis command, how long the presence task does without
/// Redis (inputs skipped, queries answered `Offline` at once) rather than
/// queue every input and query behind a timeout each.
const REDIS_BACKOFF: Duration = Duration::from_secs(1);

/// The shared presence, skipped for [`REDIS_BACKOFF`] after a failure.
struct Link {
    shared: SharedPresence,
    down_until: Option<tokio::time::Instant>,
}

impl Link {
    fn up(&mut self) -> bool {
        self.down_until
            .is_none_or(|t| tokio::time::Instant::now() >= t)
    }

    fn failed(&mut self, what: &str, e: &redis::RedisError) {
        if self.down_until.is_none() {
            tracing::warn!(error = %e, what, "the shared presence is unreachable: inputs skipped and queries answered offline until it is back");
        }
        self.down_until = Some(tokio::time::Instant::now() + REDIS_BACKOFF);
    }

    fn succeeded(&mut self) {
        if self.down_until.take().is_some() {
            tracing::info!("the shared presence is back");
        }
    }

    async fn apply(
        &mut self,
        account: AccountId,
        device: DeviceId,
        op: Op,
        republish: bool,
    ) -> Option<Outcome> {
        if !self.up() {
            tracing::debug!(%account, %device, ?op, "shared presence down: input skipped");
            return None;
        }
        match self.shared.apply(account, device, op, republish).await {
            Ok(o) => {
                self.succeeded();
                Some(o)
            }
            Err(e) => {
                self.failed("update", &e);
                None
            }
        }
    }

    async fn statuses(&mut self, accounts: &[AccountId]) -> Vec<Status> {
        if self.up() {
            match self.shared.statuses(accounts).await {
                Ok(s) => {
                    self.succeeded();
                    return s;
                }
                Err(e) => self.failed("read", &e),
            }
        }
        vec![Status::Offline; accounts.len()]
    }

    async fn device_statuses(&mut self, account: AccountId, devices: &[DeviceId]) -> Vec<Status> {
        if self.up() {
            match self.shared.device_statuses(account, devices).await {
                Ok(s) => {
                    self.succeeded();
                    return s;
                }
                Err(e) => self.failed("read", &e),
            }
        }
        vec![Status::Offline; devices.len()]
    }

    async fn reap(&mut self) -> Vec<Outcome> {
        if !self.up() {
            return Vec::new();
        }
        match self.shared.reap(REAP_BATCH).await {
            Ok(o) => {
                self.succeeded();
                o
            }
            Err(e) => {
                self.failed("reap", &e);
                Vec::new()
            }
        }
    }
}

/// The presence task of a cluster's node: inputs in arrival order, one
/// script each; every `every`, the due devices reaped and this node's
/// rooms renewed.
async fn run_shared(
    shared: SharedPresence,
    every: Duration,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    store: Store,
    hub: Hub,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut link = Link {
        shared,
        down_until: None,
    };
    // The rooms this node's devices are in: renewed, so that they end
    // with this node.
    let mut rooms: HashMap<DeviceId, (AccountId, u32)> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                let done: Option<(Outcome, bool)> = match cmd {
                    Cmd::Activity(a, d) => link.apply(a, d, Op::Activity, false).await.map(|o| (o, false)),
                    Cmd::SetStatus { account, device, status, republish } => {
                        let op = status.map_or(Op::Activity, Op::Status);
                        link.apply(account, device, op, republish).await.map(|o| (o, republish))
                    }
                    Cmd::CallStarted(a, d) => {
                        rooms.entry(d).or_insert((a, 0)).1 += 1;
                        link.apply(a, d, Op::CallStarted, false).await.map(|o| (o, false))
                    }
                    Cmd::CallEnded(a, d) => {
                        if let Some(r) = rooms.get_mut(&d) {
                            r.1 = r.1.saturating_sub(1);
                            if r.1 == 0 {
                                rooms.remove(&d);
                            }
                        }
                        link.apply(a, d, Op::CallEnded, false).await.map(|o| (o, false))
                    }
                    Cmd::DeviceRemoved(a, d) => link.apply(a, d, Op::Removed, false).await.map(|o| (o, false)),
                    Cmd::AccountRemoved(a) => {
                        link.apply(a, DeviceId(0), Op::AccountRemoved, false).await.map(|o| (o, false))
                    }
                    Cmd::Statuses(accounts, reply) => {
                        let _ = reply.send(link.statuses(&accounts).await);
                        None
                    }
                    Cmd::DeviceStatuses(account, devices, reply) => {
                        let _ = reply.send(link.device_statuses(account, &devices).await);
                        None
                    }
                };
                if let Some((o, republish)) = done
                    && (o.changed() || republish)
                {
                    apply_at(&store, &hub, o.account, o.previous, o.status, o.last_active, Some(o.version)).await;
                }
            }
            _ = tick.tick() => {
                // Renewed absolutely (the count), so that rooms come back
                // after Redis lost its data.
                for (d, (a, n)) in &rooms {
                    let _ = link.apply(*a, *d, Op::Renew(*n), false).await;
                }
                loop {
                    let gone = link.reap().await;
                    let more = gone.len() == REAP_BATCH;
                    for o in gone {
                        apply_at(&store, &hub, o.account, o.previous, o.status, o.last_active, Some(o.version)).await;
                    }
                    if !more {
                        break;
                    }
                }
            }
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        }
    }
}
