//! Settings shared by all three services: the defaults of [`defs::DEFS`], then an optional file
//! (`RELAY_CONFIG`, TOML), then the environment variables of the contract. Each service reads the keys it
//! uses and ignores the rest, so all three can share one environment.
//!
//! The merged values are deserialized into [`Settings`] with `config` and serde; every field is parsed and
//! checked there, at start: a malformed one is a [`SettingsError`] that names the variable (its value
//! masked when it holds a secret), and the service exits with that one line instead of starting
//! half-configured.

pub mod access;
pub mod defs;
pub mod origins;
pub mod proxies;
pub mod retention;
#[cfg(test)]
mod tests;
pub mod tokens;
mod values;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;

use config::{Config, ConfigError, File, FileFormat};
use serde::{Deserialize, Serialize};

pub use access::{Access, ApiKeys, Caller, Channels, Scope};
use defs::{Secret, UsedBy, DEFS};
pub use origins::{AllowedHosts, AllowedOrigins};
pub use proxies::TrustedProxies;
pub use retention::HistoryRetention;
pub use tokens::TokenSecret;
pub use values::{cluster_seeds, mask, mask_url_password, CLUSTER_SCHEME};

/// The variable that names an optional settings file (TOML).
pub const CONFIG_FILE_VAR: &str = "RELAY_CONFIG";

/// Every field is documented in [`defs::DEFS`] under its environment variable's name.
#[derive(Clone, Deserialize, Serialize)]
pub struct Settings {
    #[serde(deserialize_with = "values::redis_url")]
    pub redis_url: String,
    #[serde(deserialize_with = "values::postgres_url")]
    pub database_url: String,
    #[serde(deserialize_with = "values::non_empty")]
    pub stream_key: String,
    #[serde(deserialize_with = "values::parsed")]
    pub ingest_addr: SocketAddr,
    #[serde(deserialize_with = "values::parsed")]
    pub gateway_addr: SocketAddr,
    #[serde(deserialize_with = "values::parsed")]
    pub persister_addr: SocketAddr,
    /// Never empty after loading: defaults to `http://` + `INGEST_ADDR`.
    pub ingest_public_url: String,
    #[serde(deserialize_with = "values::parsed", serialize_with = "values::debug")]
    pub allowed_origins: AllowedOrigins,
    #[serde(deserialize_with = "values::parsed", serialize_with = "values::debug")]
    pub allowed_hosts: AllowedHosts,
    #[serde(deserialize_with = "values::parsed", serialize_with = "values::debug")]
    pub api_keys: ApiKeys,
    #[serde(deserialize_with = "values::parsed", serialize_with = "values::debug")]
    pub token_secret: TokenSecret,
    /// Never empty after loading: defaults to the host name.
    pub consumer_name: String,
    #[serde(deserialize_with = "values::positive")]
    pub claim_idle_ms: u64,
    #[serde(deserialize_with = "values::positive")]
    pub max_deliveries: u64,
    #[serde(deserialize_with = "values::parsed")]
    pub stream_retention: u64,
    #[serde(deserialize_with = "values::parsed", serialize_with = "values::debug")]
    pub history_retention: HistoryRetention,
    #[serde(deserialize_with = "values::positive")]
    pub persister_batch_size: usize,
    #[serde(deserialize_with = "values::positive")]
    pub persister_read_bytes: usize,
    #[serde(deserialize_with = "values::positive")]
    pub persister_block_ms: u64,
    #[serde(deserialize_with = "values::positive")]
    pub ws_send_queue: usize,
    #[serde(deserialize_with = "values::positive")]
    pub ws_send_queue_bytes: usize,
    #[serde(deserialize_with = "values::positive")]
    pub ws_catch_up_ms: u64,
    #[serde(deserialize_with = "values::positive")]
    pub max_connections: usize,
    #[serde(deserialize_with = "values::positive")]
    pub max_subscriptions: usize,
    #[serde(deserialize_with = "values::positive")]
    pub max_body_bytes: usize,
    #[serde(deserialize_with = "values::positive")]
    pub max_batch_lines: usize,
    #[serde(deserialize_with = "values::positive")]
    pub max_batch_bytes: usize,
    #[serde(deserialize_with = "values::positive")]
    pub max_backlog: u64,
    #[serde(deserialize_with = "values::positive")]
    pub max_stream_bytes: u64,
    #[serde(deserialize_with = "values::positive")]
    pub max_idempotency_bytes: u64,
    /// 0: unlimited.
    #[serde(deserialize_with = "values::parsed")]
    pub publish_rate: u32,
    #[serde(deserialize_with = "values::positive")]
    pub client_timeout_ms: u64,
    #[serde(deserialize_with = "values::positive")]
    pub max_inflight_bytes: usize,
    #[serde(deserialize_with = "values::positive")]
    pub max_connections_per_ip: usize,
    /// 0: sized to the open-files limit.
    #[serde(deserialize_with = "values::parsed")]
    pub max_http_connections: usize,
    #[serde(deserialize_with = "values::parsed", serialize_with = "values::debug")]
    pub trusted_proxies: TrustedProxies,
    #[serde(deserialize_with = "values::positive")]
    pub redis_timeout_ms: u64,
    #[serde(deserialize_with = "values::parsed")]
    pub redis_ack_replicas: u64,
    #[serde(deserialize_with = "values::positive")]
    pub redis_ack_timeout_ms: u64,
    #[serde(deserialize_with = "values::positive")]
    pub database_pool_size: u32,
}

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

impl Settings {
    /// Whether neither `API_KEYS` nor `TOKEN_SECRET` is set: every request may do everything (local use).
    pub fn is_open(&self) -> bool {
        self.api_keys.is_open() && !self.token_secret.is_set()
    }

    /// What the credential `presented` (an API key, or a signed token: two dots) may do with `scope`.
    pub fn authorize(&self, presented: Option<&str>, scope: Scope) -> Access {
        if self.is_open() {
            return Access::Granted(Caller::default());
        }
        match presented {
            None => Access::Unauthenticated,
            Some(token) if TokenSecret::looks_like_token(token) => {
                self.token_secret.check(token, scope)
            }
            // With tokens only, no key is valid (an empty ApiKeys would grant everything).
            Some(_) if self.api_keys.is_open() => Access::Unauthenticated,
            Some(key) => self.api_keys.check(Some(key), scope),
        }
    }

    /// Defaults, then the file named by `RELAY_CONFIG`, then the process environment.
    pub fn load() -> Result<Self, SettingsError> {
        Self::from_sources(std::env::vars())
    }

    /// Only the defaults: the starting point of tests, which then set their own fields.
    pub fn defaults() -> Self {
        // The defaults are loaded by a unit test, so this cannot fail at run time.
        #[allow(clippy::expect_used)]
        Self::from_sources(std::iter::empty()).expect("the defaults are valid")
    }

    /// Like [`Settings::load`], with `vars` standing in for the process environment.
    pub fn from_sources(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, SettingsError> {
        // Keys are matched case-insensitively: the contract's names are upper case, a file's may be either.
        let env: HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let mut values: HashMap<String, String> = DEFS
            .iter()
            .map(|d| (d.name.to_ascii_lowercase(), d.default.to_owned()))
            .collect();
        if let Some(path) = env.get(&CONFIG_FILE_VAR.to_ascii_lowercase()) {
            values.extend(file_table(path)?);
        }
        // Only the keys Relay knows: the rest of the environment (PATH, HOME, …) is none of its business.
        let known: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| values.contains_key(k))
            .collect();
        values.extend(known);

        let mut builder = Config::builder();
        for (k, v) in &values {
            builder = builder
                .set_override(k.as_str(), v.as_str())
                .map_err(|e| SettingsError::Source(e.to_string()))?;
        }
        let mut settings: Self = builder
            .build()
            .and_then(Config::try_deserialize)
            .map_err(|e| invalid(e, &values))?;
        // In a cluster a key's slot decides its node, and the idempotency script and a batch's MULTI/EXEC
        // touch several of the stream's keys at once: those must share a slot, which only a hash tag in
        // STREAM_KEY (copied into every derived key by `model::keys`) guarantees.
        if settings.redis_cluster_seeds().is_some()
            && !model::keys::has_hash_tag(&settings.stream_key)
        {
            return Err(SettingsError::Invalid {
                name: "STREAM_KEY".into(),
                value: settings.stream_key.clone(),
                reason: format!(
                    "REDIS_URL names a Redis Cluster, where all of a stream's keys must share one slot: \
                     put a hash tag in it, e.g. {{{}}}",
                    settings.stream_key.replace(['{', '}'], "")
                ),
            });
        }
        // Every Redis reply is bounded by REDIS_TIMEOUT_MS, WAIT's too: a longer wait would always fail.
        if settings.redis_ack_replicas > 0
            && settings.redis_ack_timeout_ms >= settings.redis_timeout_ms
        {
            return Err(SettingsError::Invalid {
                name: "REDIS_ACK_TIMEOUT_MS".into(),
                value: settings.redis_ack_timeout_ms.to_string(),
                reason: format!(
                    "must be below REDIS_TIMEOUT_MS ({}), which bounds every Redis reply",
                    settings.redis_timeout_ms
                ),
            });
        }
        if settings.ingest_public_url.trim().is_empty() {
            settings.ingest_public_url = format!("http://{}", settings.ingest_addr);
        }
        settings.ingest_public_url = settings
            .ingest_public_url
            .trim()
            .trim_end_matches('/')
            .to_owned();
        if settings.consumer_name.trim().is_empty() {
            settings.consumer_name = hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "persister".into());
        }
        Ok(settings)
    }

    /// The seed nodes (`redis://…` URLs) when `REDIS_URL` names a Redis Cluster
    /// (`redis+cluster://host:port,host:port`), else `None`.
    pub fn redis_cluster_seeds(&self) -> Option<Vec<String>> {
        // Loading checked the URL, so a parse error cannot happen here; it reads as no seeds.
        cluster_seeds(&self.redis_url).map(Result::unwrap_or_default)
    }

    /// One line of the settings `used_by` a binary reads, secrets masked: what the service logs at start.
    pub fn describe(&self, used_by: UsedBy) -> String {
        let values = serde_json::to_value(self).unwrap_or_default();
        DEFS.iter()
            .filter(|d| d.used_by & used_by != 0)
            .filter_map(|d| {
                let value = match values.get(d.name.to_ascii_lowercase())? {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Some(format!("{}={}", d.name, mask(d.secret, &value)))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(defs::ALL))
    }
}

/// A settings file's keys (lower-cased) and values (as text; deserializing parses them).
fn file_table(path: &str) -> Result<HashMap<String, String>, SettingsError> {
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
fn invalid(e: ConfigError, values: &HashMap<String, String>) -> SettingsError {
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
