//! Who is connected: account -> device -> live connections, and how pushes
//! reach them ([`DeviceBus`]: this process only, until a cluster's bus).
//!
//! Device sockets (`/api/v1/ws`) receive pushes (presence, address book
//! changes, contact requests) through the hub; room sessions joined with an
//! account token register too, so that revoking a device or disabling an
//! account closes every connection it has at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::domain::ids::{AccountId, DeviceId};
use crate::services::push::Push;

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
/// wherever they are: the seam a cluster's bus (issue 18: Redis) joins as a
/// variant, picked at start in `server`. An enum, not a trait object: one
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceBus {
    /// One node: every connection is in this process's registry, and a push
    /// is delivered as it is sent.
    Local,
}

/// The live connections of this node, and the bus to the others; cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct Hub {
    conns: Arc<Mutex<HashMap<AccountId, Vec<Conn>>>>,
    next: Arc<AtomicU64>,
    bus: DeviceBus,
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
        self.hub.remove(self.account, |c| c.id == self.id);
    }
}

impl Hub {
    /// No connections yet; pushes and closes go over `bus`.
    pub fn new(bus: DeviceBus) -> Self {
        Hub {
            conns: Arc::default(),
            next: Arc::default(),
            bus,
        }
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

    /// Pushes `push` to the device sockets of several accounts.
    pub fn push_all(&self, accounts: &[AccountId], push: &Push) {
        let Some(text) = push.encode() else { return };
        match self.bus {
            DeviceBus::Local => {
                for a in accounts {
                    self.push_text(*a, &text);
                }
            }
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
        match self.bus {
            DeviceBus::Local => {
                let gone = self.remove(account, |c| c.device == device);
                Self::close(gone, event.and_then(Push::encode), code, reason)
            }
        }
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
        match self.bus {
            DeviceBus::Local => {
                let gone = self.remove(account, |_| true);
                Self::close(gone, event.and_then(Push::encode), code, reason)
            }
        }
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

    /// The devices of `account` with a device socket open.
    pub fn connected_devices(&self, account: AccountId) -> Vec<DeviceId> {
        match self.bus {
            DeviceBus::Local => self.connected_here(account),
        }
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
        assert_eq!(hub.connected_devices(a), vec![DeviceId(1), DeviceId(2)]);

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
        assert_eq!(hub.connected_devices(a), vec![DeviceId(2)]);
        drop(_r3);
        assert!(hub.connected_devices(a).is_empty());
        assert_eq!(hub.close_account(b, None, 4002, "disabled"), 1);
    }
}
