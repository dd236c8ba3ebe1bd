//! [`DeviceBus::Redis`](super::DeviceBus): pushes and closes between the
//! nodes of a cluster over Redis pub/sub.
//!
//! # Channel
//! One channel for every node (`vela:bus`): each node subscribes once (one
//! connection) and delivers a frame to the connections of its own registry
//! that it addresses, ignoring the rest. A channel per node with a routing
//! set (account -> nodes) would spare each node the frames for others, but
//! the set must follow every connect and disconnect, and a push racing a
//! socket's connect to another node would miss it; a cluster of a handful
//! of nodes pays less for the extra fan-out (Redis copies a frame to each
//! subscriber; a node drops a frame for an account it does not hold with
//! one lookup) than for that bookkeeping.
//!
//! # Frames
//! Binary, little-endian: `kind u8 | origin u64 | seq u64 | body`, where
//! the body is, per kind:
//! - `E` (push): `n u32 | n x account i64 | text` (the push as serialised
//!   once by [`Push::encode`](crate::services::push::Push::encode), sent as
//!   is: no second encoding);
//! - `D` (close a device): `account i64 | device i64 | code u16 | text?`;
//! - `A` (close an account): `account i64 | code u16 | text?`;
//! - `V` (a push that supersedes the older ones of its topic, e.g. an
//!   account's presence): `topic i64 | version u64 |` then as `E`; a node
//!   delivers it only if it is newer than the last it delivered of the
//!   topic, so that changes published by different nodes in a race end on
//!   the newest everywhere;
//! - `H` (heartbeat): nothing.
//!
//! `origin` is random per process start, `seq` counts the frames an origin
//! published (or meant to); a heartbeat carries the last frame's number
//! without counting itself, so that losing one loses nothing. One publisher task per node writes them in
//! order over one connection, so Redis relays them in order: pushes from
//! one node reach each socket in the order they were sent. A node delivers
//! its own pushes to its own sockets directly, and skips its frames.
//!
//! # Outages: close or refuse, never drop silently
//! - A receiver that sees a gap in an origin's `seq` lost frames (a publish
//!   failed there): it closes all its device sockets (1012), whose clients
//!   reconnect and reload. A repeated or older `seq` is dropped: at most
//!   once.
//! - Each node hears its own heartbeat frames (every `cluster.heartbeat_ms`)
//!   come back; when none has for `cluster.node_timeout_ms`, or the
//!   subscription ends (Redis restarted), the node takes its subscription
//!   as broken: it closes its device sockets and subscribes again, and
//!   until it has, refuses new device sockets (1013) and publishes (a
//!   [`BusError`], 503 for an HTTP request), skipping a `seq` so that the
//!   other nodes see the gap.
//! - Room sessions are not closed (rooms go on through an outage): after a
//!   gap or a new subscription, [`Hub::missed_closes`] changes and the
//!   node checks its room sessions' devices against the store
//!   (`Devices::watch_missed_closes`), ending those signed out meanwhile.
//!
//! # Connected devices
//! Each node keeps `vela:hub:devices:{account}`, a sorted set of
//! `{device}@{node}` scored by an expiry (now + `cluster.node_timeout_ms`),
//! added on connect, removed on disconnect and renewed every heartbeat; a
//! read takes the members not yet expired, so a dead node's sockets drop
//! out after the node timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};

use super::{CLOSE_DISABLED, CLOSE_REVOKED, Hub};
use crate::domain::ids::{AccountId, DeviceId, now_ms};
use crate::services::cluster::Cluster;

/// WebSocket close code when this node lost the cluster bus (or saw a
/// frame lost): the client reconnects and reloads (Service Restart).
pub const CLOSE_BUS_LOST: u16 = 1012;
/// WebSocket close code when a device socket opens while this node is
/// not on the cluster bus (Try Again Later).
pub const CLOSE_BUS_DOWN: u16 = 1013;

/// The most queued messages one Redis round trip carries.
const BATCH: usize = 512;
/// Header: kind, origin, seq.
const HEADER: usize = 17;

/// A push or close could not be handed to the other nodes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the cluster bus is unavailable: {0}")]
pub struct BusError(pub String);

#[derive(Debug)]
enum Out {
    /// A frame without its `seq` yet, and who waits for its publication.
    Frame(Vec<u8>, Option<oneshot::Sender<Result<(), BusError>>>),
    Announce(AccountId, DeviceId),
    Withdraw(AccountId, DeviceId),
}

/// This node's end of the bus: the publisher's queue and the
/// subscription's state.
#[derive(Debug)]
pub struct RedisBus {
    cluster: Cluster,
    origin: u64,
    queue: mpsc::UnboundedSender<Out>,
    /// Subscribed, and hearing its own heartbeats.
    live: AtomicBool,
    /// A frame was refused while not live: the next `seq` skips one.
    skipped: AtomicBool,
}

fn devices_key(account: AccountId) -> String {
    Cluster::key(&["hub", "devices", &account.0.to_string()])
}

fn channel() -> String {
    Cluster::key(&["bus"])
}

/// Appends `n u32 | n x account i64`.
fn put_accounts(f: &mut Vec<u8>, accounts: &[AccountId]) {
    // A push goes to an account and its contacts: far below u32::MAX.
    let n = u32::try_from(accounts.len()).unwrap_or(u32::MAX);
    f.extend_from_slice(&n.to_le_bytes());
    for a in accounts.iter().take(n as usize) {
        f.extend_from_slice(&a.0.to_le_bytes());
    }
}

fn frame(kind: u8, origin: u64, body_len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER + body_len);
    f.push(kind);
    f.extend_from_slice(&origin.to_le_bytes());
    f.extend_from_slice(&0u64.to_le_bytes());
    f
}

/// The close reason for a close code received from another node (a close
/// reason is a `&'static str`; the codes say it all).
fn reason_of(code: u16) -> &'static str {
    match code {
        CLOSE_REVOKED => "session revoked",
        CLOSE_DISABLED => "account disabled",
        _ => "closed",
    }
}

impl RedisBus {
    /// Starts the bus of `hub`'s node: its publisher and its subscriber,
    /// which run until `shutdown`. Waits (up to the node timeout) for the
    /// first subscription, so that the node starts on the bus.
    pub(super) async fn start(
        cluster: Cluster,
        make_hub: impl FnOnce(Arc<RedisBus>) -> Hub,
        shutdown: watch::Receiver<bool>,
    ) -> Hub {
        let (queue, rx) = mpsc::unbounded_channel();
        let mut origin = [0u8; 8];
        // Without randomness, the time is unique enough among a cluster's starts.
        if getrandom::fill(&mut origin).is_err() {
            origin = now_ms().to_le_bytes();
        }
        let bus = Arc::new(RedisBus {
            cluster,
            origin: u64::from_le_bytes(origin),
            queue,
            live: AtomicBool::new(false),
            skipped: AtomicBool::new(false),
        });
        let hub = make_hub(bus.clone());
        let (subscribed_tx, mut subscribed) = watch::channel(false);
        tokio::spawn(publish_loop(hub.clone(), bus.clone(), rx, shutdown.clone()));
        tokio::spawn(subscribe_loop(
            hub.clone(),
            bus.clone(),
            subscribed_tx,
            shutdown,
        ));
        let wait = Duration::from_millis(bus.cluster.config().node_timeout_ms.max(1000));
        if tokio::time::timeout(wait, subscribed.wait_for(|s| *s))
            .await
            .is_err()
        {
            tracing::warn!("not yet on the cluster bus: device sockets are refused until then");
        }
        hub
    }

    /// Whether the node is on the bus (device sockets may open).
    pub(super) fn live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    fn send(&self, frame: Vec<u8>, ack: Option<oneshot::Sender<Result<(), BusError>>>) {
        if !self.live() {
            self.skipped.store(true, Ordering::Release);
            if let Some(ack) = ack {
                let _ = ack.send(Err(BusError("not subscribed".into())));
            }
            return;
        }
        // The publisher is gone only at shutdown.
        if let Err(mpsc::error::SendError(Out::Frame(_, Some(ack)))) =
            self.queue.send(Out::Frame(frame, ack))
        {
            let _ = ack.send(Err(BusError("shutting down".into())));
        }
    }

    /// Publishes a push to `accounts` (fire and forget).
    pub(super) fn event(
        &self,
        accounts: &[AccountId],
        text: &str,
        ack: Option<oneshot::Sender<Result<(), BusError>>>,
    ) {
        let mut f = frame(b'E', self.origin, 4 + 8 * accounts.len() + text.len());
        put_accounts(&mut f, accounts);
        f.extend_from_slice(text.as_bytes());
        self.send(f, ack);
    }

    /// Publishes a push that supersedes the older ones of `topic`.
    pub(super) fn versioned(
        &self,
        topic: AccountId,
        version: u64,
        accounts: &[AccountId],
        text: &str,
    ) {
        let mut f = frame(b'V', self.origin, 20 + 8 * accounts.len() + text.len());
        f.extend_from_slice(&topic.0.to_le_bytes());
        f.extend_from_slice(&version.to_le_bytes());
        put_accounts(&mut f, accounts);
        f.extend_from_slice(text.as_bytes());
        self.send(f, None);
    }

    /// Publishes a close of every connection of `device`.
    pub(super) fn close_device(
        &self,
        account: AccountId,
        device: DeviceId,
        event: Option<&str>,
        code: u16,
    ) {
        let event = event.unwrap_or("");
        let mut f = frame(b'D', self.origin, 18 + event.len());
        f.extend_from_slice(&account.0.to_le_bytes());
        f.extend_from_slice(&device.0.to_le_bytes());
        f.extend_from_slice(&code.to_le_bytes());
        f.extend_from_slice(event.as_bytes());
        self.send(f, None);
    }

    /// Publishes a close of every connection of `account`.
    pub(super) fn close_account(&self, account: AccountId, event: Option<&str>, code: u16) {
        let event = event.unwrap_or("");
        let mut f = frame(b'A', self.origin, 10 + event.len());
        f.extend_from_slice(&account.0.to_le_bytes());
        f.extend_from_slice(&code.to_le_bytes());
        f.extend_from_slice(event.as_bytes());
        self.send(f, None);
    }

    /// Announces a device socket of this node.
    pub(super) fn announce(&self, account: AccountId, device: DeviceId) {
        let _ = self.queue.send(Out::Announce(account, device));
    }

    /// Withdraws a device socket of this node.
    pub(super) fn withdraw(&self, account: AccountId, device: DeviceId) {
        let _ = self.queue.send(Out::Withdraw(account, device));
    }

    fn member(&self, device: DeviceId) -> String {
        format!("{}@{}", device.0, self.cluster.node().id)
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.cluster.config().node_timeout_ms).unwrap_or(i64::MAX)
    }

    /// The devices of `account` with a device socket on any node.
    pub(super) async fn connected(&self, account: AccountId) -> Result<Vec<DeviceId>, BusError> {
        let mut redis = self.cluster.redis();
        let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(devices_key(account))
            .arg(now_ms())
            .arg("+inf")
            .query_async(&mut redis)
            .await
            .map_err(|e| BusError(e.to_string()))?;
        Ok(members
            .iter()
            .filter_map(|m| m.split('@').next()?.parse().ok())
            .map(DeviceId)
            .collect())
    }

    /// Handles one frame from the channel; `true` if it is this node's own.
    fn receive(&self, hub: &Hub, bytes: &[u8], seqs: &mut HashMap<u64, u64>) -> bool {
        let Some((head, body)) = bytes.split_at_checked(HEADER) else {
            tracing::warn!(len = bytes.len(), "a bus frame too short: ignored");
            return false;
        };
        let kind = head[0];
        let origin = u64::from_le_bytes(head[1..9].try_into().unwrap_or_default());
        let seq = u64::from_le_bytes(head[9..17].try_into().unwrap_or_default());
        if origin == self.origin {
            return true;
        }
        // A heartbeat carries the number of the origin's last frame (a
        // lost heartbeat loses nothing); any other frame the next number.
        let expected = |last: u64| if kind == b'H' { last } else { last + 1 };
        match seqs.insert(origin, seq) {
            Some(last) if seq < expected(last) => {
                seqs.insert(origin, last);
                if kind != b'H' {
                    tracing::warn!(origin, seq, last, "a repeated bus frame: dropped");
                }
                return false;
            }
            Some(last) if seq > expected(last) => {
                let n = hub.close_all_devices(CLOSE_BUS_LOST, "cluster bus lost pushes");
                hub.note_missed();
                tracing::warn!(
                    origin,
                    lost = seq - expected(last),
                    closed = n,
                    "bus frames lost: device sockets closed, their clients reload"
                );
            }
            _ => {}
        }
        let text = |b: &[u8]| -> Option<Arc<str>> {
            (!b.is_empty())
                .then(|| std::str::from_utf8(b).ok().map(Arc::from))
                .flatten()
        };
        let i64_at = |b: &[u8], at: usize| -> Option<i64> {
            Some(i64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
        };
        let u16_at = |b: &[u8], at: usize| -> Option<u16> {
            Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
        };
        let event = |body: &[u8]| -> Option<(Vec<AccountId>, Arc<str>)> {
            let n = usize::try_from(u32::from_le_bytes(body.get(..4)?.try_into().ok()?)).ok()?;
            let accounts: Vec<AccountId> = (0..n)
                .map(|i| i64_at(body, 4 + 8 * i).map(AccountId))
                .collect::<Option<_>>()?;
            Some((accounts, text(body.get(4 + 8 * n..)?)?))
        };
        let done = match kind {
            b'E' => event(body).map(|(accounts, t)| {
                for a in accounts {
                    hub.push_text(a, &t);
                }
            }),
            b'V' => (|| {
                let topic = AccountId(i64_at(body, 0)?);
                let version = u64::try_from(i64_at(body, 8)?).ok()?;
                let (accounts, t) = event(body.get(16..)?)?;
                hub.push_text_versioned(topic, version, &accounts, &t);
                Some(())
            })(),
            b'D' => (|| {
                let (account, device) = (AccountId(i64_at(body, 0)?), DeviceId(i64_at(body, 8)?));
                let code = u16_at(body, 16)?;
                let gone = hub.remove(account, |c| c.device == device);
                Hub::close(gone, text(body.get(18..)?), code, reason_of(code));
                Some(())
            })(),
            b'A' => (|| {
                let account = AccountId(i64_at(body, 0)?);
                let code = u16_at(body, 8)?;
                let gone = hub.remove(account, |_| true);
                Hub::close(gone, text(body.get(10..)?), code, reason_of(code));
                Some(())
            })(),
            b'H' => Some(()),
            _ => None,
        };
        if done.is_none() {
            tracing::warn!(kind, len = bytes.len(), "a malformed bus frame: ignored");
        }
        false
    }
}

/// Publishes the queue in order, in batches (one round trip each), with a
/// heartbeat frame and the renewal of this node's device sockets every
/// `cluster.heartbeat_ms`.
async fn publish_loop(
    hub: Hub,
    bus: Arc<RedisBus>,
    mut rx: mpsc::UnboundedReceiver<Out>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut redis = bus.cluster.redis();
    let channel = channel();
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(
        bus.cluster.config().heartbeat_ms.max(10),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let mut renew = false;
        tokio::select! {
            m = rx.recv() => match m {
                Some(m) => batch.push(m),
                None => return,
            },
            _ = tick.tick() => renew = true,
            _ = shutdown.wait_for(|s| *s) => return,
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        if bus.skipped.swap(false, Ordering::AcqRel) {
            // Frames were refused: the others must see a gap.
            seq += 1;
        }
        let now = now_ms();
        let expires = now.saturating_add(bus.ttl_ms());
        let mut pipe = redis::pipe();
        let mut acks = Vec::new();
        for m in batch.drain(..) {
            match m {
                Out::Frame(mut f, ack) => {
                    seq += 1;
                    f[9..17].copy_from_slice(&seq.to_le_bytes());
                    pipe.cmd("PUBLISH").arg(&channel).arg(f).ignore();
                    acks.extend(ack);
                }
                Out::Announce(a, d) => {
                    let key = devices_key(a);
                    pipe.cmd("ZADD")
                        .arg(&key)
                        .arg(expires)
                        .arg(bus.member(d))
                        .ignore();
                    pipe.cmd("PEXPIRE").arg(&key).arg(bus.ttl_ms()).ignore();
                }
                Out::Withdraw(a, d) => {
                    pipe.cmd("ZREM")
                        .arg(devices_key(a))
                        .arg(bus.member(d))
                        .ignore();
                }
            }
        }
        if renew {
            hub.forget_versions_before(now);
            let mut h = frame(b'H', bus.origin, 0);
            h[9..17].copy_from_slice(&seq.to_le_bytes());
            pipe.cmd("PUBLISH").arg(&channel).arg(h).ignore();
            for (a, d) in hub.local_devices() {
                let key = devices_key(a);
                pipe.cmd("ZADD")
                    .arg(&key)
                    .arg(expires)
                    .arg(bus.member(d))
                    .ignore();
                pipe.cmd("PEXPIRE").arg(&key).arg(bus.ttl_ms()).ignore();
                pipe.cmd("ZREMRANGEBYSCORE")
                    .arg(&key)
                    .arg("-inf")
                    .arg(now)
                    .ignore();
            }
        }
        let sent: redis::RedisResult<()> = pipe.query_async(&mut redis).await;
        let result = sent.map_err(|e| {
            tracing::warn!(error = %e, "cannot publish on the cluster bus");
            BusError(e.to_string())
        });
        for ack in acks {
            let _ = ack.send(result.clone());
        }
    }
}

/// Keeps this node subscribed: delivers frames; on a broken subscription
/// closes the device sockets and subscribes again.
async fn subscribe_loop(
    hub: Hub,
    bus: Arc<RedisBus>,
    subscribed: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let channel = channel();
    let config = bus.cluster.config();
    let silence = Duration::from_millis(
        config
            .node_timeout_ms
            .max(config.heartbeat_ms.saturating_mul(3)),
    );
    let mut first = true;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let Some(mut stream) = bus
            .cluster
            .subscribe(
                std::slice::from_ref(&channel),
                "the cluster bus",
                &mut shutdown,
            )
            .await
        else {
            return;
        };
        let mut seqs = HashMap::new();
        let mut heard = tokio::time::Instant::now();
        bus.live.store(true, Ordering::Release);
        let _ = subscribed.send(true);
        tracing::info!("on the cluster bus");
        if !first {
            // Closes published while off the bus never came.
            hub.note_missed();
        }
        first = false;
        let why = loop {
            tokio::select! {
                m = stream.next() => match m {
                    Some(m) => {
                        if bus.receive(&hub, m.get_payload_bytes(), &mut seqs) {
                            heard = tokio::time::Instant::now();
                        }
                    }
                    None => break "subscription ended",
                },
                _ = tokio::time::sleep_until(heard + silence) => break "no own heartbeat heard",
                _ = shutdown.wait_for(|s| *s) => return,
            }
        };
        bus.live.store(false, Ordering::Release);
        let _ = subscribed.send(false);
        let closed = hub.close_all_devices(CLOSE_BUS_LOST, "cluster bus lost");
        tracing::warn!(
            why,
            closed,
            "lost the cluster bus: device sockets closed, subscribing again"
        );
        tokio::time::sleep(crate::services::cluster::RESUBSCRIBE_DELAY).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::services::hub::{ConnKind, DeviceBus, HubMsg};
    use crate::services::push::Push;

    async fn node(redis: &vela_testkit::Redis, name: &str) -> (Hub, watch::Sender<bool>) {
        let cluster = Cluster::for_test(redis, name, Some((100, 600))).await;
        let (tx, rx) = watch::channel(false);
        (Hub::clustered(cluster, rx).await, tx)
    }

    async fn next(rx: &mut mpsc::Receiver<HubMsg>) -> HubMsg {
        tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .expect("in time")
            .expect("open")
    }

    #[tokio::test]
    async fn a_lost_frame_closes_device_sockets_and_a_repeated_one_is_dropped() {
        tokio::time::timeout(Duration::from_secs(20), async {
            let redis = vela_testkit::Redis::start();
            let (n1, _s1) = node(&redis, "n1").await;
            let (n2, _s2) = node(&redis, "n2").await;
            let a = AccountId(3);
            let (_r, mut phone) = n2.register(a, DeviceId(1), ConnKind::Device);
            let (_room, mut room) = n2.register(a, DeviceId(1), ConnKind::Room);
            n1.publish(&[a], &Push::MissedCalls { count: 1 })
                .await
                .expect("published");
            assert!(matches!(next(&mut phone).await, HubMsg::Event(_)));

            // A frame replayed (same origin and number): dropped.
            let DeviceBus::Redis(bus) = &n1.bus else {
                panic!("a cluster's hub")
            };
            let mut replay = frame(b'E', bus.origin, 0);
            replay[9..17].copy_from_slice(&1u64.to_le_bytes());
            replay.extend_from_slice(&1u32.to_le_bytes());
            replay.extend_from_slice(&a.0.to_le_bytes());
            replay.extend_from_slice(br#"{"type":"replayed"}"#);
            let mut redis_conn = bus.cluster.redis();
            let _: () = redis::cmd("PUBLISH")
                .arg(channel())
                .arg(replay)
                .query_async(&mut redis_conn)
                .await
                .expect("publish");
            // A frame lost (as when a publish fails): the next one shows the
            // gap, and the device socket is closed (its room session kept).
            bus.skipped.store(true, Ordering::Release);
            n1.publish(&[a], &Push::MissedCalls { count: 2 })
                .await
                .expect("published");
            match next(&mut phone).await {
                HubMsg::Close { code, .. } => assert_eq!(code, CLOSE_BUS_LOST),
                other => panic!("not closed: {other:?}"),
            }
            assert!(room.try_recv().is_err());
        })
        .await
        .expect("timed out");
    }
}
