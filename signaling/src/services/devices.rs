//! Signing devices out: revoking a device in the store, closing its live
//! connections after a `session_revoked` push and taking it out of
//! presence. Logout, `DELETE /devices/{id}`, a reused refresh token, the
//! device limit, password changes and resets, and the expiry sweep all
//! sign out the same way, through this service.

use tokio::sync::watch;

use crate::domain::ids::{AccountId, DeviceId, now_ms};
use crate::services::hub::{CLOSE_DISABLED, CLOSE_REVOKED, Hub};
use crate::services::presence::PresenceHandle;
use crate::services::push::{Push, SignOutReason};
use crate::services::store::{SignInState, Store, StoreError};

/// Signs devices out; cheap to clone.
#[derive(Debug, Clone)]
pub struct Devices {
    store: Store,
    hub: Hub,
    presence: PresenceHandle,
}

impl Devices {
    /// The service over these parts.
    pub fn new(store: Store, hub: Hub, presence: PresenceHandle) -> Self {
        Devices {
            store,
            hub,
            presence,
        }
    }

    /// Closes every live connection of `device` (after a `session_revoked`
    /// push) and takes it out of presence. The store is already updated.
    pub fn disconnect(&self, account: AccountId, device: DeviceId, reason: SignOutReason) {
        let event = Push::SessionRevoked {
            device_id: device,
            reason,
        };
        let n = self.hub.close_device(
            account,
            device,
            Some(&event),
            CLOSE_REVOKED,
            "session revoked",
        );
        self.presence.device_removed(account, device);
        tracing::info!(%account, %device, %reason, connections = n, "device signed out");
    }

    /// Until `shutdown`: each time this node may have missed closes from
    /// the cluster's other nodes (it was off the bus), checks its room
    /// sessions of signed-in devices against the store and ends those whose
    /// device was signed out or whose account was disabled meanwhile. (Its
    /// device sockets were closed then, and reload.)
    pub async fn watch_missed_closes(self, mut shutdown: watch::Receiver<bool>) {
        let mut missed = self.hub.missed_closes();
        loop {
            tokio::select! {
                changed = missed.changed() => if changed.is_err() { return },
                _ = shutdown.wait_for(|s| *s) => return,
            }
            for (account, device) in self.hub.room_sessions() {
                match self.store.sign_in_state(account, device).await {
                    Ok(SignInState::Active) => {}
                    Ok(SignInState::Disabled) => {
                        let n = self.hub.close_account(
                            account,
                            Some(&Push::AccountDisabled),
                            CLOSE_DISABLED,
                            "account disabled",
                        );
                        tracing::info!(%account, connections = n, "disabled while off the cluster bus: closed");
                    }
                    Ok(SignInState::Revoked | SignInState::Unknown) => {
                        tracing::info!(%account, %device, "signed out while off the cluster bus");
                        self.disconnect(account, device, SignOutReason::Revoked);
                    }
                    Err(e) => {
                        tracing::warn!(%account, %device, error = %e, "cannot check a room session's device");
                    }
                }
            }
        }
    }

    /// Revokes `device` in the store and disconnects it; `false` when there
    /// was no such live device.
    pub async fn revoke(
        &self,
        account: AccountId,
        device: DeviceId,
        reason: SignOutReason,
    ) -> Result<bool, StoreError> {
        let found = self.store.revoke_device(account, device, now_ms()).await?;
        if found {
            self.disconnect(account, device, reason);
        }
        Ok(found)
    }

    /// Stores `hash` as the account's password and signs out every device
    /// but `keep`; the number signed out.
    pub async fn set_password_hash(
        &self,
        account: AccountId,
        hash: &str,
        keep: Option<DeviceId>,
        reason: SignOutReason,
    ) -> Result<usize, StoreError> {
        self.store.set_password_hash(account, hash).await?;
        let revoked = self.store.revoke_devices(account, keep, now_ms()).await?;
        for d in &revoked {
            self.disconnect(account, *d, reason);
        }
        Ok(revoked.len())
    }

    /// Signs out, as `DELETE /devices/{id}` would (reason `session_expired`),
    /// every device whose session ran out at `now`: no refresh token left to
    /// use and its last access token (valid `access_ttl_ms`) expired. Then
    /// drops expired refresh tokens. Returns the devices signed out.
    pub async fn sign_out_expired(
        &self,
        now: i64,
        access_ttl_ms: i64,
    ) -> Result<usize, StoreError> {
        // A minute more: a new device gets its first refresh token just after
        // it is created.
        let idle_before = now.saturating_sub(access_ttl_ms).saturating_sub(60_000);
        let expired = self.store.expired_devices(now, idle_before).await?;
        for (account, device) in &expired {
            tracing::info!(%account, %device, "session expired: device signed out");
            self.revoke(*account, *device, SignOutReason::SessionExpired)
                .await?;
        }
        self.store.delete_expired_refresh_tokens(now).await?;
        Ok(expired.len())
    }
}
