//! Accounts, devices and refresh tokens.

use super::{Store, StoreError, unique};
use crate::domain::account::{Account, AccountSummary, Role};
use crate::domain::device::{Device, DeviceKind};
use crate::domain::ids::{AccountId, DeviceId};

row! {
    struct AccountRow {
        id: i64,
        username: String,
        display_name: String,
        roles: String,
        disabled: bool,
        created_at: i64,
    }
}

/// Stored roles, always with `user`, sorted.
fn parse_roles(text: &str) -> Vec<Role> {
    let mut roles: Vec<Role> = text.split(',').filter_map(Role::parse).collect();
    if !roles.contains(&Role::User) {
        roles.insert(0, Role::User);
    }
    roles.sort();
    roles.dedup();
    roles
}

impl AccountRow {
    fn into_account(self) -> Account {
        Account {
            id: AccountId(self.id),
            username: self.username,
            display_name: self.display_name,
            roles: parse_roles(&self.roles),
            disabled: self.disabled,
            created_at: self.created_at,
        }
    }
}

fn roles_text(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

row! {
    struct DeviceRow {
        id: i64,
        account_id: i64,
        kind: String,
        label: String,
        created_at: i64,
        last_active_at: i64,
        revoked_at: Option<i64>,
    }
}

impl From<DeviceRow> for Device {
    fn from(r: DeviceRow) -> Device {
        Device {
            id: DeviceId(r.id),
            account_id: AccountId(r.account_id),
            kind: DeviceKind::parse(&r.kind),
            label: r.label,
            created_at: r.created_at,
            last_active_at: r.last_active_at,
            revoked_at: r.revoked_at,
        }
    }
}

row! {
    struct RefreshRow {
        device_id: i64,
        expires_at: i64,
        rotated_at: Option<i64>,
        disabled: bool,
        revoked_at: Option<i64>,
        account_id: i64,
    }
}

/// Whether a token's account and device may still be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInState {
    /// Both are in good standing.
    Active,
    /// The device was revoked or logged out.
    Revoked,
    /// The account was disabled.
    Disabled,
    /// No such account or device (or they do not belong together).
    Unknown,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was current: it is now used, and the new one stored.
    Rotated {
        /// The account.
        account: AccountId,
        /// The device the token belongs to.
        device: DeviceId,
    },
    /// The token had already been used: possible theft. Nothing was stored.
    Reused {
        /// The account.
        account: AccountId,
        /// The device the token belongs to.
        device: DeviceId,
    },
    /// Unknown, expired, or its device is revoked or its account disabled.
    Invalid,
}

/// The stored presence fields of an account.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredPresence {
    /// The status text the user set ("" when none).
    pub status_text: String,
    /// When the account was last online (ms since the epoch), if ever.
    pub last_seen_at: Option<i64>,
}

impl Store {
    /// Creates an account; [`StoreError::Conflict`] when the username is taken.
    pub async fn create_account(
        &self,
        username: &str,
        display_name: &str,
        password_hash: &str,
        roles: &[Role],
        now: i64,
    ) -> Result<Account, StoreError> {
        let row: AccountRow = with_pool!(self, |pool| sqlx::query_as(
            "INSERT INTO accounts (username, display_name, password_hash, roles, created_at)
             VALUES ($1, $2, $3, $4, $5)
             RETURNING id, username, display_name, roles, disabled, created_at",
        )
        .bind(username)
        .bind(display_name)
        .bind(password_hash)
        .bind(roles_text(roles))
        .bind(now)
        .fetch_one(pool)
        .await)
        .map_err(unique)?;
        Ok(row.into_account())
    }

    /// The account and its password hash, by (normalized) username.
    pub async fn account_by_username(
        &self,
        username: &str,
    ) -> Result<Option<(Account, String)>, StoreError> {
        let row: Option<(i64, String)> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT id, password_hash FROM accounts WHERE username = $1"
        )
        .bind(username)
        .fetch_optional(pool)
        .await)?;
        let Some((id, hash)) = row else {
            return Ok(None);
        };
        Ok(self.account(AccountId(id)).await?.map(|a| (a, hash)))
    }

    /// An account by id.
    pub async fn account(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        let row: Option<AccountRow> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT id, username, display_name, roles, disabled, created_at
             FROM accounts WHERE id = $1",
        )
        .bind(id.0)
        .fetch_optional(pool)
        .await)?;
        Ok(row.map(AccountRow::into_account))
    }

    /// The password hash of an account.
    pub async fn password_hash(&self, id: AccountId) -> Result<Option<String>, StoreError> {
        Ok(with_pool!(self, |pool| sqlx::query_scalar(
            "SELECT password_hash FROM accounts WHERE id = $1"
        )
        .bind(id.0)
        .fetch_optional(pool)
        .await)?)
    }

    /// Accounts ordered by id, `limit` of them after `after`.
    pub async fn list_accounts(&self, after: i64, limit: i64) -> Result<Vec<Account>, StoreError> {
        let rows: Vec<AccountRow> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT id, username, display_name, roles, disabled, created_at
             FROM accounts WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await)?;
        Ok(rows.into_iter().map(AccountRow::into_account).collect())
    }

    /// Replaces an account's password hash.
    pub async fn set_password_hash(&self, id: AccountId, hash: &str) -> Result<(), StoreError> {
        with_pool!(self, |pool| sqlx::query(
            "UPDATE accounts SET password_hash = $1 WHERE id = $2"
        )
        .bind(hash)
        .bind(id.0)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Sets an account's display name.
    pub async fn set_display_name(&self, id: AccountId, name: &str) -> Result<(), StoreError> {
        with_pool!(self, |pool| sqlx::query(
            "UPDATE accounts SET display_name = $1 WHERE id = $2"
        )
        .bind(name)
        .bind(id.0)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Sets an account's roles.
    pub async fn set_roles(&self, id: AccountId, roles: &[Role]) -> Result<(), StoreError> {
        with_pool!(self, |pool| sqlx::query(
            "UPDATE accounts SET roles = $1 WHERE id = $2"
        )
        .bind(roles_text(roles))
        .bind(id.0)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Disables or enables an account; `false` when there is no such account.
    /// Disabling also drops every refresh token of the account.
    pub async fn set_disabled(&self, id: AccountId, disabled: bool) -> Result<bool, StoreError> {
        with_pool!(self, |pool| {
            let mut tx = pool.write_tx().await?;
            let n = sqlx::query("UPDATE accounts SET disabled = $1 WHERE id = $2")
                .bind(disabled)
                .bind(id.0)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if disabled {
                sqlx::query(
                    "DELETE FROM refresh_tokens WHERE device_id IN
                     (SELECT id FROM devices WHERE account_id = $1)",
                )
                .bind(id.0)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(n == 1)
        })
    }

    /// The stored presence fields of an account.
    pub async fn presence(&self, id: AccountId) -> Result<StoredPresence, StoreError> {
        let row: Option<(String, Option<i64>)> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT status_text, last_seen_at FROM accounts WHERE id = $1"
        )
        .bind(id.0)
        .fetch_optional(pool)
        .await)?;
        Ok(row
            .map(|(status_text, last_seen_at)| StoredPresence {
                status_text,
                last_seen_at,
            })
            .unwrap_or_default())
    }

    /// Sets the status text of an account.
    pub async fn set_status_text(&self, id: AccountId, text: &str) -> Result<(), StoreError> {
        with_pool!(self, |pool| sqlx::query(
            "UPDATE accounts SET status_text = $1 WHERE id = $2"
        )
        .bind(text)
        .bind(id.0)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Records when an account was last online (it is offline now).
    pub async fn set_last_seen(&self, id: AccountId, at: i64) -> Result<(), StoreError> {
        with_pool!(self, |pool| sqlx::query(
            "UPDATE accounts SET last_seen_at = $1, present_since = NULL, present_node = NULL
             WHERE id = $2"
        )
        .bind(at)
        .bind(id.0)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Notes that an account came online `at` on this node (until
    /// [`Store::set_last_seen`]).
    pub async fn set_present(&self, id: AccountId, at: i64) -> Result<(), StoreError> {
        with_pool!(self, |pool| sqlx::query(
            "UPDATE accounts SET present_since = $1, present_node = $2 WHERE id = $3"
        )
        .bind(at)
        .bind(&*self.node)
        .bind(id.0)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Accounts a crash of this node left present were last seen at its
    /// last heartbeat (or when they came online, if later; never after
    /// `now`): sets that and clears the mark. Only the accounts this node
    /// marked ([`Store::set_present`]): those present on other nodes sharing
    /// the database are theirs. Returns how many.
    pub async fn recover_presence(&self, now: i64) -> Result<u64, StoreError> {
        let alive = self.last_alive().await?.unwrap_or(0);
        let done = with_pool!(self, |pool| sqlx::query(pool.pick(
            "UPDATE accounts
             SET last_seen_at = MAX(COALESCE(last_seen_at, 0), MIN(MAX(present_since, $1), $2)),
                 present_since = NULL, present_node = NULL
             WHERE present_since IS NOT NULL AND present_node = $3",
            "UPDATE accounts
             SET last_seen_at = GREATEST(COALESCE(last_seen_at, 0),
                                         LEAST(GREATEST(present_since, $1), $2)),
                 present_since = NULL, present_node = NULL
             WHERE present_since IS NOT NULL AND present_node = $3",
        ))
        .bind(alive)
        .bind(now)
        .bind(&*self.node)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(done)
    }

    /// The summary of one account (`None` when there is no such account).
    pub async fn account_summary(
        &self,
        id: AccountId,
    ) -> Result<Option<AccountSummary>, StoreError> {
        let row: Option<(i64, String, String)> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT id, username, display_name FROM accounts WHERE id = $1"
        )
        .bind(id.0)
        .fetch_optional(pool)
        .await)?;
        Ok(row.map(|(id, username, display_name)| AccountSummary {
            id: AccountId(id),
            username,
            display_name,
        }))
    }

    // ----- devices -----

    /// Registers a device for an account (a login), with no limit.
    pub async fn create_device(
        &self,
        account: AccountId,
        kind: DeviceKind,
        label: &str,
        now: i64,
    ) -> Result<Device, StoreError> {
        Ok(self
            .create_device_within(account, kind, label, now, 0)
            .await?
            .0)
    }

    /// Registers a device for an account (a login), first revoking the
    /// least recently active live devices (and dropping their refresh
    /// tokens) so that at most `max` are live with it (`0`: no limit).
    /// Returns the device and those revoked, for the caller to disconnect.
    ///
    /// One transaction that first locks the account (SQLite's write lock,
    /// PostgreSQL's `FOR UPDATE` on its row): logins racing on several nodes
    /// queue, so together they never leave more than `max` devices.
    pub async fn create_device_within(
        &self,
        account: AccountId,
        kind: DeviceKind,
        label: &str,
        now: i64,
        max: usize,
    ) -> Result<(Device, Vec<DeviceId>), StoreError> {
        with_pool!(self, |pool| {
            let mut tx = pool.write_tx().await?;
            let mut revoked = Vec::new();
            if max > 0 {
                sqlx::query(pool.pick(
                    "SELECT id FROM accounts WHERE id = $1",
                    "SELECT id FROM accounts WHERE id = $1 FOR UPDATE",
                ))
                .bind(account.0)
                .fetch_optional(&mut *tx)
                .await?;
                let live: Vec<i64> = sqlx::query_scalar(
                    "SELECT id FROM devices WHERE account_id = $1 AND revoked_at IS NULL
                     ORDER BY last_active_at, id",
                )
                .bind(account.0)
                .fetch_all(&mut *tx)
                .await?;
                let excess = (live.len() + 1).saturating_sub(max);
                for id in live.into_iter().take(excess) {
                    sqlx::query("UPDATE devices SET revoked_at = $1 WHERE id = $2")
                        .bind(now)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM refresh_tokens WHERE device_id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    revoked.push(DeviceId(id));
                }
            }
            let row: DeviceRow = sqlx::query_as(
                "INSERT INTO devices (account_id, kind, label, created_at, last_active_at)
                 VALUES ($1, $2, $3, $4, $5)
                 RETURNING id, account_id, kind, label, created_at, last_active_at, revoked_at",
            )
            .bind(account.0)
            .bind(kind.as_str())
            .bind(label)
            .bind(now)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok((row.into(), revoked))
        })
    }

    /// The devices of an account that are not revoked, oldest first.
    pub async fn devices(&self, account: AccountId) -> Result<Vec<Device>, StoreError> {
        let rows: Vec<DeviceRow> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT id, account_id, kind, label, created_at, last_active_at, revoked_at
             FROM devices WHERE account_id = $1 AND revoked_at IS NULL ORDER BY id",
        )
        .bind(account.0)
        .fetch_all(pool)
        .await)?;
        Ok(rows.into_iter().map(Device::from).collect())
    }

    /// A device of `account` (revoked or not).
    pub async fn device(
        &self,
        account: AccountId,
        id: DeviceId,
    ) -> Result<Option<Device>, StoreError> {
        let row: Option<DeviceRow> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT id, account_id, kind, label, created_at, last_active_at, revoked_at
             FROM devices WHERE id = $1 AND account_id = $2",
        )
        .bind(id.0)
        .bind(account.0)
        .fetch_optional(pool)
        .await)?;
        Ok(row.map(Device::from))
    }

    /// Renames a device of `account`; `None` when there is no such live device.
    pub async fn rename_device(
        &self,
        account: AccountId,
        id: DeviceId,
        label: &str,
    ) -> Result<Option<Device>, StoreError> {
        let row: Option<DeviceRow> = with_pool!(self, |pool| sqlx::query_as(
            "UPDATE devices SET label = $1
             WHERE id = $2 AND account_id = $3 AND revoked_at IS NULL
             RETURNING id, account_id, kind, label, created_at, last_active_at, revoked_at",
        )
        .bind(label)
        .bind(id.0)
        .bind(account.0)
        .fetch_optional(pool)
        .await)?;
        Ok(row.map(Device::from))
    }

    /// Revokes a live device of `account` and drops its refresh tokens;
    /// `false` when there is no such live device.
    pub async fn revoke_device(
        &self,
        account: AccountId,
        id: DeviceId,
        now: i64,
    ) -> Result<bool, StoreError> {
        with_pool!(self, |pool| {
            let mut tx = pool.write_tx().await?;
            let n = sqlx::query(
                "UPDATE devices SET revoked_at = $1
                 WHERE id = $2 AND account_id = $3 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(id.0)
            .bind(account.0)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            // Only the account's own device: the id alone would let anyone sign
            // out anyone (device ids are sequential).
            sqlx::query(
                "DELETE FROM refresh_tokens WHERE device_id IN
                 (SELECT id FROM devices WHERE id = $1 AND account_id = $2)",
            )
            .bind(id.0)
            .bind(account.0)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(n == 1)
        })
    }

    /// Devices nobody can use any more: not revoked, active last at
    /// `idle_before` or earlier (so their access tokens have run out), and
    /// without an unused refresh token valid at `now`.
    pub async fn expired_devices(
        &self,
        now: i64,
        idle_before: i64,
    ) -> Result<Vec<(AccountId, DeviceId)>, StoreError> {
        let rows: Vec<(i64, i64)> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT d.account_id, d.id FROM devices d
             WHERE d.revoked_at IS NULL AND d.last_active_at <= $1
               AND NOT EXISTS (SELECT 1 FROM refresh_tokens t
                               WHERE t.device_id = d.id AND t.rotated_at IS NULL
                                 AND t.expires_at > $2)
             ORDER BY d.id",
        )
        .bind(idle_before)
        .bind(now)
        .fetch_all(pool)
        .await)?;
        Ok(rows
            .into_iter()
            .map(|(a, d)| (AccountId(a), DeviceId(d)))
            .collect())
    }

    /// Drops refresh tokens past their expiry (used ones are kept until then
    /// to detect reuse); returns how many.
    pub async fn delete_expired_refresh_tokens(&self, now: i64) -> Result<u64, StoreError> {
        let n = with_pool!(self, |pool| sqlx::query(
            "DELETE FROM refresh_tokens WHERE expires_at <= $1"
        )
        .bind(now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(n)
    }

    /// Revokes every live device of `account` but `keep` (all of them
    /// without one) and drops their refresh tokens; returns them.
    pub async fn revoke_devices(
        &self,
        account: AccountId,
        keep: Option<DeviceId>,
        now: i64,
    ) -> Result<Vec<DeviceId>, StoreError> {
        // Device ids start at 1: 0 keeps none.
        let keep = keep.map_or(0, |d| d.0);
        with_pool!(self, |pool| {
            let mut tx = pool.write_tx().await?;
            let ids: Vec<i64> = sqlx::query_scalar(
                "UPDATE devices SET revoked_at = $1
                 WHERE account_id = $2 AND id <> $3 AND revoked_at IS NULL
                 RETURNING id",
            )
            .bind(now)
            .bind(account.0)
            .bind(keep)
            .fetch_all(&mut *tx)
            .await?;
            // The tokens of revoked devices only: at READ COMMITTED a
            // device another node's login adds meanwhile is not revoked, and
            // keeps its token.
            sqlx::query(
                "DELETE FROM refresh_tokens WHERE device_id IN
                 (SELECT id FROM devices
                  WHERE account_id = $1 AND id <> $2 AND revoked_at IS NOT NULL)",
            )
            .bind(account.0)
            .bind(keep)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(ids.into_iter().map(DeviceId).collect())
        })
    }

    /// Whether a token for this account and device may be used.
    pub async fn sign_in_state(
        &self,
        account: AccountId,
        device: DeviceId,
    ) -> Result<SignInState, StoreError> {
        Ok(self.sign_in(account, device).await?.0)
    }

    /// Whether a token for this account and device may be used, and the
    /// account's roles now (whatever the token says: a demotion counts at
    /// once).
    pub async fn sign_in(
        &self,
        account: AccountId,
        device: DeviceId,
    ) -> Result<(SignInState, Vec<Role>), StoreError> {
        let row: Option<(bool, Option<i64>, String)> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT a.disabled, d.revoked_at, a.roles FROM devices d
             JOIN accounts a ON a.id = d.account_id
             WHERE d.id = $1 AND d.account_id = $2",
        )
        .bind(device.0)
        .bind(account.0)
        .fetch_optional(pool)
        .await)?;
        Ok(match row {
            None => (SignInState::Unknown, Vec::new()),
            Some((true, _, _)) => (SignInState::Disabled, Vec::new()),
            Some((false, Some(_), _)) => (SignInState::Revoked, Vec::new()),
            Some((false, None, roles)) => (SignInState::Active, parse_roles(&roles)),
        })
    }

    // ----- refresh tokens -----

    /// Stores the hash of a new refresh token for `device`.
    pub async fn insert_refresh_token(
        &self,
        device: DeviceId,
        hash: &[u8],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        with_pool!(self, |pool| sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, device_id, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(hash)
        .bind(device.0)
        .bind(expires_at)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Uses the refresh token hashed `old`: if it is current, marks it used,
    /// stores `new` in its place and touches the device.
    pub async fn rotate_refresh_token(
        &self,
        old: &[u8],
        new: &[u8],
        new_expires_at: i64,
        now: i64,
    ) -> Result<RefreshOutcome, StoreError> {
        with_pool!(self, |pool| {
            let mut tx = pool.write_tx().await?;
            let row: Option<RefreshRow> = sqlx::query_as(
                "SELECT t.device_id, t.expires_at, t.rotated_at, a.disabled, d.revoked_at, a.id AS account_id
                 FROM refresh_tokens t
                 JOIN devices d ON d.id = t.device_id
                 JOIN accounts a ON a.id = d.account_id
                 WHERE t.token_hash = $1",
            )
            .bind(old)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(RefreshRow {
                device_id: device,
                expires_at,
                rotated_at,
                disabled,
                revoked_at,
                account_id: account,
            }) = row
            else {
                return Ok(RefreshOutcome::Invalid);
            };
            let (account, device) = (AccountId(account), DeviceId(device));
            if disabled || revoked_at.is_some() || expires_at <= now {
                return Ok(RefreshOutcome::Invalid);
            }
            if rotated_at.is_some() {
                return Ok(RefreshOutcome::Reused { account, device });
            }
            // Conditional: of two nodes presenting the same token at once
            // (PostgreSQL, READ COMMITTED: both read it unused), the second
            // waits for the first's row lock, then finds it used. One
            // rotation wins; the other is reuse.
            let won = sqlx::query(
                "UPDATE refresh_tokens SET rotated_at = $1
                 WHERE token_hash = $2 AND rotated_at IS NULL",
            )
            .bind(now)
            .bind(old)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if won == 0 {
                return Ok(RefreshOutcome::Reused { account, device });
            }
            sqlx::query(
                "INSERT INTO refresh_tokens (token_hash, device_id, expires_at) VALUES ($1, $2, $3)",
            )
            .bind(new)
            .bind(device.0)
            .bind(new_expires_at)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE devices SET last_active_at = $1 WHERE id = $2")
                .bind(now)
                .bind(device.0)
                .execute(&mut *tx)
                .await?;
            // Used tokens are kept for reuse detection until they would have expired.
            sqlx::query("DELETE FROM refresh_tokens WHERE device_id = $1 AND expires_at <= $2")
                .bind(device.0)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(RefreshOutcome::Rotated { account, device })
        })
    }
}
