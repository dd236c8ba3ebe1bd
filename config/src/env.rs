//! Environment variables: `VELA_<SECTION>_<KEY>` overrides `<section>.<key>`.
//!
//! Each known key's type is taken from the serialized defaults, so a value is
//! read as the type its key expects (`VELA_AUTH_API_KEY=1234` stays a string;
//! list keys are split on commas). Each variable is checked on its own before
//! it is merged, so a bad value yields an error naming the variable.

use std::collections::BTreeMap;

use toml::{Table, Value};

use crate::{Config, ConfigError};

/// Prefix of every variable considered.
const PREFIX: &str = "VELA_";
/// Variables with the prefix that are not settings (used by the binary).
const IGNORED: [&str; 2] = ["VELA_CONFIG", "VELA_LOG"];

/// Where an environment variable goes, and what type its default has.
struct Target<'a> {
    section: &'a str,
    key: &'a str,
    default: &'a Value,
}

/// Name of the variable that sets `section.key`.
pub(crate) fn var_name(section: &str, key: &str) -> String {
    format!(
        "{PREFIX}{}_{}",
        section.to_ascii_uppercase(),
        key.to_ascii_uppercase()
    )
}

/// Merges the `VELA_*` variables of `env` into `table` (a parsed config file).
///
/// `defaults` is `Config::default()` serialized; it lists every known key.
pub(crate) fn apply(
    table: &mut Table,
    defaults: &Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut targets = BTreeMap::new();
    for (section, keys) in defaults {
        let Value::Table(keys) = keys else { continue };
        for (key, default) in keys {
            targets.insert(
                var_name(section, key),
                Target {
                    section,
                    key,
                    default,
                },
            );
        }
    }

    // Sorted, so the error reported for several bad variables is stable.
    let vars: BTreeMap<String, String> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(PREFIX) && !IGNORED.contains(&name.as_str()))
        .collect();

    for (var, raw) in vars {
        let Some(target) = targets.get(&var) else {
            return Err(ConfigError::Env {
                var,
                message: "unknown variable (expected VELA_<SECTION>_<KEY> for a known key)"
                    .to_owned(),
            });
        };
        let value = match parse_like(target.default, &raw) {
            Ok(value) => value,
            Err(message) => return Err(ConfigError::Env { var, message }),
        };

        // Check the value alone against the schema so the error names `var`.
        let mut probe = defaults.clone();
        insert(&mut probe, target.section, target.key, value.clone());
        if let Err(e) = probe.try_into::<Config>() {
            return Err(ConfigError::Env {
                var,
                message: e.message().to_owned(),
            });
        }

        insert(table, target.section, target.key, value);
    }
    Ok(())
}

/// Sets `table[section][key] = value`, creating the section if needed.
fn insert(table: &mut Table, section: &str, key: &str, value: Value) {
    let entry = table
        .entry(section)
        .or_insert_with(|| Value::Table(Table::new()));
    if !entry.is_table() {
        *entry = Value::Table(Table::new());
    }
    if let Value::Table(keys) = entry {
        keys.insert(key.to_owned(), value);
    }
}

/// Reads `raw` as a value of the same TOML type as `like`.
fn parse_like(like: &Value, raw: &str) -> Result<Value, String> {
    match like {
        Value::String(_) => Ok(Value::String(raw.to_owned())),
        Value::Integer(_) => raw
            .trim()
            .parse()
            .map(Value::Integer)
            .map_err(|_| format!("expected an integer, got `{raw}`")),
        Value::Float(_) => raw
            .trim()
            .parse()
            .map(Value::Float)
            .map_err(|_| format!("expected a number, got `{raw}`")),
        Value::Boolean(_) => raw
            .trim()
            .parse()
            .map(Value::Boolean)
            .map_err(|_| format!("expected `true` or `false`, got `{raw}`")),
        Value::Array(items) => {
            // Element type from the default's first element; strings otherwise.
            let element = items
                .first()
                .cloned()
                .unwrap_or_else(|| Value::String(String::new()));
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| parse_like(&element, item))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        // No such keys today; read TOML syntax, else keep the text as a string.
        Value::Datetime(_) | Value::Table(_) => Ok(raw
            .parse::<Value>()
            .unwrap_or_else(|_| Value::String(raw.to_owned()))),
    }
}
