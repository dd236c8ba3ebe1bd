//! The configuration loader: a TOML file's text plus `VELA_*` environment
//! variables, merged over the defaults and validated
//! (`vela_config::Config::load_text`, as `Config::load` without the disk).
//!
//! Input: the file's text up to the first NUL byte (none: no file; a NUL
//! first: no file either), then `NAME=value` lines, the environment.
//!
//! Property: a configuration the loader accepts, written back as TOML, loads
//! again to the same configuration.

use vela_config::{CliOverrides, Config};

/// At most this many environment variables per input.
const MAX_VARS: usize = 64;

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, env) = match text.split_once('\0') {
        Some((file, env)) => (file, env),
        None => (text, ""),
    };
    let file = (!file.is_empty()).then_some(("fuzz.toml", file));
    let vars: Vec<(String, String)> = env
        .lines()
        .take(MAX_VARS)
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (l.to_owned(), String::new()),
        })
        .collect();
    let cli = CliOverrides::default();
    let Ok(config) = Config::load_text(file, vars, &cli) else {
        return;
    };
    let written = toml::to_string(&config).expect("a loaded configuration serializes");
    let again = Config::load_text(Some(("written.toml", &written)), Vec::new(), &cli)
        .unwrap_or_else(|e| {
            panic!("a loaded configuration, written back, is refused: {e}\n{written}")
        });
    assert_eq!(again, config, "written back:\n{written}");
}
