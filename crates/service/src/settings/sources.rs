//! Where settings come from besides the defaults, and what goes wrong there: a settings file
//! (`RELAY_CONFIG`, TOML) read into a table, and a bad value turned into one [`SettingsError`] line that
//! names the variable and never shows a secret.

use std::collections::HashMap;

use config::{Config, ConfigError, File, FileFormat};

use super::defs::{self, Secret};
use super::{mask, CONFIG_FILE_VAR};

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// `value` is already masked when the setting holds a secret.
    #[error("invalid setting {name}={value:?}: {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
    #[error("cannot read settings: {0}")]
    Source(String),
}

/// A settings file's keys (lower-cased) and values (as text; deserializing parses them).
pub(super) fn file_table(path: &str) -> Result<HashMap<String, String>, SettingsError> {
    // The TOML parser's message quotes the offending line, which may hold a key or a password: only its
    // first line (where the error is) is shown.
    let err = |e: ConfigError| {
        let text = match &e {
            ConfigError::FileParse { cause, .. } => cause.to_string(),
            other => other.to_string(),
        };
        let first = text.lines().next().unwrap_or_default();
        SettingsError::Source(format!(
            "{CONFIG_FILE_VAR}={path}: {first} (the line itself is not shown: it may hold a secret)"
        ))
    };
    let map: HashMap<String, config::Value> = Config::builder()
        .add_source(
            File::with_name(path)
                .format(FileFormat::Toml)
                .required(true),
        )
        .build()
        .map_err(err)?
        .try_deserialize()
        .map_err(err)?;
    map.into_iter()
        .map(|(k, v)| Ok((k.to_ascii_lowercase(), v.into_string().map_err(err)?)))
        .collect()
}

/// A deserialization error as one line naming the variable, its value masked when secret.
pub(super) fn invalid(e: ConfigError, values: &HashMap<String, String>) -> SettingsError {
    let (key, reason) = match e {
        ConfigError::At {
            error,
            key: Some(key),
            ..
        } => (key, error.to_string()),
        ConfigError::Type {
            key: Some(key),
            expected,
            ..
        } => (key, format!("expected {expected}")),
        other => return SettingsError::Source(other.to_string()),
    };
    let def = defs::find(&key);
    let value = values.get(&key).map(String::as_str).unwrap_or_default();
    SettingsError::Invalid {
        name: key.to_ascii_uppercase(),
        value: mask(def.map_or(Secret::No, |d| d.secret), value),
        reason,
    }
}
