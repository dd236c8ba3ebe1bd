//! `[store]`: where accounts, devices and contacts are kept.

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// The database (`[store]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Path of the SQLite file, created when missing; relative paths are
    /// relative to the working directory. `:memory:` keeps everything in
    /// memory (lost at exit; for tests and load tests).
    pub path: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: "vela.sqlite".to_owned(),
        }
    }
}

impl StoreConfig {
    /// Checks the rules that serde cannot express.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.path.trim().is_empty() {
            return Err(ConfigError::invalid("store.path", "must not be empty"));
        }
        Ok(())
    }
}
