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
pub mod proxies;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use config::{Config, ConfigError, File, FileFormat};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use access::{Access, AllowedOrigins, ApiKeys, Caller, Scope};
use defs::{Secret, UsedBy, DEFS};
pub use proxies::TrustedProxies;

/// The variable that names an optional settings file (TOML).
pub const CONFIG_FILE_VAR: &str = "RELAY_CONFIG";

/// Every field is documented in [`defs::DEFS`] under its environment variable's name.
#[derive(Clone, Deserialize, Serialize)]
pub struct Settings {
    #[serde(deserialize_with = "redis_url")]
    pub redis_url: String,
    #[serde(deserialize_with = "postgres_url")]
    pub database_url: String,
    #[serde(deserialize_with = "non_empty")]
    pub stream_key: String,
    #[serde(deserialize_with = "parsed")]
    pub ingest_addr: SocketAddr,
    #[serde(deserialize_with = "parsed")]
    pub gateway_addr: SocketAddr,
    #[serde(deserialize_with = "parsed")]
    pub persister_addr: SocketAddr,
    /// Never empty after loading: defaults to `http://` + `INGEST_ADDR`.
    pub ingest_public_url: String,
    #[serde(deserialize_with = "parsed", serialize_with = "debug")]
    pub allowed_origins: AllowedOrigins,
    #[serde(deserialize_with = "parsed", serialize_with = "debug")]
    pub api_keys: ApiKeys,
    /// Never empty after loading: defaults to the host name.
    pub consumer_name: String,
    #[serde(deserialize_with = "positive")]
    pub claim_idle_ms: u64,
    #[serde(deserialize_with = "positive")]
    pub max_deliveries: u64,
    #[serde(deserialize_with = "parsed")]
    pub stream_retention: u64,
    #[serde(deserialize_with = "positive")]
    pub persister_batch_size: usize,
    #[serde(deserialize_with = "positive")]
    pub persister_block_ms: u64,
    #[serde(deserialize_with = "positive")]
    pub ws_send_queue: usize,
    #[serde(deserialize_with = "positive")]
    pub ws_send_queue_bytes: usize,
    #[serde(deserialize_with = "positive")]
    pub max_connections: usize,
    #[serde(deserialize_with = "positive")]
    pub max_body_bytes: usize,
    #[serde(deserialize_with = "positive")]
    pub max_batch_lines: usize,
    #[serde(deserialize_with = "positive")]
    pub max_batch_bytes: usize,
    #[serde(deserialize_with = "positive")]
    pub max_backlog: u64,
    #[serde(deserialize_with = "positive")]
    pub max_stream_bytes: u64,
    /// 0: unlimited.
    #[serde(deserialize_with = "parsed")]
    pub publish_rate: u32,
    #[serde(deserialize_with = "positive")]
    pub client_timeout_ms: u64,
    #[serde(deserialize_with = "positive")]
    pub max_inflight_bytes: usize,
    #[serde(deserialize_with = "positive")]
    pub max_connections_per_ip: usize,
    #[serde(deserialize_with = "parsed", serialize_with = "debug")]
    pub trusted_proxies: TrustedProxies,
    #[serde(deserialize_with = "positive")]
    pub redis_timeout_ms: u64,
    #[serde(deserialize_with = "parsed")]
    pub redis_ack_replicas: u64,
    #[serde(deserialize_with = "positive")]
    pub redis_ack_timeout_ms: u64,
    #[serde(deserialize_with = "positive")]
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
    let err = |e: ConfigError| SettingsError::Source(format!("{CONFIG_FILE_VAR}={path}: {e}"));
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

/// A value fit for a log line.
pub fn mask(secret: Secret, value: &str) -> String {
    match secret {
        Secret::No => value.to_owned(),
        Secret::Whole if value.trim().is_empty() => String::new(),
        Secret::Whole if value.trim().starts_with('@') => value.trim().to_owned(), // a path, not a key
        Secret::Whole => "***".to_owned(),
        Secret::UrlPassword => mask_url_password(value),
    }
}

/// A URL fit for a log line: `user:secret@` becomes `user:***@`. Text that is not a URL but might hold
/// credentials keeps only what follows its last `@`.
pub fn mask_url_password(value: &str) -> String {
    match url::Url::parse(value) {
        Ok(mut url) => {
            if url.password().is_some() {
                // Setting a password fails only for URLs that cannot have one, and this one has one.
                let _ = url.set_password(Some("***"));
            }
            url.to_string()
        }
        Err(_) => match value.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => value.to_owned(),
        },
    }
}

fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    String::deserialize(d).map(|s| s.trim().to_owned())
}

fn parsed<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    text(d)?.parse().map_err(serde::de::Error::custom)
}

fn positive<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + Default + PartialEq,
    T::Err: fmt::Display,
{
    let v: T = parsed(d)?;
    if v == T::default() {
        return Err(serde::de::Error::custom("must be greater than zero"));
    }
    Ok(v)
}

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = text(d)?;
    if v.is_empty() {
        return Err(serde::de::Error::custom("must not be empty"));
    }
    Ok(v)
}

fn url_with_scheme<'de, D: Deserializer<'de>>(d: D, schemes: &[&str]) -> Result<String, D::Error> {
    let v = non_empty(d)?;
    // The reason never repeats the value: it may hold a password.
    let url =
        url::Url::parse(&v).map_err(|e| serde::de::Error::custom(format!("not a URL ({e})")))?;
    if !schemes.contains(&url.scheme()) {
        return Err(serde::de::Error::custom(format!(
            "expected a URL starting with {}",
            schemes
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(" or ")
        )));
    }
    Ok(v)
}

/// How `REDIS_URL` names a Redis Cluster: `redis+cluster://[user:password@]host:port[,host:port…]`, a few
/// of its nodes (any will do: the client learns the rest and the slot map from them).
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// The seed nodes of a cluster URL as `redis://` URLs (the credentials apply to each), or why the URL is
/// malformed (without repeating it: it may hold a password); `None` when `url` is not a cluster URL.
pub fn cluster_seeds(url: &str) -> Option<Result<Vec<String>, String>> {
    let rest = url.trim().strip_prefix(CLUSTER_SCHEME)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    Some((|| {
        if rest.contains(['/', '?', '#']) {
            return Err(
                "a cluster URL names nodes only (a cluster has no database number)".to_owned(),
            );
        }
        let (userinfo, hosts) = match rest.rsplit_once('@') {
            Some((user, hosts)) => (format!("{user}@"), hosts),
            None => (String::new(), rest),
        };
        let seeds = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|host| {
                let seed = format!("redis://{userinfo}{host}");
                match url::Url::parse(&seed) {
                    Ok(u) if u.host().is_some() && u.port().is_some() => Ok(seed),
                    _ => Err(format!("`{host}` is not a host:port")),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if seeds.is_empty() {
            return Err("a cluster URL names at least one host:port".to_owned());
        }
        Ok(seeds)
    })())
}

fn redis_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = non_empty(d)?;
    if let Some(seeds) = cluster_seeds(&v) {
        return seeds.map(|_| v).map_err(serde::de::Error::custom);
    }
    url_with_scheme(
        serde::de::value::StrDeserializer::<D::Error>::new(&v),
        &["redis", "rediss", "unix", "redis+unix", "redis+cluster"],
    )
}

fn postgres_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    url_with_scheme(d, &["postgres", "postgresql"])
}

fn debug<S: Serializer, T: fmt::Debug>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::from_sources(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn the_defaults_are_the_contracts() {
        let s = with(&[]).unwrap();
        assert_eq!(s.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(s.database_url, "postgres://postgres@127.0.0.1:5432/relay");
        assert_eq!(s.stream_key, "messages");
        assert_eq!(s.ingest_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.ingest_public_url, "http://127.0.0.1:8080");
        assert_eq!(s.claim_idle_ms, 15000);
        assert_eq!(s.ws_send_queue, 1024);
        assert_eq!(s.max_body_bytes, 1 << 20);
        assert_eq!(s.max_backlog, 1_000_000);
        assert_eq!(s.max_stream_bytes, 1 << 30);
        assert_eq!(s.publish_rate, 0);
        assert_eq!(s.client_timeout_ms, 15_000);
        assert_eq!(s.max_connections_per_ip, 100);
        assert!(s.trusted_proxies.is_empty());
        assert_eq!(s.allowed_origins, AllowedOrigins::Any);
        assert!(s.api_keys.is_open());
        assert!(!s.consumer_name.is_empty());
    }

    #[test]
    fn environment_variables_override_defaults_and_unknown_ones_are_ignored() {
        let s = with(&[
            ("STREAM_KEY", "other"),
            ("MAX_BODY_BYTES", "10"),
            ("PATH", "/bin"),
            ("HOME", "x"),
        ])
        .unwrap();
        assert_eq!(s.stream_key, "other");
        assert_eq!(s.max_body_bytes, 10);
    }

    #[test]
    fn a_malformed_value_names_its_variable() {
        for (name, value) in [
            ("MAX_BODY_BYTES", "lots"),
            ("INGEST_ADDR", "localhost"),
            ("REDIS_URL", "http://x"),
            ("CLAIM_IDLE_MS", "0"),
            ("API_KEYS", "secret"),
            ("ALLOWED_ORIGINS", "example.com"),
            ("STREAM_KEY", " "),
            ("TRUSTED_PROXIES", "10.0.0.1,proxy"),
            ("PUBLISH_RATE", "-1"),
        ] {
            let err = with(&[(name, value)]).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("invalid setting {name}=")),
                "{err}"
            );
        }
    }

    #[test]
    fn a_setting_error_never_shows_a_secret() {
        for (name, value, secret) in [
            ("API_KEYS", "topsecretkey", "topsecretkey"),
            ("API_KEYS", "k1:publish,topsecret2:fly", "topsecret2"),
            ("DATABASE_URL", "mysql://u:hunter2@h/db", "hunter2"),
            ("DATABASE_URL", "postgres//u:hunter2@h/db", "hunter2"),
            ("REDIS_URL", "http://:hunter2@h", "hunter2"),
        ] {
            let err = with(&[(name, value)]).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
            assert!(!err.contains(secret), "{err} shows {secret}");
        }
    }

    #[test]
    fn the_effective_settings_line_masks_secrets() {
        let s = with(&[
            ("DATABASE_URL", "postgres://u:hunter2@h/db"),
            ("API_KEYS", "topsecretkey:read"),
        ])
        .unwrap();
        let line = s.describe(defs::ALL);
        assert!(
            line.contains("DATABASE_URL=postgres://u:***@h/db"),
            "{line}"
        );
        assert!(line.contains("API_KEYS=***"), "{line}");
        assert!(
            !line.contains("hunter2") && !line.contains("topsecretkey"),
            "{line}"
        );
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn a_cluster_url_names_its_seed_nodes_and_needs_a_hash_tagged_stream_key() {
        let s = with(&[
            (
                "REDIS_URL",
                "redis+cluster://:pw@10.0.0.1:7000, 10.0.0.2:7001/",
            ),
            ("STREAM_KEY", "{messages}"),
        ])
        .unwrap();
        assert_eq!(
            s.redis_cluster_seeds().unwrap(),
            ["redis://:pw@10.0.0.1:7000", "redis://:pw@10.0.0.2:7001"]
        );
        assert_eq!(with(&[]).unwrap().redis_cluster_seeds(), None);

        let err = with(&[("REDIS_URL", "redis+cluster://h1:7000,h2:7001")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid setting STREAM_KEY="), "{err}");
        assert!(err.contains("{messages}"), "{err}");
        for bad in [
            "redis+cluster://",
            "redis+cluster://h1:7000/0",
            "redis+cluster://:hunter2@h1",
        ] {
            let err = with(&[("REDIS_URL", bad), ("STREAM_KEY", "{m}")])
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("invalid setting REDIS_URL="), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn a_settings_file_sets_the_same_keys() {
        let path = std::env::temp_dir().join(format!("relay-settings-{}.toml", std::process::id()));
        std::fs::write(&path, "STREAM_KEY = \"from-file\"\nmax_backlog = 7\n").unwrap();
        let s = with(&[
            ("RELAY_CONFIG", path.to_str().unwrap()),
            ("MAX_BACKLOG", "9"),
        ])
        .unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(s.stream_key, "from-file");
        assert_eq!(s.max_backlog, 9, "the environment wins over the file");
    }
}
