//! The presence task: drives the [`PresenceTracker`] on the real clock,
//! records last-seen times, and pushes each change to the account's own
//! devices and to its mutual contacts (the only accounts allowed to see it).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::domain::Invalid;
use crate::domain::ids::{AccountId, DeviceId};
pub use crate::domain::presence::Presence;
use crate::domain::presence::{Change, DeviceStatus, PresenceTracker, Status, check_status_text};
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
    CallEnded(DeviceId),
    DeviceRemoved(DeviceId),
    AccountRemoved(AccountId),
    Statuses(Vec<AccountId>, oneshot::Sender<Vec<Status>>),
    DeviceStatuses(Vec<DeviceId>, oneshot::Sender<Vec<Status>>),
}

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
/// for this one.
#[derive(Debug, Clone)]
enum PresenceBackend {
    /// One node: the presence task of this process (a [`PresenceTracker`]
    /// on the real clock), fed over a channel.
    Local(mpsc::UnboundedSender<Cmd>),
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

    fn send(&self, cmd: Cmd) {
        match &self.backend {
            // The task is gone only at shutdown, when nothing is left to tell.
            PresenceBackend::Local(tx) => {
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
    pub fn call_ended(&self, device: DeviceId) {
        self.send(Cmd::CallEnded(device));
    }

    /// A device logged out or was revoked.
    pub fn device_removed(&self, device: DeviceId) {
        self.send(Cmd::DeviceRemoved(device));
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

    /// The own statuses of `devices`, in order.
    pub async fn device_statuses(&self, devices: Vec<DeviceId>) -> Vec<Status> {
        let n = devices.len();
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::DeviceStatuses(devices, tx));
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

/// Pushes an account's current presence to itself and its mutual contacts.
async fn publish(store: &Store, hub: &Hub, account: AccountId, status: Status) {
    let p = match compose(store, account, status).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(%account, error = %e, "cannot read presence");
            return;
        }
    };
    let push = Push::Presence(p);
    hub.push(account, &push);
    match store.mutual_ids(account).await {
        Ok(ids) => hub.push_all(&ids, &push),
        Err(e) => tracing::error!(%account, error = %e, "cannot read mutual contacts"),
    }
}

async fn apply(store: &Store, hub: &Hub, change: Change) {
    tracing::debug!(account = %change.account, from = ?change.previous, to = ?change.status, "presence");
    if change.status == Status::Offline {
        if let Err(e) = store
            .set_last_seen(change.account, wall_ms(change.last_active))
            .await
        {
            tracing::error!(account = %change.account, error = %e, "cannot store last seen");
        }
    } else if change.previous == Status::Offline
        // Marked so that a crash leaves a last-seen time (the next start's
        // `Store::recover_presence`).
        && let Err(e) = store
            .set_present(change.account, wall_ms(change.last_active))
            .await
    {
        tracing::error!(account = %change.account, error = %e, "cannot store presence");
    }
    publish(store, hub, change.account, change.status).await;
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
                            publish(&store, &hub, account, tracker.status(account)).await;
                        }
                        change
                    }
                    Cmd::CallStarted(a, d) => tracker.handle_call_started(now, a, d),
                    Cmd::CallEnded(d) => tracker.handle_call_ended(now, d),
                    Cmd::DeviceRemoved(d) => tracker.handle_device_removed(now, d),
                    Cmd::AccountRemoved(a) => tracker.handle_account_removed(now, a),
                    Cmd::Statuses(accounts, reply) => {
                        let _ = reply.send(accounts.iter().map(|a| tracker.status(*a)).collect());
                        None
                    }
                    Cmd::DeviceStatuses(devices, reply) => {
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
