//! A signed-in device's room connection (a room socket session, or a WHIP
//! or WHEP session) holds a [`DeviceLease`]: registered with the hub, so
//! that signing the device out or disabling its account ends it, and the
//! account shown as in a call, until the lease is dropped.

use tokio::sync::mpsc;

use crate::domain::ids::{AccountId, DeviceId};
use crate::services::hub::{ConnKind, Hub, HubMsg, Registration};
use crate::services::presence::PresenceHandle;

/// A device's room connection, registered and in a call until dropped.
#[derive(Debug)]
pub struct DeviceLease {
    /// `Some` until dropped: unregistered before the call ends, as the
    /// connection's end always did.
    registration: Option<Registration>,
    orders: mpsc::Receiver<HubMsg>,
    account: AccountId,
    device: DeviceId,
    presence: PresenceHandle,
}

impl DeviceLease {
    /// Registers the connection and shows the account as in a call.
    pub fn take(
        hub: &Hub,
        presence: &PresenceHandle,
        account: AccountId,
        device: DeviceId,
    ) -> Self {
        let (registration, orders) = hub.register(account, device, ConnKind::Room);
        presence.call_started(account, device);
        DeviceLease {
            registration: Some(registration),
            orders,
            account,
            device,
            presence: presence.clone(),
        }
    }

    /// The next order for a leased connection, never with `None`: waits
    /// forever. Pushes (`HubMsg::Event`) are for device sockets: a room
    /// connection ignores them. `None` from the hub means the hub is gone.
    pub async fn next_order(lease: Option<&mut DeviceLease>) -> Option<HubMsg> {
        match lease {
            Some(l) => l.orders.recv().await,
            None => std::future::pending().await,
        }
    }
}

impl Drop for DeviceLease {
    fn drop(&mut self) {
        drop(self.registration.take());
        self.presence.call_ended(self.account, self.device);
    }
}
