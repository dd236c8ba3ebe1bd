//! Configuration of the vela server.
//!
//! Sources, lowest to highest precedence: built-in defaults
//! ([`Config::default`], also listed in [`Config::default_toml`]), a TOML
//! file, `VELA_<SECTION>_<KEY>` environment variables, and [`CliOverrides`].
//! Unknown keys and unknown `VELA_*` variables are errors, and
//! [`Config::validate`] checks the rules serde cannot express. This crate only
//! describes settings; it never imports the engines that use them.

mod auth;
mod calls;
mod cli;
mod cluster;
mod env;
mod error;
mod limits;
mod media;
mod presence;
mod server;
mod store;
mod turn;
mod webhooks;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use auth::{AuthConfig, DEV_API_KEY, DEV_API_SECRET, MIN_API_SECRET_BYTES};
pub use calls::CallsConfig;
pub use cli::CliOverrides;
pub use cluster::ClusterConfig;
pub use error::ConfigError;
pub use limits::LimitsConfig;
pub use media::MediaConfig;
pub use presence::PresenceConfig;
pub use server::ServerConfig;
pub use store::{StoreConfig, StoreUrl};
pub use turn::{IceScheme, MIN_TURN_SECRET_CHARS, TurnConfig, ice_scheme};
pub use webhooks::WebhooksConfig;

/// The whole server configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP/WebSocket listener and logging (`[server]`).
    pub server: ServerConfig,
    /// The SFU's UDP socket and timing (`[media]`).
    pub media: MediaConfig,
    /// API credentials and tokens (`[auth]`).
    pub auth: AuthConfig,
    /// Resource limits (`[limits]`).
    pub limits: LimitsConfig,
    /// The database (`[store]`).
    pub store: StoreConfig,
    /// Presence (`[presence]`).
    pub presence: PresenceConfig,
    /// Calls between accounts (`[calls]`).
    pub calls: CallsConfig,
    /// Where events are posted (`[webhooks]`).
    pub webhooks: WebhooksConfig,
    /// Several nodes sharing state (`[cluster]`).
    pub cluster: ClusterConfig,
    /// STUN/TURN servers handed to clients (`[turn]`).
    pub turn: TurnConfig,
}

impl Config {
    /// Loads defaults < `file` < `VELA_*` variables in `env` < `cli`, then validates.
    ///
    /// `env` is usually `std::env::vars()`; variables without the `VELA_`
    /// prefix, `VELA_CONFIG` and `VELA_LOG` are ignored.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        cli: &CliOverrides,
    ) -> Result<Config, ConfigError> {
        let text = match file {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                        path: path.to_owned(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let origin = file.map(|path| path.display().to_string());
        Self::load_from(origin.as_deref().zip(text.as_deref()), env, cli)
    }

    /// [`Config::load_from`] for the fuzz targets (fuzz/): no file system.
    #[cfg(feature = "fuzzing")]
    #[doc(hidden)]
    pub fn load_text(
        file: Option<(&str, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
        cli: &CliOverrides,
    ) -> Result<Config, ConfigError> {
        Self::load_from(file, env, cli)
    }

    /// [`Config::load`] with the file given as `(origin, text)`.
    fn load_from(
        file: Option<(&str, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
        cli: &CliOverrides,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some((origin, text)) => {
                let parse_error = |e: toml::de::Error| ConfigError::Parse {
                    origin: origin.to_owned(),
                    message: e.to_string().trim_end().to_owned(),
                };
                // Deserializing the text itself gives errors that quote the
                // offending line; the table is what env values merge into.
                toml::from_str::<Config>(text).map_err(parse_error)?;
                toml::from_str::<toml::Table>(text).map_err(parse_error)?
            }
            None => toml::Table::new(),
        };

        let defaults =
            toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Parse {
                origin: "defaults".to_owned(),
                message: e.to_string(),
            })?;
        env::apply(&mut table, &defaults, env)?;

        let mut config: Config = table.try_into().map_err(|e| ConfigError::Parse {
            origin: "environment".to_owned(),
            message: e.to_string(),
        })?;
        cli.apply(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// The commented default configuration file (every key with its default).
    pub fn default_toml() -> &'static str {
        include_str!("../default.toml")
    }

    /// Checks the rules serde cannot express; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.media.validate()?;
        self.auth.validate()?;
        self.limits.validate()?;
        self.store.validate()?;
        self.presence.validate()?;
        self.calls.validate()?;
        self.webhooks.validate()?;
        self.cluster.validate()?;
        self.turn.validate()?;
        // One TCP port cannot serve both HTTP and ICE.
        if self.media.tcp_port != 0 && self.media.tcp_port == self.server.http.port() {
            return Err(ConfigError::invalid(
                "media.tcp_port",
                format!(
                    "{} is server.http's port; ICE over TCP needs a port of its own (0 = off)",
                    self.media.tcp_port
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
