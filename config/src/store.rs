//! `[store]`: where accounts, devices and contacts are kept.

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// The database (`[store]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The database: `sqlite://PATH` (a file, created when missing),
    /// `postgres://user:pass@host:port/db` (PostgreSQL, which every node of
    /// a cluster shares). Empty: the SQLite file at `path`.
    pub url: String,
    /// Path of the SQLite file when `url` is empty, created when missing;
    /// relative paths are relative to the working directory. `:memory:`
    /// keeps everything in memory (lost at exit; for tests and load tests).
    pub path: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            path: "vela.sqlite".to_owned(),
        }
    }
}

/// The database a [`StoreConfig`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreUrl {
    /// An SQLite file (or `:memory:`).
    Sqlite(String),
    /// A PostgreSQL server: the URL as given.
    Postgres(String),
}

impl StoreConfig {
    /// Which database to open: `url` when set, else the file at `path`.
    pub fn location(&self) -> Result<StoreUrl, ConfigError> {
        let url = self.url.trim();
        if url.is_empty() {
            return Ok(StoreUrl::Sqlite(self.path.clone()));
        }
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(ConfigError::invalid("store.url", "names no SQLite file"));
            }
            return Ok(StoreUrl::Sqlite(path.to_owned()));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreUrl::Postgres(url.to_owned()));
        }
        Err(ConfigError::invalid(
            "store.url",
            "must start with sqlite:// or postgres://",
        ))
    }

    /// Checks the rules that serde cannot express.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.path.trim().is_empty() {
            return Err(ConfigError::invalid("store.path", "must not be empty"));
        }
        self.location().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(url: &str) -> Result<StoreUrl, ConfigError> {
        StoreConfig {
            url: url.to_owned(),
            ..StoreConfig::default()
        }
        .location()
    }

    #[test]
    fn the_url_names_the_database_and_the_path_stays_the_default() {
        assert_eq!(at("").unwrap(), StoreUrl::Sqlite("vela.sqlite".into()));
        assert_eq!(
            at("sqlite://data/v.sqlite").unwrap(),
            StoreUrl::Sqlite("data/v.sqlite".into())
        );
        assert_eq!(
            at("sqlite::memory:").unwrap(),
            StoreUrl::Sqlite(":memory:".into())
        );
        assert_eq!(
            at("postgres://vela:pw@db:5432/vela").unwrap(),
            StoreUrl::Postgres("postgres://vela:pw@db:5432/vela".into())
        );
        assert!(at("mysql://x").is_err());
        assert!(at("sqlite://").is_err());
    }
}
