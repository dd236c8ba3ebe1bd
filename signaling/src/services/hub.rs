//! Who is connected: account -> device -> live connections, and how pushes
//! reach them ([`DeviceBus`]: this process only, or every node of a
//! cluster over Redis pub/sub, `bus.rs`).
//!
//! Device sockets (`/api/v1/ws`) receive pushes (presence, address book
//! changes, contact requests) through the hub; room sessions joined with an
//! account token register too, so that revoking a device or disabling an
//! account closes every connection it has at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};

use crate::domain::ids::{AccountId, DeviceId};
use crate::services::cluster::Cluster;
use crate::services::push::Push;

mod bus;

pub use bus::{BusError, CLOSE_BUS_DOWN, CLOSE_BUS_LOST, RedisBus};

/// WebSocket close code when the device was signed out (revoked, logged
/// out, password changed, refresh token reused).
pub const CLOSE_REVOKED: u16 = 4002;
/// WebSocket close code when the account was disabled.
pub const CLOSE_DISABLED: u16 = 4003;

/// How many pushes may wait for one slow connection before it is dropped.
const QUEUE: usize = 256;

/// A message for one connection. Pushes travel serialised: one text is
/// shared by every connection a push goes to.
#[derive(Debug, Clone)]
pub enum HubMsg {
    /// An encoded [`Push`] to send as is.
    Event(Arc<str>),
    /// Send `event` (if any), then close the socket with `code` and `reason`.
    Close {
        /// A last encoded [`Push`], e.g. `session_revoked`.
        event: Option<Arc<str>>,
        /// The WebSocket close code.
        code: u16,
        /// The close reason.
        reason: &'static str,
    },
}

/// What a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    /// A device socket: gets pushes.
    Device,
    /// A room session (WebSocket, WHIP or WHEP): only closed.
    Room,
}

#[derive(Debug)]
struct Conn {
    id: u64,
    device: DeviceId,
    kind: ConnKind,
    tx: mpsc::Sender<HubMsg>,
}

/// How pushes and closes addressed to an account reach its connections,
/// wherever they are: `Local` for one node, `Redis` for a cluster (issue
/// 18), picked at start in `server`. An enum, not a trait object: one
/// match per push, nothing boxed.
///
/// What every variant guarantees (and a remote one must keep):
/// - pushes sent from one node to one account reach each of its device
///   sockets in the order they were sent (a per-account or per-node channel
///   kept in order, not a pool of racing publishers);
/// - a push is delivered at most once per connection, and lost only with
///   the connection: a socket whose queue is full is closed, so its client
///   reconnects and reloads; an outage must close or refuse, never drop
///   pushes silently;
/// - closes (a device revoked, an account disabled) reach every connection
///   of the device or account at once, on whichever node it is;
/// - [`Hub::connected_devices`] covers every node, and may lag a
///   connect or disconnect by the bus's delay.
///
/// Registrations are always local (the socket lives in this process); a
/// remote bus delivers what other nodes publish to this node's registry,
/// and announces this node's device sockets (with an expiry) for
/// [`Hub::connected_devices`] elsewhere.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DeviceBus {
    /// One node: every connection is in this process's registry, and a push
    /// is delivered as it is sent.
    Local,
    /// Several nodes sharing a Redis: pushes and closes are delivered here
    /// at once and published on the cluster's channel for the others (see
    /// `bus.rs` for the channel, the frames and the outage rules). Made by
    /// [`Hub::clustered`].
    Redis(Arc<RedisBus>),
}

/// The live connections of this node, and the bus to the others; cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct Hub {
    conns: Arc<Mutex<HashMap<AccountId, Vec<Conn>>>>,
    next: Arc<AtomicU64>,
    bus: DeviceBus,
    /// Per topic, the version of the last versioned push delivered here.
    versions: Arc<Mutex<HashMap<AccountId, u64>>>,
    /// Counts the times this node may have missed closes from the others.
    missed: Arc<watch::Sender<u64>>,
}

/// Keeps a connection registered; unregisters it when dropped.
#[derive(Debug)]
pub struct Registration {
    hub: Hub,
    account: AccountId,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let gone = self.hub.remove(self.account, |c| c.id == self.id);
        if let DeviceBus::Redis(bus) = &self.hub.bus {
            for c in gone.iter().filter(|c| c.kind == ConnKind::Device) {
                if !self.hub.connected_here(self.account).contains(&c.device) {
                    bus.withdraw(self.account, c.device);
                }
            }
        }
    }
}

impl Hub {
    /// One node's hub ([`DeviceBus::Local`]): no connections yet.
    pub fn new(bus: DeviceBus) -> Self {
        Hub {
            conns: Arc::default(),
            next: Arc::default(),
            bus,
            versions: Arc::default(),
            missed: Arc::new(watch::Sender::new(0)),
        }
    }

    /// A hub on the cluster's bus ([`DeviceBus::Redis`]), which runs until
    /// `shutdown`; returns once subscribed (or after the node timeout, when
    /// device sockets are refused until it is).
    pub async fn clustered(cluster: Cluster, shutdown: watch::Receiver<bool>) -> Self {
        RedisBus::start(cluster, |bus| Hub::new(DeviceBus::Redis(bus)), shutdown).await
    }

    /// Whether pushes reach the other nodes now: always with one node; on
    /// a cluster's bus, while subscribed and hearing its own heartbeats
    /// (`/readyz` fails otherwise).
    pub fn on_bus(&self) -> bool {
        match &self.bus {
            DeviceBus::Local => true,
            DeviceBus::Redis(bus) => bus.live(),
        }
    }

    /// Changes each time this node may have missed closes published by the
    /// others (it was off the cluster's bus, or frames were lost): its
    /// device sockets are closed then, but its room sessions go on, and
    /// must be checked against the store ([`crate::services::devices::Devices::watch_missed_closes`]).
    pub fn missed_closes(&self) -> watch::Receiver<u64> {
        self.missed.subscribe()
    }

    fn note_missed(&self) {
        self.missed.send_modify(|n| *n += 1);
    }

    /// The signed-in devices with a room session on this node.
    pub fn room_sessions(&self) -> Vec<(AccountId, DeviceId)> {
        self.devices_with(ConnKind::Room)
    }

    /// The (account, device) pairs with a connection of `kind` on this
    /// node, sorted, each once.
    fn devices_with(&self, kind: ConnKind) -> Vec<(AccountId, DeviceId)> {
        let Ok(m) = self.conns.lock() else {
            return Vec::new();
        };
        let mut out: Vec<(AccountId, DeviceId)> = m
            .iter()
            .flat_map(|(a, list)| {
                list.iter()
                    .filter(|c| c.kind == kind)
                    .map(|c| (*a, c.device))
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Registers a connection of `device`; its messages arrive on the receiver.
    pub fn register(
        &self,
        account: AccountId,
        device: DeviceId,
        kind: ConnKind,
    ) -> (Registration, mpsc::Receiver<HubMsg>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let (DeviceBus::Redis(bus), ConnKind::Device) = (&self.bus, kind) {
            if bus.live() {
                bus.announce(account, device);
            } else {
                // Off the bus this socket would miss pushes: refused.
                let _ = tx.try_send(HubMsg::Close {
                    event: None,
                    code: CLOSE_BUS_DOWN,
                    reason: "cluster bus unavailable",
                });
            }
        }
        if let Ok(mut m) = self.conns.lock() {
            m.entry(account).or_default().push(Conn {
                id,
                device,
                kind,
                tx,
            });
        }
        (
            Registration {
                hub: self.clone(),
                account,
                id,
            },
            rx,
        )
    }

    fn remove(&self, account: AccountId, pred: impl Fn(&Conn) -> bool) -> Vec<Conn> {
        let Ok(mut m) = self.conns.lock() else {
            return Vec::new();
        };
        let Some(list) = m.get_mut(&account) else {
            return Vec::new();
        };
        let (gone, kept): (Vec<Conn>, Vec<Conn>) = std::mem::take(list).into_iter().partition(pred);
        *list = kept;
        if list.is_empty() {
            m.remove(&account);
        }
        gone
    }

    /// Pushes `push` to every device socket of `account`. A connection whose
    /// queue is full is dropped (its socket then closes).
    pub fn push(&self, account: AccountId, push: &Push) {
        self.push_all(&[account], push);
    }

    /// Pushes `push` to the device sockets of several accounts: at once on
    /// this node; on a cluster's bus, published for the others without
    /// waiting (a publish that fails shows the other nodes a gap, and they
    /// close their device sockets: see [`Hub::publish`] to learn of it).
    pub fn push_all(&self, accounts: &[AccountId], push: &Push) {
        let Some(text) = push.encode() else { return };
        for a in accounts {
            self.push_text(*a, &text);
        }
        if let DeviceBus::Redis(bus) = &self.bus {
            bus.event(accounts, &text, None);
        }
    }

    /// [`Hub::push_all`], waiting until the other nodes have it: an error
    /// when it could not be published (an HTTP request answers 503; the
    /// other nodes close their device sockets, which reload).
    pub async fn publish(&self, accounts: &[AccountId], push: &Push) -> Result<(), BusError> {
        let Some(text) = push.encode() else {
            return Ok(());
        };
        for a in accounts {
            self.push_text(*a, &text);
        }
        match &self.bus {
            DeviceBus::Local => Ok(()),
            DeviceBus::Redis(bus) => {
                let (tx, rx) = oneshot::channel();
                bus.event(accounts, &text, Some(tx));
                rx.await
                    .unwrap_or_else(|_| Err(BusError("shutting down".into())))
            }
        }
    }

    /// Pushes `push` to the device sockets of `accounts` unless a newer
    /// push of `topic` was delivered: for a state whose changes may be
    /// published by different nodes at once (an account's presence), so
    /// that every socket ends on the newest. `version` (microseconds on
    /// Redis's clock, from the shared presence) orders a topic's pushes.
    pub fn push_versioned(
        &self,
        topic: AccountId,
        version: u64,
        accounts: &[AccountId],
        push: &Push,
    ) {
        let Some(text) = push.encode() else { return };
        self.push_text_versioned(topic, version, accounts, &text);
        if let DeviceBus::Redis(bus) = &self.bus {
            bus.versioned(topic, version, accounts, &text);
        }
    }

    fn push_text_versioned(
        &self,
        topic: AccountId,
        version: u64,
        accounts: &[AccountId],
        text: &Arc<str>,
    ) {
        {
            let Ok(mut v) = self.versions.lock() else {
                return;
            };
            let last = v.entry(topic).or_default();
            if *last >= version {
                tracing::debug!(%topic, version, last = *last, "a superseded push: dropped");
                return;
            }
            *last = version;
        }
        for a in accounts {
            self.push_text(*a, text);
        }
    }

    /// Forgets the versions older than `now_ms` less a minute (a topic's
    /// versions come from one clock in one order, and a race lasts far less).
    fn forget_versions_before(&self, now_ms: i64) {
        let horizon = u64::try_from(now_ms.saturating_sub(60_000))
            .unwrap_or(0)
            .saturating_mul(1000);
        if let Ok(mut v) = self.versions.lock() {
            v.retain(|_, version| *version >= horizon);
        }
    }

    /// Delivers to this node's device sockets of `account`.
    fn push_text(&self, account: AccountId, text: &Arc<str>) {
        let full: Vec<u64> = {
            let Ok(m) = self.conns.lock() else { return };
            let Some(list) = m.get(&account) else { return };
            list.iter()
                .filter(|c| c.kind == ConnKind::Device)
                .filter(|c| c.tx.try_send(HubMsg::Event(text.clone())).is_err())
                .map(|c| c.id)
                .collect()
        };
        if !full.is_empty() {
            tracing::warn!(%account, dropped = full.len(), "push queue full: dropping slow connections");
            self.remove(account, |c| full.contains(&c.id));
        }
    }

    /// Closes every connection of `device` (after sending `event` to its
    /// device sockets); returns how many there were on this node.
    pub fn close_device(
        &self,
        account: AccountId,
        device: DeviceId,
        event: Option<&Push>,
        code: u16,
        reason: &'static str,
    ) -> usize {
        let event = event.and_then(Push::encode);
        if let DeviceBus::Redis(bus) = &self.bus {
            bus.close_device(account, device, event.as_deref(), code);
        }
        let gone = self.remove(account, |c| c.device == device);
        Self::close(gone, event, code, reason)
    }

    /// Closes every connection of `account` (after sending `event` to its
    /// device sockets); returns how many there were on this node.
    pub fn close_account(
        &self,
        account: AccountId,
        event: Option<&Push>,
        code: u16,
        reason: &'static str,
    ) -> usize {
        let event = event.and_then(Push::encode);
        if let DeviceBus::Redis(bus) = &self.bus {
            bus.close_account(account, event.as_deref(), code);
        }
        let gone = self.remove(account, |_| true);
        Self::close(gone, event, code, reason)
    }

    /// Closes every device socket of this node (the bus was lost: their
    /// clients reconnect and reload); how many.
    fn close_all_devices(&self, code: u16, reason: &'static str) -> usize {
        let gone: Vec<Conn> = {
            let Ok(mut m) = self.conns.lock() else {
                return 0;
            };
            let mut gone = Vec::new();
            m.retain(|_, list| {
                let (g, kept): (Vec<Conn>, Vec<Conn>) = std::mem::take(list)
                    .into_iter()
                    .partition(|c| c.kind == ConnKind::Device);
                gone.extend(g);
                *list = kept;
                !list.is_empty()
            });
            gone
        };
        Self::close(gone, None, code, reason)
    }

    /// This node's device sockets, as (account, device) pairs.
    fn local_devices(&self) -> Vec<(AccountId, DeviceId)> {
        self.devices_with(ConnKind::Device)
    }

    fn close(gone: Vec<Conn>, event: Option<Arc<str>>, code: u16, reason: &'static str) -> usize {
        for c in &gone {
            let event = (c.kind == ConnKind::Device)
                .then(|| event.clone())
                .flatten();
            // A full queue drops the sender: the connection closes all the same.
            let _ = c.tx.try_send(HubMsg::Close {
                event,
                code,
                reason,
            });
        }
        gone.len()
    }

    /// The devices of `account` with a device socket open, on any node.
    pub async fn connected_devices(&self, account: AccountId) -> Result<Vec<DeviceId>, BusError> {
        let mut here = self.connected_here(account);
        if let DeviceBus::Redis(bus) = &self.bus {
            here.extend(bus.connected(account).await?);
            here.sort();
            here.dedup();
        }
        Ok(here)
    }

    /// The devices of `account` with a device socket open on this node.
    fn connected_here(&self, account: AccountId) -> Vec<DeviceId> {
        let Ok(m) = self.conns.lock() else {
            return Vec::new();
        };
        let mut out: Vec<DeviceId> = m
            .get(&account)
            .map(|l| {
                l.iter()
                    .filter(|c| c.kind == ConnKind::Device)
                    .map(|c| c.device)
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::push::SignOutReason;

    #[tokio::test]
    async fn pushes_reach_device_sockets_and_closes_reach_everything() {
        let hub = Hub::new(DeviceBus::Local);
        let (a, b) = (AccountId(1), AccountId(2));
        let (_r1, mut phone) = hub.register(a, DeviceId(1), ConnKind::Device);
        let (_r2, mut room) = hub.register(a, DeviceId(1), ConnKind::Room);
        let (_r3, mut desk) = hub.register(a, DeviceId(2), ConnKind::Device);
        let (_r4, mut other) = hub.register(b, DeviceId(3), ConnKind::Device);
        hub.push(a, &Push::MissedCalls { count: 2 });
        let text = r#"{"type":"missed_calls","count":2}"#;
        assert!(matches!(phone.recv().await, Some(HubMsg::Event(t)) if &*t == text));
        assert!(matches!(desk.recv().await, Some(HubMsg::Event(t)) if &*t == text));
        assert!(room.try_recv().is_err());
        assert!(other.try_recv().is_err());
        assert_eq!(
            hub.connected_devices(a).await,
            Ok(vec![DeviceId(1), DeviceId(2)])
        );

        let bye = Push::SessionRevoked {
            device_id: DeviceId(1),
            reason: SignOutReason::Revoked,
        };
        let n = hub.close_device(a, DeviceId(1), Some(&bye), 4001, "revoked");
        assert_eq!(n, 2);
        let text = r#"{"type":"session_revoked","device_id":1,"reason":"revoked"}"#;
        assert!(matches!(
            phone.recv().await,
            Some(HubMsg::Close {
                event: Some(t),
                code: 4001,
                ..
            }) if &*t == text
        ));
        assert!(matches!(
            room.recv().await,
            Some(HubMsg::Close { event: None, .. })
        ));
        assert_eq!(hub.connected_devices(a).await, Ok(vec![DeviceId(2)]));
        drop(_r3);
        assert_eq!(hub.connected_devices(a).await, Ok(vec![]));
        assert_eq!(hub.close_account(b, None, 4002, "disabled"), 1);
    }

    async fn node(redis: &vela_testkit::Redis, name: &str) -> (Hub, watch::Sender<bool>) {
        let cluster = Cluster::for_test(redis, name, Some((100, 600))).await;
        let (tx, rx) = watch::channel(false);
        (Hub::clustered(cluster, rx).await, tx)
    }

    async fn next(rx: &mut mpsc::Receiver<HubMsg>) -> HubMsg {
        tokio::time::timeout(std::time::Duration::from_secs(3), rx.recv())
            .await
            .expect("in time")
            .expect("open")
    }

    #[tokio::test]
    async fn pushes_and_closes_cross_nodes_in_order_and_an_outage_closes_device_sockets() {
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            let mut redis = vela_testkit::Redis::start();
            let (n1, _s1) = node(&redis, "n1").await;
            let (n2, _s2) = node(&redis, "n2").await;
            let a = AccountId(7);
            let (_r, mut phone) = n2.register(a, DeviceId(1), ConnKind::Device);
            let (_r2, mut room) = n2.register(a, DeviceId(1), ConnKind::Room);
            // Announced to every node.
            let until = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
            while n1.connected_devices(a).await != Ok(vec![DeviceId(1)]) {
                assert!(tokio::time::Instant::now() < until, "not announced");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            // In order, once each.
            for count in 0..50 {
                n1.push(a, &Push::MissedCalls { count });
            }
            n1.publish(&[a], &Push::MissedCalls { count: 50 })
                .await
                .expect("published");
            for count in 0..=50 {
                let want = format!(r#"{{"type":"missed_calls","count":{count}}}"#);
                assert!(matches!(next(&mut phone).await, HubMsg::Event(t) if *t == want));
            }
            assert!(phone.try_recv().is_err());
            // A close reaches the device's room session too, at once.
            let bye = Push::SessionRevoked {
                device_id: DeviceId(1),
                reason: SignOutReason::Revoked,
            };
            assert_eq!(
                n1.close_device(a, DeviceId(1), Some(&bye), CLOSE_REVOKED, "revoked"),
                0
            );
            assert!(matches!(
                next(&mut phone).await,
                HubMsg::Close {
                    event: Some(_),
                    code: CLOSE_REVOKED,
                    ..
                }
            ));
            assert!(matches!(
                next(&mut room).await,
                HubMsg::Close {
                    event: None,
                    code: CLOSE_REVOKED,
                    ..
                }
            ));
            drop((_r, _r2));
            // Versioned pushes: an older version than one delivered is dropped.
            let (_r6, mut tab) = n2.register(a, DeviceId(5), ConnKind::Device);
            let (_r7, mut mine) = n1.register(a, DeviceId(6), ConnKind::Device);
            let missed = |count| Push::MissedCalls { count };
            let want = |count| format!(r#"{{"type":"missed_calls","count":{count}}}"#);
            n1.push_versioned(AccountId(1), 10, &[a], &missed(10));
            for rx in [&mut tab, &mut mine] {
                assert!(matches!(next(rx).await, HubMsg::Event(t) if *t == want(10)));
            }
            n1.push_versioned(AccountId(1), 9, &[a], &missed(9));
            n2.push_versioned(AccountId(1), 8, &[a], &missed(8));
            n1.push_versioned(AccountId(1), 11, &[a], &missed(11));
            for rx in [&mut tab, &mut mine] {
                assert!(matches!(next(rx).await, HubMsg::Event(t) if *t == want(11)));
            }
            assert!(tab.try_recv().is_err() && mine.try_recv().is_err());
            drop((_r6, _r7));
            let (_r3, mut desk) = n2.register(a, DeviceId(2), ConnKind::Device);
            // Redis goes away: the device socket is closed, a publish refused
            // (once the node knows), and a new socket refused.
            redis.stop();
            assert!(matches!(
                next(&mut desk).await,
                HubMsg::Close {
                    code: CLOSE_BUS_LOST,
                    ..
                }
            ));
            assert!(
                n2.publish(&[a], &Push::MissedCalls { count: 1 })
                    .await
                    .is_err()
            );
            let (_r4, mut late) = n2.register(a, DeviceId(3), ConnKind::Device);
            assert!(matches!(
                next(&mut late).await,
                HubMsg::Close {
                    code: CLOSE_BUS_DOWN,
                    ..
                }
            ));
            // Back: both nodes resubscribe, and pushes flow again.
            redis.restart();
            let until = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            let (_r5, mut again) = loop {
                let (r, mut rx) = n2.register(a, DeviceId(4), ConnKind::Device);
                if rx.try_recv().is_err()
                    && n1
                        .publish(&[a], &Push::MissedCalls { count: 9 })
                        .await
                        .is_ok()
                {
                    break (r, rx);
                }
                assert!(tokio::time::Instant::now() < until, "not back");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            };
            assert!(
                matches!(next(&mut again).await, HubMsg::Event(t) if t.contains("\"count\":9"))
            );
        })
        .await
        .expect("timed out");
    }
}
