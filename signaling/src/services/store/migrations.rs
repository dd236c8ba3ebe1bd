//! The schema's migrations (`signaling/migrations/`), built into the binary.
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

/// Every migration file: its name and text, in version order.
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
];

/// The migrations in [`FILES`].
#[derive(Debug)]
pub struct Embedded;

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            FILES
                .iter()
                .map(|(name, sql)| migration(name, sql))
                .collect::<Result<Vec<_>, _>>()
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

    #[test]
    fn every_file_in_the_folder_is_built_in_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut on_disk: Vec<(String, String)> = std::fs::read_dir(dir)
            .expect("migrations folder")
            .map(|e| {
                let path = e.expect("entry").path();
                let name = path
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned();
                let text = std::fs::read_to_string(&path).expect("text");
                (name, text)
            })
            .collect();
        on_disk.sort();
        let built_in: Vec<(String, String)> = FILES
            .iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect();
        assert_eq!(built_in, on_disk, "list every migration file in FILES");
        let versions: Vec<i64> = FILES
            .iter()
            .map(|(n, t)| migration(n, t).expect("valid").version)
            .collect();
        assert_eq!(versions, (1..=FILES.len() as i64).collect::<Vec<_>>());
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
