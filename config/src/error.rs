//! The error returned when configuration cannot be loaded or is invalid.

use std::path::PathBuf;

/// Why a configuration could not be loaded or validated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// Path of the file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The configuration (file or merged environment) is not valid TOML for
    /// the schema: syntax error, unknown key or value of the wrong type.
    #[error("{origin}: {message}")]
    Parse {
        /// Where the text came from: a file path, or "environment".
        origin: String,
        /// The parser's message; names the offending key or field.
        message: String,
    },
    /// An environment variable is unknown or holds an unusable value.
    #[error("environment variable {var}: {message}")]
    Env {
        /// Name of the offending variable, e.g. `VELA_MEDIA_UDP_PORT`.
        var: String,
        /// What is wrong with it.
        message: String,
    },
    /// A value parsed but breaks a rule checked by `Config::validate`.
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted key of the offending setting, e.g. `media.connect_timeout_ms`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    /// Builds an [`ConfigError::Invalid`] for `key`.
    pub(crate) fn invalid(key: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}
