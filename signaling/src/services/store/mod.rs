//! Storage: the only module that speaks SQL.
//!
//! Everything persistent (accounts, devices, refresh tokens, the address
//! book, contact requests and links, presence texts and last-seen times,
//! call settings, call history and the calls going on) goes through
//! [`Store`], on one of two backends through sqlx, picked by
//! [`StoreLocation`] from the configuration: SQLite (`store.path`, or
//! `store.url = "sqlite://PATH"`: one file in WAL mode, for one node) or
//! PostgreSQL (`store.url = "postgres://..."`, which the nodes of a cluster
//! share). The schema lives in `signaling/migrations/` (SQLite) and
//! `signaling/migrations/postgres/` (the same versions and names, each file
//! the other's twin in PostgreSQL's types: BIGINT, BOOLEAN, BYTEA, identity
//! columns, names in `COLLATE "C"` so they sort as in SQLite); both are
//! built in and applied at start.
//!
//! # Dialects: one SQL text, compiled per driver
//!
//! Every statement is a constant string with bound parameters, written once
//! in what both dialects accept: `$1` placeholders (sqlx's SQLite driver
//! binds `$N` by number too), `TRUE`/`FALSE` and `NOT flag` for flags (SQLite
//! stores 1/0; the Rust side is `bool` on both), `RETURNING`, `ON CONFLICT`,
//! `UNION`, `EXISTS`, subqueries named with `AS`. `with_pool!` runs a
//! method's body once per `Backend` arm with `pool` bound to that arm's
//! pool: the body is one text in the source and compiled twice, each copy
//! with its driver's types (row types implement `FromRow` for both rows,
//! through `row!`). Nothing is rewritten or allocated per call. The three
//! statements whose SQL really differs name both texts with
//! `Engine::pick`: the contact search (`instr`/`strpos`), crash recovery
//! of presence (`MAX`/`GREATEST`), and the row locks below (`FOR UPDATE`,
//! which SQLite lacks and does not need). `Engine` also says how a
//! transaction begins.
//!
//! sqlx's `Any` driver was not used: it would save the second compiled copy
//! but not a line of source (the SQL is shared either way), and it loses
//! types: it decodes SQLite's integer flags as integers, not `bool`, has no
//! typed `BYTEA`/`BLOB` distinction beyond bytes, and maps errors and
//! connection options through its own lowest common denominator (no WAL or
//! busy timeout settings on the SQLite side).
//!
//! # Atomicity with several nodes
//!
//! SQLite serialises writers: a write transaction (`Engine::write_tx`)
//! begins `IMMEDIATE`, so it holds the write lock from its first statement.
//! PostgreSQL runs at READ COMMITTED, where two nodes may both read a row
//! before either writes; every write that reads first is made atomic there
//! too, per case:
//!
//! - *Contact edits with a version*: the conditional
//!   `UPDATE ... WHERE version = $n` comes after the revision bump, an
//!   `UPDATE` of the account's row that locks it to the commit. A racing
//!   edit waits for that lock, then sees the committed version: a stale edit
//!   changes nothing and is `Stale` (HTTP 409) whichever node made it.
//! - *Unique usernames, pending requests*: the database's unique
//!   constraints; a violation is [`StoreError::Conflict`] on both backends.
//! - *Refresh-token rotation*: marking the token used is conditional
//!   (`AND rotated_at IS NULL`). Of two nodes presenting the same token at
//!   once, the second finds it used after the first commits: one rotation,
//!   the other is reuse (and signs the device out), never two new tokens.
//! - *The device limit*: a login revokes the least recently active devices
//!   and adds its own in one transaction that first locks the account's row
//!   (`SELECT ... FOR UPDATE`): logins racing on several nodes queue.
//! - *Crossed contact requests* (A asks B while B asks A): both accounts'
//!   rows are locked in id order first (no deadlock), so the second sees the
//!   first's request and the two become mutual.
//! - *Reads of a revision and its entries* (`Engine::read_tx`): one
//!   snapshot (REPEATABLE READ, read only).
//!
//! Row locks and conditional writes were chosen over SERIALIZABLE: they
//! never fail for a retry, and each case needs one lock that is easy to
//! name. A serialization failure or deadlock would still be
//! [`StoreError::Unavailable`], as are lost connections, a full pool and a
//! database that refuses connections: HTTP 503 with `Retry-After`.
//!
//! # Nodes
//!
//! A [`Store`] writes for one node ([`Store::for_node`]: the cluster's node
//! id, else [`LOCAL_NODE`]): its heartbeat (`node_heartbeats`), the calls it
//! keeps open (`open_calls.node_id`: the node that last wrote the journal)
//! and the accounts present on it (`accounts.present_node`). Crash recovery
//! at start ([`Store::recover_presence`], [`Store::recover_open_calls`])
//! touches only this node's rows and ends them at this node's last
//! heartbeat, so a node starting against a shared database never ends
//! another live node's calls or rewrites its accounts' last-seen times.
//!
//! In a cluster the calls have one owner node at a time
//! (`services/calls/cluster.rs`), which takes over every journal
//! ([`Store::open_calls`], whoever wrote it) and alone allocates call ids
//! ([`Store::next_call_id`]); `recover_open_calls` is the single node's
//! path. Left to the cluster's presence: the present accounts of a node
//! that never comes back (its heartbeat stops; another node may clear
//! them once it is declared dead), and an account present on two nodes
//! (marked by the last one). A node that runs alone after having been a
//! cluster node (or the reverse) recovers only the rows of its current id.

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
/// for each driver with its own types. `$pool` is also an `Engine`, for
/// the transactions and the few statements whose SQL differs
/// (`Engine::pick`).
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
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
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
/// trait object: each method matches once (`with_pool!`), with no boxed
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
        use sqlx::Connection;
        let options: PgConnectOptions = url.parse()?;
        // One connection first: its error says why (refused, authentication,
        // no such database), where the pool's would only say it timed out.
        sqlx::PgConnection::connect_with(&options)
            .await?
            .close()
            .await?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // An outage answers 503 within this, rather than hanging requests.
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
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
