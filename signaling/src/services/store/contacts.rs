//! The address book: versions, revisions and tombstones.

use super::{Store, StoreError};
use crate::domain::contact::{Contact, ContactFields, ContactFilter, Labeled};
use crate::domain::ids::{AccountId, ContactId};

/// Why an update or delete of an address book entry was not applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContactWriteError {
    /// No such live entry in this address book.
    #[error("no such contact")]
    NotFound,
    /// The entry changed since the version the edit was based on.
    #[error("the contact changed since version {based_on}")]
    Stale {
        /// The version the edit named.
        based_on: i64,
        /// The entry as it is now.
        current: Box<Contact>,
    },
    /// The linked account does not exist.
    #[error("no such account to link")]
    NoSuchLinkedAccount,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ContactWriteError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
                ContactWriteError::NoSuchLinkedAccount
            }
            _ => ContactWriteError::Store(StoreError::from(e)),
        }
    }
}

/// A page of changes since a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactChanges {
    /// The revision the client is at after applying `changes`: the account's
    /// current revision, or the last change's when `has_more`.
    pub revision: i64,
    /// Changed entries and tombstones, in revision order.
    pub changes: Vec<Contact>,
    /// More changes follow: ask again since `revision`.
    pub has_more: bool,
}

row! {
    struct ContactRow {
        id: i64,
        version: i64,
        revision: i64,
        deleted: bool,
        display_name: String,
        phones: String,
        emails: String,
        groups_json: String,
        linked_account_id: Option<i64>,
        favorite: bool,
        notes: String,
        created_at: i64,
        updated_at: i64,
        linked_username: Option<String>,
    }
}

fn json_col<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl ContactRow {
    fn into_contact(self) -> Result<Contact, StoreError> {
        let fields = if self.deleted {
            None
        } else {
            Some(ContactFields {
                display_name: self.display_name,
                phones: json_col::<Vec<Labeled>>(&self.phones)?,
                emails: json_col::<Vec<Labeled>>(&self.emails)?,
                groups: json_col::<Vec<String>>(&self.groups_json)?,
                linked_account: self.linked_account_id.map(AccountId),
                favorite: self.favorite,
                notes: self.notes,
            })
        };
        Ok(Contact {
            id: ContactId(self.id),
            version: self.version,
            revision: self.revision,
            deleted: self.deleted,
            linked_username: if self.deleted {
                None
            } else {
                self.linked_username
            },
            fields,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// Bumps and returns the account's revision (`Result<i64, sqlx::Error>`),
/// in `$tx`, a write transaction of either backend. As its first statement
/// it also serialises the account's address book writes: SQLite's write
/// lock, PostgreSQL's lock on the account row (held to the commit), so a
/// conditional write after it reads the latest committed version.
macro_rules! bump_revision {
    ($tx:expr, $account:expr) => {
        sqlx::query_scalar::<_, i64>(
            "UPDATE accounts SET contacts_revision = contacts_revision + 1 WHERE id = $1
             RETURNING contacts_revision",
        )
        .bind($account.0)
        .fetch_one(&mut *$tx)
        .await
    };
}

/// `$query` with the editable fields of `$f` (a `ContactFields`) bound to
/// `$1`..`$7` (display name, phones, emails, groups, linked account,
/// favorite, notes), which inserts and updates both number so.
macro_rules! bind_fields {
    ($query:expr, $f:expr) => {
        $query
            .bind(&$f.display_name)
            .bind(to_json(&$f.phones)?)
            .bind(to_json(&$f.emails)?)
            .bind(to_json(&$f.groups)?)
            .bind($f.linked_account.map(|a| a.0))
            .bind($f.favorite)
            .bind(&$f.notes)
    };
}

/// The entry `$id` of `$account` as `$tx` sees it:
/// `Result<Option<Contact>, StoreError>`.
macro_rules! read_contact {
    ($tx:expr, $account:expr, $id:expr) => {
        match sqlx::query_as::<_, ContactRow>(
            "SELECT c.id, c.version, c.revision, c.deleted, c.display_name, c.phones, c.emails,
                    c.groups_json, c.linked_account_id, c.favorite, c.notes, c.created_at,
                    c.updated_at, a.username AS linked_username
             FROM contacts c LEFT JOIN accounts a ON a.id = c.linked_account_id
             WHERE c.id = $1 AND c.account_id = $2",
        )
        .bind($id.0)
        .bind($account.0)
        .fetch_optional(&mut *$tx)
        .await
        {
            Ok(row) => row.map(ContactRow::into_contact).transpose(),
            Err(e) => Err(StoreError::from(e)),
        }
    };
}

/// Ends a conditional write of one entry that changed `$n` rows: commits
/// and returns the entry as it now is, or, when nothing changed, rolls back
/// (the revision bump with it) and says why: the entry moved past
/// `$based_on`, or it is gone. `Result<Contact, ContactWriteError>`.
macro_rules! finish_write {
    ($tx:expr, $n:expr, $account:expr, $id:expr, $based_on:expr) => {{
        let mut tx = $tx;
        match read_contact!(tx, $account, $id) {
            Err(e) => Err(ContactWriteError::from(e)),
            Ok(current) if $n == 0 => {
                drop(tx);
                Err(not_written(current, $based_on))
            }
            Ok(None) => Err(ContactWriteError::NotFound),
            Ok(Some(contact)) => match tx.commit().await {
                Ok(()) => Ok(contact),
                Err(e) => Err(ContactWriteError::from(e)),
            },
        }
    }};
}

/// Why a conditional write changed nothing, given the entry as it is.
fn not_written(current: Option<Contact>, based_on: Option<i64>) -> ContactWriteError {
    match (current, based_on) {
        (Some(c), Some(based_on)) if !c.deleted => ContactWriteError::Stale {
            based_on,
            current: Box::new(c),
        },
        _ => ContactWriteError::NotFound,
    }
}

impl Store {
    /// The account's current address book revision.
    pub async fn contacts_revision(&self, account: AccountId) -> Result<i64, StoreError> {
        Ok(with_pool!(self, |pool| sqlx::query_scalar(
            "SELECT contacts_revision FROM accounts WHERE id = $1"
        )
        .bind(account.0)
        .fetch_optional(pool)
        .await)?
        .unwrap_or(0))
    }

    /// Adds an entry to the address book.
    pub async fn create_contact(
        &self,
        account: AccountId,
        f: &ContactFields,
        now: i64,
    ) -> Result<Contact, ContactWriteError> {
        with_pool!(self, |pool| {
            let mut tx = pool.write_tx().await?;
            let revision = bump_revision!(tx, account)?;
            let query = sqlx::query_scalar::<_, i64>(
                "INSERT INTO contacts (account_id, version, revision, display_name, phones, emails,
                                       groups_json, linked_account_id, favorite, notes,
                                       created_at, updated_at)
                 VALUES ($8, 1, $9, $1, $2, $3, $4, $5, $6, $7, $10, $11)
                 RETURNING id",
            );
            let id = bind_fields!(query, f)
                .bind(account.0)
                .bind(revision)
                .bind(now)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
            let contact =
                read_contact!(tx, account, ContactId(id))?.ok_or(ContactWriteError::NotFound)?;
            tx.commit().await.map_err(StoreError::from)?;
            Ok(contact)
        })
    }

    /// A live entry of the address book.
    pub async fn contact(
        &self,
        account: AccountId,
        id: ContactId,
    ) -> Result<Option<Contact>, StoreError> {
        let row: Option<ContactRow> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT c.id, c.version, c.revision, c.deleted, c.display_name, c.phones, c.emails,
                    c.groups_json, c.linked_account_id, c.favorite, c.notes, c.created_at,
                    c.updated_at, a.username AS linked_username
             FROM contacts c LEFT JOIN accounts a ON a.id = c.linked_account_id
             WHERE c.id = $1 AND c.account_id = $2 AND NOT c.deleted",
        )
        .bind(id.0)
        .bind(account.0)
        .fetch_optional(pool)
        .await)?;
        row.map(ContactRow::into_contact).transpose()
    }

    /// The live entries matching `filter`, by display name, and the revision
    /// they reflect.
    pub async fn list_contacts(
        &self,
        account: AccountId,
        filter: &ContactFilter,
    ) -> Result<(Vec<Contact>, i64), StoreError> {
        with_pool!(self, |pool| {
            let mut tx = pool.read_tx().await?;
            let revision: i64 =
                sqlx::query_scalar("SELECT contacts_revision FROM accounts WHERE id = $1")
                    .bind(account.0)
                    .fetch_optional(&mut *tx)
                    .await?
                    .unwrap_or(0);
            let q = filter.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
            // The one difference: SQLite's `instr` is PostgreSQL's `strpos`.
            macro_rules! search {
                ($contains:literal) => {
                    concat!(
                        "SELECT c.id, c.version, c.revision, c.deleted, c.display_name, c.phones,
                                c.emails, c.groups_json, c.linked_account_id, c.favorite, c.notes,
                                c.created_at, c.updated_at, a.username AS linked_username
                         FROM contacts c LEFT JOIN accounts a ON a.id = c.linked_account_id
                         WHERE c.account_id = $1 AND NOT c.deleted
                           AND ($2 IS NULL OR ",
                        $contains,
                        "(lower(c.display_name), lower($3)) > 0)
                           AND ($4 IS NULL OR c.favorite = $5)
                         ORDER BY lower(c.display_name), c.id"
                    )
                };
            }
            let rows: Vec<ContactRow> =
                sqlx::query_as(pool.pick(search!("instr"), search!("strpos")))
                    .bind(account.0)
                    .bind(q)
                    .bind(q)
                    .bind(filter.favorite)
                    .bind(filter.favorite)
                    .fetch_all(&mut *tx)
                    .await?;
            tx.commit().await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let c = r.into_contact()?;
                let in_group = match (&filter.group, &c.fields) {
                    (Some(g), Some(f)) => f.groups.iter().any(|x| x == g),
                    _ => true,
                };
                if in_group {
                    out.push(c);
                }
            }
            Ok((out, revision))
        })
    }

    /// Replaces the fields of an entry if it is still at `based_on`.
    pub async fn update_contact(
        &self,
        account: AccountId,
        id: ContactId,
        based_on: i64,
        f: &ContactFields,
        now: i64,
    ) -> Result<Contact, ContactWriteError> {
        with_pool!(self, |pool| {
            let mut tx = pool.write_tx().await?;
            let revision = bump_revision!(tx, account)?;
            let query = sqlx::query(
                "UPDATE contacts SET display_name = $1, phones = $2, emails = $3, groups_json = $4,
                        linked_account_id = $5, favorite = $6, notes = $7,
                        version = version + 1, revision = $8, updated_at = $9
                 WHERE id = $10 AND account_id = $11 AND NOT deleted AND version = $12",
            );
            let n = bind_fields!(query, f)
                .bind(revision)
                .bind(now)
                .bind(id.0)
                .bind(account.0)
                .bind(based_on)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            finish_write!(tx, n, account, id, Some(based_on))
        })
    }

    /// Deletes an entry (leaving a tombstone), if it is still at `based_on`
    /// when that is given. Returns the tombstone.
    pub async fn delete_contact(
        &self,
        account: AccountId,
        id: ContactId,
        based_on: Option<i64>,
        now: i64,
    ) -> Result<Contact, ContactWriteError> {
        with_pool!(self, |pool| {
            let mut tx = pool.write_tx().await?;
            let revision = bump_revision!(tx, account)?;
            let n = sqlx::query(
                "UPDATE contacts SET deleted = TRUE, display_name = '', phones = '[]', emails = '[]',
                        groups_json = '[]', linked_account_id = NULL, favorite = FALSE, notes = '',
                        version = version + 1, revision = $1, updated_at = $2
                 WHERE id = $3 AND account_id = $4 AND NOT deleted AND ($5 IS NULL OR version = $6)",
            )
            .bind(revision)
            .bind(now)
            .bind(id.0)
            .bind(account.0)
            .bind(based_on)
            .bind(based_on)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            finish_write!(tx, n, account, id, based_on)
        })
    }

    /// Entries changed after revision `since` (tombstones included; from 0,
    /// live entries only), at most `limit` of them.
    pub async fn contact_changes(
        &self,
        account: AccountId,
        since: i64,
        limit: i64,
    ) -> Result<ContactChanges, StoreError> {
        with_pool!(self, |pool| {
            let mut tx = pool.read_tx().await?;
            let current: i64 =
                sqlx::query_scalar("SELECT contacts_revision FROM accounts WHERE id = $1")
                    .bind(account.0)
                    .fetch_optional(&mut *tx)
                    .await?
                    .unwrap_or(0);
            let rows: Vec<ContactRow> = sqlx::query_as(
                "SELECT c.id, c.version, c.revision, c.deleted, c.display_name, c.phones, c.emails,
                        c.groups_json, c.linked_account_id, c.favorite, c.notes, c.created_at,
                        c.updated_at, a.username AS linked_username
                 FROM contacts c LEFT JOIN accounts a ON a.id = c.linked_account_id
                 WHERE c.account_id = $1 AND c.revision > $2 AND ($3 > 0 OR NOT c.deleted)
                 ORDER BY c.revision LIMIT $4",
            )
            .bind(account.0)
            .bind(since)
            .bind(since)
            .bind(limit + 1)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            let has_more = rows.len() as i64 > limit;
            let changes = rows
                .into_iter()
                .take(usize::try_from(limit).unwrap_or(0))
                .map(ContactRow::into_contact)
                .collect::<Result<Vec<_>, _>>()?;
            let revision = if has_more {
                changes.last().map_or(current, |c| c.revision)
            } else {
                current
            };
            Ok(ContactChanges {
                revision,
                changes,
                has_more,
            })
        })
    }
}
