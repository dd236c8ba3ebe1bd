//! Storage: the only module that speaks SQL.
//!
//! Everything persistent (accounts, devices, refresh tokens, the address
//! book, contact requests and links, presence texts and last-seen times,
//! call settings, call history and the calls going on)
//! goes through [`Store`]. Today the backend is SQLite (one file, WAL mode)
//! through sqlx; the schema lives in `signaling/migrations/` and is applied
//! at start. Every statement is a constant string with bound parameters.
//!
//! The seam for other databases is [`Backend`]: callers hold a [`Store`] and
//! never see the pool, and [`Store::connect`] picks the backend from a
//! [`StoreLocation`] (the configuration). A PostgreSQL backend (issue 18)
//! is a `Backend::Postgres(PgPool)` variant, a `StoreLocation::Postgres`
//! parsed from `store.url`, its migrations, and in each method an arm with
//! its SQL where the dialects differ; the methods that reach the pool through
//! [`Store::sqlite`] are those arms today. The statements mostly use what
//! both accept (`RETURNING`, `ON CONFLICT`, `UNION`); what a port must change
//! is the `?` placeholders (`$1` there), `instr()` (`strpos`), integer
//! booleans, the migrations' `AUTOINCREMENT`, the `row!` macro's row type,
//! and `BEGIN IMMEDIATE` for write transactions, made in one place,
//! [`Store::write_tx`].

/// A struct read from a result row, field by column name: what
/// `#[derive(sqlx::FromRow)]` does, without sqlx's macros crate (which
/// builds a second copy of sqlx and tokio for the compiler).
macro_rules! row {
    ($(#[$m:meta])* struct $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        struct $name {
            $($field: $ty),*
        }

        impl<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> for $name {
            fn from_row(row: &'r sqlx::sqlite::SqliteRow) -> Result<Self, sqlx::Error> {
                use sqlx::Row;
                Ok($name {
                    $($field: row.try_get(stringify!($field))?),*
                })
            }
        }
    };
}

mod accounts;
mod calls;
mod contacts;
mod links;
mod migrations;

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

pub use accounts::{RefreshOutcome, SignInState, StoredPresence};
pub use calls::{CallRecord, InterruptedCall};
pub use contacts::{ContactChanges, ContactWriteError};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A unique value (a username, a pending request) already exists.
    #[error("already exists")]
    Conflict,
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database file could not be created.
    #[error("cannot create the database file: {0}")]
    Io(std::io::Error),
    /// A stored value could not be read back.
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
}

/// Maps a unique-constraint violation to [`StoreError::Conflict`].
fn unique(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict,
        _ => StoreError::Db(e),
    }
}

/// Creates the database file readable by its owner only (it holds
/// password hashes and everyone's address book); SQLite gives its `-wal`
/// and `-shm` files the same mode. An existing file is left as it is, with
/// a warning when others may read it.
fn create_private(path: &str) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(
                    path,
                    mode = format!("{:o}", meta.permissions().mode() & 0o777),
                    "the store file is readable by other users: chmod 600 it"
                );
            }
            Ok(())
        }
        Err(e) => Err(StoreError::Io(e)),
    }
}

/// Which database a [`Store`] opens: what the configuration names.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreLocation {
    /// An SQLite file, created when missing, or `:memory:` (`store.path`).
    Sqlite {
        /// The file's path.
        path: String,
    },
}

impl StoreLocation {
    /// The location the configuration names.
    pub fn from_config(config: &vela_config::StoreConfig) -> Self {
        StoreLocation::Sqlite {
            path: config.path.clone(),
        }
    }
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sqlite { path } => write!(f, "sqlite {path}"),
        }
    }
}

/// The database behind a [`Store`]: one variant per engine, so that a
/// second one is a variant and its SQL, not a change to any caller. An
/// enum, not a trait object: each method matches once, with no boxed
/// futures, and the compiler lists every method a new variant must answer.
#[derive(Clone, Debug)]
enum Backend {
    /// SQLite through sqlx: one file in WAL mode, or in memory.
    Sqlite(SqlitePool),
}

/// The database handle; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
}

impl Store {
    /// Opens the database `location` names (creating an SQLite file when
    /// missing) and applies the migrations.
    pub async fn connect(location: &StoreLocation) -> Result<Store, StoreError> {
        match location {
            StoreLocation::Sqlite { path } => Self::open(path).await,
        }
    }

    /// Opens (creating if missing) the SQLite database at `path` and applies
    /// the migrations. `:memory:` opens a private in-memory database.
    pub async fn open(path: &str) -> Result<Store, StoreError> {
        let memory = path == ":memory:";
        if !memory {
            create_private(path)?;
        }
        let options = if memory {
            SqliteConnectOptions::from_str("sqlite::memory:")?
        } else {
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
        }
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
        let pool = if memory {
            // One connection that lives as long as the pool: the database with it.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(4)
        }
        .connect_with(options)
        .await?;
        sqlx::migrate::Migrator::new(migrations::Embedded)
            .await?
            .run(&pool)
            .await?;
        Ok(Store {
            backend: Backend::Sqlite(pool),
        })
    }

    /// The SQLite pool, for the statements written in SQLite's dialect (all
    /// of them while it is the only backend).
    fn sqlite(&self) -> &SqlitePool {
        match &self.backend {
            Backend::Sqlite(pool) => pool,
        }
    }

    /// Answers when the database does (readiness checks).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(self.sqlite()).await?;
        Ok(())
    }

    /// Waits for running statements and closes every connection.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(pool) => pool.close().await,
        }
    }

    /// Notes that the server is running at `now` (a heartbeat: what a crash
    /// interrupts ended no later than the last one).
    pub async fn mark_alive(&self, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO node_alive (id, alive_at) VALUES (1, ?)
             ON CONFLICT (id) DO UPDATE SET alive_at = excluded.alive_at",
        )
        .bind(now)
        .execute(self.sqlite())
        .await?;
        Ok(())
    }

    /// The last heartbeat ([`Store::mark_alive`]), if any.
    async fn last_alive(&self) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT alive_at FROM node_alive")
            .fetch_optional(self.sqlite())
            .await?)
    }

    /// A transaction that takes the write lock at once, so two writers queue
    /// (busy timeout) instead of one failing when it upgrades from reading.
    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.sqlite().begin_with("BEGIN IMMEDIATE").await?)
    }
}

#[cfg(test)]
mod tests;
