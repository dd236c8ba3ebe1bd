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
/// builds a second copy of sqlx and tokio for the compiler); for the rows
/// of both backends.
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

        impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for $name {
            fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
                use sqlx::Row;
                Ok($name {
                    $($field: row.try_get(stringify!($field))?),*
                })
            }
        }
    };
}

/// `with_pool!(store, |pool| body)` evaluates `body` (not a closure: `.await`
/// and `?` work as in the method) once per backend with `pool` bound to the store's
/// pool (an `SqlitePool` or a `PgPool`): one text in the source, compiled
/// for each driver with its own types. `$pool` is also an [`Engine`], for
/// the transactions and the few statements whose SQL differs
/// ([`Engine::pick`]).
macro_rules! with_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.backend {
            $crate::services::store::Backend::Sqlite($pool) => {
                #[allow(unused_imports)]
                use $crate::services::store::Engine as _;
                $body
            }
            $crate::services::store::Backend::Postgres($pool) => {
                #[allow(unused_imports)]
                use $crate::services::store::Engine as _;
                $body
            }
        }
    };
}

mod accounts;
mod calls;
mod contacts;
mod links;
mod migrations;

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Transaction;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

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
    /// The database cannot be reached now (connection lost or refused, the
    /// pool exhausted, the server shutting down, a transaction that lost a
    /// lock race): the request may be retried (HTTP 503 with `Retry-After`).
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// The database failed.
    #[error("database error: {0}")]
    Db(sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database file could not be created.
    #[error("cannot create the database file: {0}")]
    Io(std::io::Error),
    /// A stored value could not be read back.
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// The configuration names no usable database.
    #[error("{0}")]
    Location(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_outage(&e) {
            StoreError::Unavailable(e)
        } else {
            StoreError::Db(e)
        }
    }
}

/// Whether `e` says the database is unreachable or busy for now, rather
/// than that the statement is wrong: what a retry can cure.
fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|code| {
            // PostgreSQL: connection exceptions (08...), operator
            // intervention (57...: shutdown, recovery, a cancelled
            // statement), too many connections, a database not accepting
            // connections (55000, met when connecting), serialization
            // failures and deadlocks. SQLite: busy or locked past the busy
            // timeout.
            code.starts_with("08")
                || code.starts_with("57")
                || matches!(
                    code.as_ref(),
                    "53300" | "55000" | "40001" | "40P01" | "5" | "6" | "517"
                )
        }),
        _ => false,
    }
}

/// Maps a unique-constraint violation to [`StoreError::Conflict`].
fn unique(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict,
        _ => StoreError::from(e),
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
    /// An SQLite file, created when missing, or `:memory:` (`store.path`,
    /// or `store.url = "sqlite://PATH"`).
    Sqlite {
        /// The file's path.
        path: String,
    },
    /// A PostgreSQL database (`store.url = "postgres://..."`), which the
    /// nodes of a cluster share.
    Postgres {
        /// The URL as configured, password included (never displayed).
        url: String,
    },
}

impl StoreLocation {
    /// The location the configuration names (`store.url`, else `store.path`).
    pub fn from_config(config: &vela_config::StoreConfig) -> Result<Self, StoreError> {
        match config.location() {
            Ok(vela_config::StoreUrl::Sqlite(path)) => Ok(StoreLocation::Sqlite { path }),
            Ok(vela_config::StoreUrl::Postgres(url)) => Ok(StoreLocation::Postgres { url }),
            Ok(other) => Err(StoreError::Location(format!(
                "store.url: {other:?} is not a backend this build has"
            ))),
            Err(e) => Err(StoreError::Location(e.to_string())),
        }
    }
}

/// `url` without its password (in the user part or a `password=` option):
/// what logs and error messages may show.
fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let rest = match rest.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{name}:***@{host}"),
            None => rest.to_owned(),
        },
        None => rest.to_owned(),
    };
    let query = query.map(|q| {
        q.split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    match query {
        Some(q) => format!("{scheme}://{rest}?{q}"),
        None => format!("{scheme}://{rest}"),
    }
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sqlite { path } => write!(f, "sqlite {path}"),
            StoreLocation::Postgres { url } => write!(f, "postgres {}", redacted(url)),
        }
    }
}

/// The database behind a [`Store`]: one variant per engine. An enum, not a
/// trait object: each method matches once ([`with_pool!`]), with no boxed
/// futures, and the compiler lists every method a new variant must answer.
#[derive(Clone, Debug)]
enum Backend {
    /// SQLite through sqlx: one file in WAL mode, or in memory.
    Sqlite(SqlitePool),
    /// PostgreSQL through sqlx, shared by the nodes of a cluster.
    Postgres(PgPool),
}

/// What differs between the backends beyond the driver types: how a
/// transaction begins, and the SQL of the few statements the two dialects
/// do not share.
trait Engine {
    /// The sqlx database.
    type Db: sqlx::Database;

    /// `sqlite` or `postgres`: the statement in this backend's dialect.
    fn pick(&self, sqlite: &'static str, postgres: &'static str) -> &'static str;

    /// A transaction for writes that read first (a conditional write, a
    /// check then an insert). SQLite: `BEGIN IMMEDIATE` takes the database's
    /// write lock at once, so writers queue instead of failing when they
    /// upgrade from reading. PostgreSQL: READ COMMITTED; each such method
    /// makes itself atomic with a conditional `UPDATE` or a row lock (see
    /// the module documentation).
    fn write_tx(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, Self::Db>, sqlx::Error>> + Send;

    /// A transaction whose reads see one snapshot (a revision and the
    /// entries it covers). PostgreSQL: REPEATABLE READ, read only.
    fn read_tx(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, Self::Db>, sqlx::Error>> + Send;
}

impl Engine for SqlitePool {
    type Db = sqlx::Sqlite;

    fn pick(&self, sqlite: &'static str, _: &'static str) -> &'static str {
        sqlite
    }

    fn write_tx(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, sqlx::Sqlite>, sqlx::Error>> + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }

    fn read_tx(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, sqlx::Sqlite>, sqlx::Error>> + Send {
        // A deferred transaction reads one snapshot of a WAL database.
        self.begin()
    }
}

impl Engine for PgPool {
    type Db = sqlx::Postgres;

    fn pick(&self, _: &'static str, postgres: &'static str) -> &'static str {
        postgres
    }

    fn write_tx(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, sqlx::Postgres>, sqlx::Error>> + Send
    {
        self.begin()
    }

    fn read_tx(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, sqlx::Postgres>, sqlx::Error>> + Send
    {
        self.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    }
}

/// The node id of a server that runs alone (no `[cluster]`), and of the
/// rows written before node ids were kept.
pub const LOCAL_NODE: &str = "local";

/// The database handle; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    /// The node this handle writes for: its heartbeat, the calls it keeps
    /// open, the accounts present on it ([`Store::for_node`]).
    node: Arc<str>,
}

impl Store {
    /// Opens the database `location` names (creating an SQLite file when
    /// missing) and applies the migrations. The handle writes for
    /// [`LOCAL_NODE`] until [`Store::for_node`] names another.
    pub async fn connect(location: &StoreLocation) -> Result<Store, StoreError> {
        match location {
            StoreLocation::Sqlite { path } => Self::open(path).await,
            StoreLocation::Postgres { url } => Self::open_postgres(url).await,
        }
    }

    /// This handle, writing for node `id` (a cluster node's
    /// `cluster.node_id`): its heartbeat, open calls and present accounts
    /// are its own, and recovery after a crash touches only those.
    pub fn for_node(mut self, id: &str) -> Store {
        self.node = Arc::from(id);
        self
    }

    /// The node this handle writes for.
    pub fn node(&self) -> &str {
        &self.node
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
        sqlx::migrate::Migrator::new(migrations::Embedded::Sqlite)
            .await?
            .run(&pool)
            .await?;
        Ok(Store {
            backend: Backend::Sqlite(pool),
            node: Arc::from(LOCAL_NODE),
        })
    }

    /// Connects to the PostgreSQL database at `url` and applies the
    /// migrations (sqlx takes an advisory lock: nodes starting together
    /// migrate once).
    async fn open_postgres(url: &str) -> Result<Store, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // An outage answers 503 within this, rather than hanging requests.
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        sqlx::migrate::Migrator::new(migrations::Embedded::Postgres)
            .await?
            .run(&pool)
            .await?;
        Ok(Store {
            backend: Backend::Postgres(pool),
            node: Arc::from(LOCAL_NODE),
        })
    }

    /// Answers when the database does (readiness checks).
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_pool!(self, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Waits for running statements and closes every connection.
    pub async fn close(&self) {
        with_pool!(self, |pool| pool.close().await)
    }

    /// Notes that this node is running at `now` (a heartbeat: what a crash
    /// of this node interrupts ended no later than its last one).
    pub async fn mark_alive(&self, now: i64) -> Result<(), StoreError> {
        with_pool!(self, |pool| sqlx::query(
            "INSERT INTO node_heartbeats (node_id, alive_at) VALUES ($1, $2)
             ON CONFLICT (node_id) DO UPDATE SET alive_at = excluded.alive_at",
        )
        .bind(&*self.node)
        .bind(now)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// This node's last heartbeat ([`Store::mark_alive`]), if any.
    async fn last_alive(&self) -> Result<Option<i64>, StoreError> {
        Ok(with_pool!(self, |pool| sqlx::query_scalar(
            "SELECT alive_at FROM node_heartbeats WHERE node_id = $1"
        )
        .bind(&*self.node)
        .fetch_optional(pool)
        .await)?)
    }
}

#[cfg(test)]
mod tests;
