//! Call settings and call history.

use serde::Serialize;

use super::{Store, StoreError};
use crate::domain::call::{
    Allow, Call, CallSettings, Direction, OpenCall, Outcome, Person, Record,
};
use crate::domain::ids::{AccountId, CallId, CallRecordId, DeviceId};

/// A stored history entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallRecord {
    /// The entry.
    pub id: CallRecordId,
    /// Whether it is an unseen missed call.
    pub unseen: bool,
    /// What happened.
    #[serde(flatten)]
    pub record: Record,
    /// `ended_at - answered_at` in ms (0 when never answered).
    pub duration_ms: i64,
}

/// A call a crash interrupted, recorded at the next start.
#[derive(Debug)]
pub struct InterruptedCall {
    /// The call as it was last kept.
    pub call: Call,
    /// When it ended: the server's last heartbeat, or its last change.
    pub ended_at: i64,
    /// The history entries stored for it.
    pub stored: Vec<CallRecord>,
}

row! {
    struct HistoryRow {
        id: i64,
        account_id: i64,
        call_id: i64,
        direction: String,
        video: bool,
        participants: String,
        started_at: i64,
        answered_at: Option<i64>,
        ended_at: i64,
        outcome: String,
        device_id: Option<i64>,
        handed_over_to: String,
        seen: bool,
    }
}

#[derive(serde::Deserialize)]
struct StoredPerson {
    account_id: AccountId,
    username: String,
    display_name: String,
}

impl HistoryRow {
    fn into_record(self) -> Result<CallRecord, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("call_history {}: {what}", self.id));
        let participants: Vec<StoredPerson> =
            serde_json::from_str(&self.participants).map_err(|_| corrupt("participants"))?;
        let handed: Vec<DeviceId> =
            serde_json::from_str(&self.handed_over_to).map_err(|_| corrupt("handed_over_to"))?;
        let outcome = Outcome::parse(&self.outcome).ok_or_else(|| corrupt("outcome"))?;
        let direction = match self.direction.as_str() {
            "outgoing" => Direction::Outgoing,
            "incoming" => Direction::Incoming,
            _ => return Err(corrupt("direction")),
        };
        Ok(CallRecord {
            id: CallRecordId(self.id),
            unseen: !self.seen,
            duration_ms: self.answered_at.map_or(0, |a| (self.ended_at - a).max(0)),
            record: Record {
                account_id: AccountId(self.account_id),
                call_id: CallId(self.call_id),
                direction,
                video: self.video,
                participants: participants
                    .into_iter()
                    .map(|p| Person {
                        account_id: p.account_id,
                        username: p.username,
                        display_name: p.display_name,
                    })
                    .collect(),
                started_at: self.started_at,
                answered_at: self.answered_at,
                ended_at: self.ended_at,
                outcome,
                device_id: self.device_id.map(DeviceId),
                handed_over_to: handed,
            },
        })
    }
}

/// Whether a record counts as a missed call to be seen.
fn is_missed(r: &Record) -> bool {
    r.direction == Direction::Incoming && matches!(r.outcome, Outcome::Missed | Outcome::Busy)
}

impl Store {
    /// An account's call settings (defaults when never set).
    pub async fn call_settings(&self, account: AccountId) -> Result<CallSettings, StoreError> {
        let row: Option<(bool, String)> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT dnd, allow FROM call_settings WHERE account_id = $1"
        )
        .bind(account.0)
        .fetch_optional(pool)
        .await)?;
        Ok(
            row.map_or_else(CallSettings::default, |(dnd, allow)| CallSettings {
                dnd,
                allow: Allow::parse(&allow),
            }),
        )
    }

    /// Stores an account's call settings.
    pub async fn set_call_settings(
        &self,
        account: AccountId,
        s: CallSettings,
    ) -> Result<(), StoreError> {
        with_pool!(self, |pool| sqlx::query(
            "INSERT INTO call_settings (account_id, dnd, allow) VALUES ($1, $2, $3)
             ON CONFLICT (account_id) DO UPDATE SET dnd = excluded.dnd, allow = excluded.allow",
        )
        .bind(account.0)
        .bind(s.dnd)
        .bind(s.allow.as_str())
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Whether `owner` has `other` in its address book (a live entry linking
    /// the account), or as a favorite when `favorites_only`.
    pub async fn has_contact(
        &self,
        owner: AccountId,
        other: AccountId,
        favorites_only: bool,
    ) -> Result<bool, StoreError> {
        let hit: Option<i32> = with_pool!(self, |pool| sqlx::query_scalar(
            "SELECT 1 FROM contacts
             WHERE account_id = $1 AND linked_account_id = $2 AND NOT deleted
               AND (NOT $3 OR favorite)
             LIMIT 1",
        )
        .bind(owner.0)
        .bind(other.0)
        .bind(favorites_only)
        .fetch_optional(pool)
        .await)?;
        Ok(hit.is_some())
    }

    /// The first call id not used by any history entry or open call.
    pub async fn next_call_id(&self) -> Result<CallId, StoreError> {
        let max: Option<i64> = with_pool!(self, |pool| sqlx::query_scalar(
            "SELECT MAX(id) FROM (SELECT MAX(call_id) AS id FROM call_history
                                  UNION ALL SELECT MAX(call_id) FROM open_calls) AS ids",
        )
        .fetch_one(pool)
        .await)?;
        Ok(CallId(max.unwrap_or(0) + 1))
    }

    /// Keeps call `id` as it is now (replacing what was kept before), as a
    /// call this node runs.
    pub async fn put_open_call(
        &self,
        id: CallId,
        open: &OpenCall,
        now: i64,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(open).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        with_pool!(self, |pool| sqlx::query(
            "INSERT INTO open_calls (call_id, body, updated_at, node_id) VALUES ($1, $2, $3, $4)
             ON CONFLICT (call_id) DO UPDATE SET body = excluded.body,
                                                 updated_at = excluded.updated_at,
                                                 node_id = excluded.node_id",
        )
        .bind(id.0)
        .bind(json)
        .bind(now)
        .bind(&*self.node)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Forgets an open call (it ended; its entries are in the history).
    pub async fn remove_open_call(&self, id: CallId) -> Result<(), StoreError> {
        with_pool!(self, |pool| sqlx::query(
            "DELETE FROM open_calls WHERE call_id = $1"
        )
        .bind(id.0)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Every call kept open, whichever node kept it (a cluster's new owner
    /// of the calls takes them over); unreadable ones are logged and left
    /// for a person to look at.
    pub async fn open_calls(&self) -> Result<Vec<OpenCall>, StoreError> {
        let rows: Vec<(i64, String)> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT call_id, body FROM open_calls ORDER BY call_id"
        )
        .fetch_all(pool)
        .await)?;
        Ok(rows
            .into_iter()
            .filter_map(|(call_id, json)| match serde_json::from_str(&json) {
                Ok(open) => Some(open),
                Err(e) => {
                    tracing::error!(call = call_id, error = %e, "cannot read an open call");
                    None
                }
            })
            .collect())
    }

    /// Turns the calls a crash of this node left open into history entries
    /// (only this node's: another node sharing the database runs its own):
    /// each ends when this node was last known running (or its last change, if
    /// later; never after `now`). Entries already stored (a crash between
    /// a call's end and its row's removal) are not stored twice, so this
    /// can run again after being interrupted. Returns each call as it was
    /// kept, when it ended, and the entries stored.
    pub async fn recover_open_calls(&self, now: i64) -> Result<Vec<InterruptedCall>, StoreError> {
        let alive = self.last_alive().await?.unwrap_or(0);
        let rows: Vec<(i64, String, i64)> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT call_id, body, updated_at FROM open_calls
             WHERE node_id = $1 ORDER BY call_id"
        )
        .bind(&*self.node)
        .fetch_all(pool)
        .await)?;
        let mut calls = Vec::new();
        for (call_id, json, updated_at) in rows {
            let open: OpenCall = match serde_json::from_str(&json) {
                Ok(o) => o,
                Err(e) => {
                    // Unreadable: keep the row for a person to look at, go on.
                    tracing::error!(call = call_id, error = %e, "cannot read an open call");
                    continue;
                }
            };
            let last = open.records.iter().map(|r| r.ended_at).max().unwrap_or(0);
            // Never after the restart, never before what the call knew of.
            let ended_at = last.max(updated_at).max(alive).min(now).max(last);
            let mut stored = Vec::new();
            for mut r in open.records {
                r.ended_at = ended_at.max(r.started_at).max(r.answered_at.unwrap_or(0));
                // Skipped: entries already stored, and accounts deleted since.
                let (account, already): (bool, bool) = with_pool!(self, |pool| sqlx::query_as(
                    "SELECT EXISTS (SELECT 1 FROM accounts WHERE id = $1),
                            EXISTS (SELECT 1 FROM call_history
                                    WHERE account_id = $2 AND call_id = $3 AND started_at = $4)",
                )
                .bind(r.account_id.0)
                .bind(r.account_id.0)
                .bind(r.call_id.0)
                .bind(r.started_at)
                .fetch_one(pool)
                .await)?;
                if account && !already {
                    stored.push(self.add_call_record(&r).await?);
                }
            }
            self.remove_open_call(CallId(call_id)).await?;
            calls.push(InterruptedCall {
                call: open.call,
                ended_at,
                stored,
            });
        }
        Ok(calls)
    }

    /// Stores a history entry; missed calls start unseen.
    pub async fn add_call_record(&self, r: &Record) -> Result<CallRecord, StoreError> {
        let participants = serde_json::to_string(&r.participants)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let handed = serde_json::to_string(&r.handed_over_to)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let direction = match r.direction {
            Direction::Outgoing => "outgoing",
            Direction::Incoming => "incoming",
        };
        let id: i64 = with_pool!(self, |pool| sqlx::query_scalar(
            "INSERT INTO call_history (account_id, call_id, direction, video, participants,
                                       started_at, answered_at, ended_at, outcome, device_id,
                                       handed_over_to, seen)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             RETURNING id",
        )
        .bind(r.account_id.0)
        .bind(r.call_id.0)
        .bind(direction)
        .bind(r.video)
        .bind(participants)
        .bind(r.started_at)
        .bind(r.answered_at)
        .bind(r.ended_at)
        .bind(r.outcome.as_str())
        .bind(r.device_id.map(|d| d.0))
        .bind(handed)
        .bind(!is_missed(r))
        .fetch_one(pool)
        .await)?;
        Ok(CallRecord {
            id: CallRecordId(id),
            unseen: is_missed(r),
            duration_ms: r.answered_at.map_or(0, |a| (r.ended_at - a).max(0)),
            record: r.clone(),
        })
    }

    /// An account's history, newest first: entries with ids below `before`
    /// (all when `None`), at most `limit`.
    pub async fn call_history(
        &self,
        account: AccountId,
        before: Option<CallRecordId>,
        limit: i64,
    ) -> Result<Vec<CallRecord>, StoreError> {
        let rows: Vec<HistoryRow> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT id, account_id, call_id, direction, video, participants, started_at,
                    answered_at, ended_at, outcome, device_id, handed_over_to, seen
             FROM call_history
             WHERE account_id = $1 AND ($2 IS NULL OR id < $3)
             ORDER BY id DESC LIMIT $4",
        )
        .bind(account.0)
        .bind(before.map(|b| b.0))
        .bind(before.map(|b| b.0))
        .bind(limit)
        .fetch_all(pool)
        .await)?;
        rows.into_iter().map(HistoryRow::into_record).collect()
    }

    /// How many missed calls the account has not marked seen.
    pub async fn missed_count(&self, account: AccountId) -> Result<i64, StoreError> {
        Ok(with_pool!(self, |pool| sqlx::query_scalar(
            "SELECT COUNT(*) FROM call_history WHERE account_id = $1 AND NOT seen",
        )
        .bind(account.0)
        .fetch_one(pool)
        .await)?)
    }

    /// Marks every missed call of the account seen.
    pub async fn mark_missed_seen(&self, account: AccountId) -> Result<(), StoreError> {
        with_pool!(self, |pool| sqlx::query(
            "UPDATE call_history SET seen = TRUE WHERE account_id = $1 AND NOT seen"
        )
        .bind(account.0)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }
}
