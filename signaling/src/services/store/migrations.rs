//! The schema's migrations, built into the binary: SQLite's in
//! `signaling/migrations/`, PostgreSQL's in `signaling/migrations/postgres/`,
//! kept in step (the same versions and names; a test checks).
//!
//! What `sqlx::migrate!()` does, without sqlx's macros crate: each file is
//! one [`Migration`] with the version and description of its name
//! (`0002_calls.sql`: 2, "calls") and the checksum of its text, so
//! databases migrated by either agree. A test checks this list against the
//! folder.

use std::borrow::Cow;

use futures_util::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType};

/// Every SQLite migration file: its name and text, in version order.
const FILES: &[(&str, &str)] = &[
    (
        "0001_accounts_devices_contacts.sql",
        include_str!("../../../migrations/0001_accounts_devices_contacts.sql"),
    ),
    (
        "0002_calls.sql",
        include_str!("../../../migrations/0002_calls.sql"),
    ),
    (
        "0003_open_calls.sql",
        include_str!("../../../migrations/0003_open_calls.sql"),
    ),
    (
        "0004_node_heartbeats.sql",
        include_str!("../../../migrations/0004_node_heartbeats.sql"),
    ),
];

/// Every PostgreSQL migration file, in version order.
const POSTGRES_FILES: &[(&str, &str)] = &[
    (
        "0001_accounts_devices_contacts.sql",
        include_str!("../../../migrations/postgres/0001_accounts_devices_contacts.sql"),
    ),
    (
        "0002_calls.sql",
        include_str!("../../../migrations/postgres/0002_calls.sql"),
    ),
    (
        "0003_open_calls.sql",
        include_str!("../../../migrations/postgres/0003_open_calls.sql"),
    ),
    (
        "0004_node_heartbeats.sql",
        include_str!("../../../migrations/postgres/0004_node_heartbeats.sql"),
    ),
];

/// The built-in migrations of one backend.
#[derive(Debug, Clone, Copy)]
pub enum Embedded {
    /// [`FILES`].
    Sqlite,
    /// [`POSTGRES_FILES`].
    Postgres,
}

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        let files = match self {
            Embedded::Sqlite => FILES,
            Embedded::Postgres => POSTGRES_FILES,
        };
        Box::pin(async move {
            files
                .iter()
                .map(|(name, sql)| migration(name, sql))
                .collect::<Result<Vec<_>, _>>()
        })
    }
}

/// The migrations of a backend up to a version: a database as an older
/// server left it, for upgrade tests.
#[cfg(test)]
#[derive(Debug)]
pub struct UpTo(pub Embedded, pub i64);

#[cfg(test)]
impl MigrationSource<'static> for UpTo {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            let all = self.0.resolve().await?;
            Ok(all.into_iter().filter(|m| m.version <= self.1).collect())
        })
    }
}

/// A migration from a file name (`<version>_<description>.sql`) and text.
fn migration(name: &str, sql: &'static str) -> Result<Migration, BoxDynError> {
    let (version, rest) = name
        .split_once('_')
        .ok_or_else(|| format!("migration {name}: no version"))?;
    let version: i64 = version
        .parse()
        .map_err(|_| format!("migration {name}: the version is not a number"))?;
    let description = rest
        .strip_suffix(".sql")
        .ok_or_else(|| format!("migration {name}: not .sql"))?
        .replace('_', " ");
    Ok(Migration::new(
        version,
        Cow::Owned(description),
        MigrationType::Simple,
        Cow::Borrowed(sql),
        sql.starts_with("-- no-transaction"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `.sql` files in `dir`, by name.
    fn on_disk(dir: &str) -> Vec<(String, String)> {
        let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
            .expect("migrations folder")
            .map(|e| e.expect("entry").path())
            .filter(|path| path.extension().is_some_and(|x| x == "sql"))
            .map(|path| {
                let name = path
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned();
                let text = std::fs::read_to_string(&path).expect("text");
                (name, text)
            })
            .collect();
        files.sort();
        files
    }

    fn built_in(files: &[(&str, &str)]) -> Vec<(String, String)> {
        files
            .iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect()
    }

    #[test]
    fn every_file_in_the_folder_is_built_in_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        assert_eq!(
            built_in(FILES),
            on_disk(dir),
            "list every migration file in FILES"
        );
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres");
        assert_eq!(
            built_in(POSTGRES_FILES),
            on_disk(dir),
            "list every PostgreSQL migration file in POSTGRES_FILES"
        );
        let versions: Vec<i64> = FILES
            .iter()
            .map(|(n, t)| migration(n, t).expect("valid").version)
            .collect();
        assert_eq!(versions, (1..=FILES.len() as i64).collect::<Vec<_>>());
    }

    #[test]
    fn both_backends_have_the_same_migrations() {
        let names = |files: &[(&str, &'static str)]| -> Vec<(i64, String)> {
            files
                .iter()
                .map(|(n, t)| {
                    let m = migration(n, t).expect("valid");
                    (m.version, m.description.into_owned())
                })
                .collect()
        };
        assert_eq!(
            names(FILES),
            names(POSTGRES_FILES),
            "a migration of one backend needs its twin in the other's folder"
        );
    }

    #[test]
    fn a_migration_has_the_version_description_and_checksum_sqlx_gives_it() {
        let m = migration("0002_calls.sql", "CREATE TABLE t (x INTEGER);").expect("valid");
        assert_eq!(m.version, 2);
        assert_eq!(m.description, "calls");
        assert_eq!(m.migration_type, MigrationType::Simple);
        assert!(!m.no_tx);
        // SHA-384 of the text, as `sqlx::migrate!()` records it.
        use sha2::Digest;
        let sum = sha2::Sha384::digest(b"CREATE TABLE t (x INTEGER);");
        assert_eq!(&*m.checksum, sum.as_slice());
        assert!(migration("calls.sql", "").is_err());
        assert!(migration("x_calls.sql", "").is_err());
    }
}
