//! Contact requests and mutual contacts.

use super::{Store, StoreError};
use crate::domain::account::AccountSummary;
use crate::domain::ids::{AccountId, RequestId};
use crate::domain::link::{ContactRequest, RequestOutcome};

row! {
    struct RequestRow {
        id: i64,
        message: String,
        created_at: i64,
        from_id: i64,
        from_username: String,
        from_display_name: String,
        to_id: i64,
        to_username: String,
        to_display_name: String,
    }
}

impl From<RequestRow> for ContactRequest {
    fn from(r: RequestRow) -> Self {
        ContactRequest {
            id: RequestId(r.id),
            from: AccountSummary {
                id: AccountId(r.from_id),
                username: r.from_username,
                display_name: r.from_display_name,
            },
            to: AccountSummary {
                id: AccountId(r.to_id),
                username: r.to_username,
                display_name: r.to_display_name,
            },
            message: r.message,
            created_at: r.created_at,
        }
    }
}

/// The two accounts of a link in stored order (smaller id first).
fn ordered(a: AccountId, b: AccountId) -> (i64, i64) {
    if a.0 < b.0 { (a.0, b.0) } else { (b.0, a.0) }
}

impl Store {
    /// Sends a contact request from `from` to `to`. When `to` had already
    /// asked `from`, the two become mutual contacts instead.
    /// [`StoreError::Conflict`] when they already are, or the same request is pending.
    pub async fn create_request(
        &self,
        from: AccountId,
        to: AccountId,
        message: &str,
        now: i64,
    ) -> Result<RequestOutcome, StoreError> {
        with_pool!(self, |pool| {
            let mut tx = pool.write_tx().await?;
            let (a, b) = ordered(from, to);
            // Two requests crossing (A to B, B to A, on two nodes) must meet:
            // PostgreSQL locks both accounts, in id order (no deadlock), so
            // the second sees the first's request and makes them mutual.
            sqlx::query(pool.pick(
                "SELECT id FROM accounts WHERE id IN ($1, $2)",
                "SELECT id FROM accounts WHERE id IN ($1, $2) ORDER BY id FOR UPDATE",
            ))
            .bind(a)
            .bind(b)
            .fetch_all(&mut *tx)
            .await?;
            let mutual: Option<i32> = sqlx::query_scalar(
                "SELECT 1 FROM mutual_contacts WHERE account_a = $1 AND account_b = $2",
            )
            .bind(a)
            .bind(b)
            .fetch_optional(&mut *tx)
            .await?;
            if mutual.is_some() {
                return Err(StoreError::Conflict);
            }
            let reverse = sqlx::query(
                "DELETE FROM contact_requests WHERE from_account_id = $1 AND to_account_id = $2",
            )
            .bind(to.0)
            .bind(from.0)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if reverse > 0 {
                sqlx::query(
                    "INSERT INTO mutual_contacts (account_a, account_b, created_at) VALUES ($1, $2, $3)",
                )
                .bind(a)
                .bind(b)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                return Ok(RequestOutcome::Mutual);
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO contact_requests (from_account_id, to_account_id, message, created_at)
                 VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(from.0)
            .bind(to.0)
            .bind(message)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(super::unique)?;
            tx.commit().await?;
            let request = self
                .request(RequestId(id))
                .await?
                .ok_or_else(|| StoreError::Corrupt("a new request vanished".into()))?;
            Ok(RequestOutcome::Pending(request))
        })
    }

    /// A pending request by id.
    pub async fn request(&self, id: RequestId) -> Result<Option<ContactRequest>, StoreError> {
        let row: Option<RequestRow> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT r.id, r.message, r.created_at,
                    f.id AS from_id, f.username AS from_username,
                    f.display_name AS from_display_name,
                    t.id AS to_id, t.username AS to_username,
                    t.display_name AS to_display_name
             FROM contact_requests r
             JOIN accounts f ON f.id = r.from_account_id
             JOIN accounts t ON t.id = r.to_account_id
             WHERE r.id = $1",
        )
        .bind(id.0)
        .fetch_optional(pool)
        .await)?;
        Ok(row.map(ContactRequest::from))
    }

    /// Pending requests to and from `account`: `(incoming, outgoing)`, oldest first.
    pub async fn requests(
        &self,
        account: AccountId,
    ) -> Result<(Vec<ContactRequest>, Vec<ContactRequest>), StoreError> {
        let rows: Vec<RequestRow> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT r.id, r.message, r.created_at,
                    f.id AS from_id, f.username AS from_username,
                    f.display_name AS from_display_name,
                    t.id AS to_id, t.username AS to_username,
                    t.display_name AS to_display_name
             FROM contact_requests r
             JOIN accounts f ON f.id = r.from_account_id
             JOIN accounts t ON t.id = r.to_account_id
             WHERE r.from_account_id = $1 OR r.to_account_id = $2
             ORDER BY r.id",
        )
        .bind(account.0)
        .bind(account.0)
        .fetch_all(pool)
        .await)?;
        let (incoming, outgoing) = rows
            .into_iter()
            .map(ContactRequest::from)
            .partition(|r| r.to.id == account);
        Ok((incoming, outgoing))
    }

    /// Accepts request `id` addressed to `to`: the two become mutual contacts.
    /// Returns the request, or `None` when there is no such request to `to`.
    pub async fn accept_request(
        &self,
        id: RequestId,
        to: AccountId,
        now: i64,
    ) -> Result<Option<ContactRequest>, StoreError> {
        let Some(request) = self.request(id).await? else {
            return Ok(None);
        };
        if request.to.id != to {
            return Ok(None);
        }
        with_pool!(self, |pool| {
            let mut tx = pool.write_tx().await?;
            let n =
                sqlx::query("DELETE FROM contact_requests WHERE id = $1 AND to_account_id = $2")
                    .bind(id.0)
                    .bind(to.0)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            if n == 0 {
                return Ok(None);
            }
            let (a, b) = ordered(request.from.id, to);
            sqlx::query(
                "INSERT INTO mutual_contacts (account_a, account_b, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (account_a, account_b) DO NOTHING",
            )
            .bind(a)
            .bind(b)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Some(request))
        })
    }

    /// Deletes request `id` if `account` sent or received it; returns it.
    pub async fn delete_request(
        &self,
        id: RequestId,
        account: AccountId,
    ) -> Result<Option<ContactRequest>, StoreError> {
        let Some(request) = self.request(id).await? else {
            return Ok(None);
        };
        if request.from.id != account && request.to.id != account {
            return Ok(None);
        }
        let n = with_pool!(self, |pool| sqlx::query(
            "DELETE FROM contact_requests WHERE id = $1"
        )
        .bind(id.0)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok((n > 0).then_some(request))
    }

    /// Whether `a` and `b` are mutual contacts.
    pub async fn is_mutual(&self, a: AccountId, b: AccountId) -> Result<bool, StoreError> {
        let (a, b) = ordered(a, b);
        let row: Option<i32> = with_pool!(self, |pool| sqlx::query_scalar(
            "SELECT 1 FROM mutual_contacts WHERE account_a = $1 AND account_b = $2",
        )
        .bind(a)
        .bind(b)
        .fetch_optional(pool)
        .await)?;
        Ok(row.is_some())
    }

    /// The mutual contacts of `account`, by display name.
    pub async fn mutual_contacts(
        &self,
        account: AccountId,
    ) -> Result<Vec<AccountSummary>, StoreError> {
        let rows: Vec<(i64, String, String)> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT a.id, a.username, a.display_name FROM accounts a
             JOIN mutual_contacts m
               ON (m.account_a = $1 AND m.account_b = a.id)
               OR (m.account_b = $2 AND m.account_a = a.id)
             ORDER BY lower(a.display_name), a.id",
        )
        .bind(account.0)
        .bind(account.0)
        .fetch_all(pool)
        .await)?;
        Ok(rows
            .into_iter()
            .map(|(id, username, display_name)| AccountSummary {
                id: AccountId(id),
                username,
                display_name,
            })
            .collect())
    }

    /// The ids of the mutual contacts of `account`.
    pub async fn mutual_ids(&self, account: AccountId) -> Result<Vec<AccountId>, StoreError> {
        let ids: Vec<i64> = with_pool!(self, |pool| sqlx::query_scalar(
            "SELECT account_b FROM mutual_contacts WHERE account_a = $1
             UNION SELECT account_a FROM mutual_contacts WHERE account_b = $2",
        )
        .bind(account.0)
        .bind(account.0)
        .fetch_all(pool)
        .await)?;
        Ok(ids.into_iter().map(AccountId).collect())
    }

    /// Ends the link between `a` and `b`; `false` when there was none.
    pub async fn remove_mutual(&self, a: AccountId, b: AccountId) -> Result<bool, StoreError> {
        let (a, b) = ordered(a, b);
        let n = with_pool!(self, |pool| sqlx::query(
            "DELETE FROM mutual_contacts WHERE account_a = $1 AND account_b = $2"
        )
        .bind(a)
        .bind(b)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }
}
