//! Settings shared by all three services: embedded defaults, then an optional file (`RELAY_CONFIG`), then
//! the environment variables of the contract. Each service reads the keys it uses and ignores the rest, so
//! all three can share one environment.
//!
//! Every value is parsed here, at start: a malformed one is a [`SettingsError`] that names the variable, and
//! the service exits with that one line instead of starting half-configured.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use config::{Config, File, FileFormat};

const DEFAULTS: &str = include_str!("defaults.toml");

/// The variable that names an optional settings file (TOML).
pub const CONFIG_FILE_VAR: &str = "RELAY_CONFIG";

#[derive(Clone)]
pub struct Settings {
    /// `REDIS_URL`: the Redis server holding the stream.
    pub redis_url: String,
    /// `DATABASE_URL`: the Postgres database of persisted messages.
    pub database_url: String,
    /// `STREAM_KEY`: the Redis Stream of accepted messages.
    pub stream_key: String,
    /// `INGEST_ADDR`: where ingest-api listens.
    pub ingest_addr: SocketAddr,
    /// `GATEWAY_ADDR`: where push-gateway listens.
    pub gateway_addr: SocketAddr,
    /// `PERSISTER_ADDR`: where the persister serves health and metrics.
    pub persister_addr: SocketAddr,
    /// `INGEST_PUBLIC_URL`: the ingest API as a browser reaches it (the live page's form posts there).
    pub ingest_public_url: String,
    /// `ALLOWED_ORIGINS`: browser origins allowed to call ingest-api (CORS) and open `/ws`; `*` is any.
    pub allowed_origins: AllowedOrigins,
    /// `API_KEYS`: `key:scope+scope,…`; empty means no authentication.
    pub api_keys: ApiKeys,
    /// `CONSUMER_NAME`: this persister replica's name in the consumer group.
    pub consumer_name: String,
    /// `CLAIM_IDLE_MS`: an entry pending this long on another consumer is claimed.
    pub claim_idle_ms: u64,
    /// `MAX_DELIVERIES`: deliveries after which an entry that cannot be stored is dead-lettered.
    pub max_deliveries: u64,
    /// `STREAM_RETENTION`: entries kept in the stream for replay, below the acknowledged point.
    pub stream_retention: u64,
    /// `PERSISTER_BATCH_SIZE`: entries read (and written in one transaction) at a time.
    pub persister_batch_size: usize,
    /// `PERSISTER_BLOCK_MS`: how long one `XREADGROUP` waits for new entries.
    pub persister_block_ms: u64,
    /// `WS_SEND_QUEUE`: frames waiting for one WebSocket client before it is closed with 1013.
    pub ws_send_queue: usize,
    /// `MAX_CONNECTIONS`: WebSocket clients one push-gateway serves at once; more are refused with 503.
    pub max_connections: usize,
    /// `MAX_BODY_BYTES`: the size limit of one JSON message.
    pub max_body_bytes: usize,
    /// `MAX_BATCH_LINES`: the line limit of one NDJSON batch.
    pub max_batch_lines: usize,
    /// `MAX_BATCH_BYTES`: the size limit of one NDJSON batch.
    pub max_batch_bytes: usize,
    /// `MAX_BACKLOG`: persister lag (entries) above which ingest answers 503.
    pub max_backlog: u64,
    /// `REDIS_TIMEOUT_MS`: the longest a request waits on Redis before answering 503.
    pub redis_timeout_ms: u64,
    /// `DATABASE_POOL_SIZE`: Postgres connections of one ingest-api process.
    pub database_pool_size: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid setting {name}={value:?}: {reason}")]
    Invalid {
        name: &'static str,
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

    /// Only the embedded defaults: the starting point of tests, which then set their own fields.
    pub fn defaults() -> Self {
        // The embedded defaults are parsed by a unit test, so this cannot fail at run time.
        #[allow(clippy::expect_used)]
        Self::from_sources(std::iter::empty()).expect("embedded defaults are valid")
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
        let mut values = table(File::from_str(DEFAULTS, FileFormat::Toml))?;
        if let Some(path) = env.get(&CONFIG_FILE_VAR.to_ascii_lowercase()) {
            values.extend(table(
                File::with_name(path)
                    .format(FileFormat::Toml)
                    .required(true),
            )?);
        }
        // Only the keys Relay knows: the rest of the environment (PATH, HOME, …) is none of its business.
        let known: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| values.contains_key(k))
            .collect();
        values.extend(known);
        let raw = |key: &str| -> String { values.get(key).cloned().unwrap_or_default() };

        let ingest_addr: SocketAddr = parse(&raw, "INGEST_ADDR")?;
        let mut ingest_public_url = raw("ingest_public_url");
        if ingest_public_url.is_empty() {
            ingest_public_url = format!("http://{ingest_addr}");
        }
        let mut consumer_name = raw("consumer_name");
        if consumer_name.is_empty() {
            consumer_name = hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default();
            if consumer_name.is_empty() {
                consumer_name = "persister".into();
            }
        }
        let settings = Self {
            redis_url: url(
                &raw,
                "REDIS_URL",
                &["redis://", "rediss://", "unix://", "redis+unix://"],
            )?,
            database_url: url(&raw, "DATABASE_URL", &["postgres://", "postgresql://"])?,
            stream_key: non_empty(&raw, "STREAM_KEY")?,
            ingest_addr,
            gateway_addr: parse(&raw, "GATEWAY_ADDR")?,
            persister_addr: parse(&raw, "PERSISTER_ADDR")?,
            ingest_public_url: ingest_public_url.trim_end_matches('/').to_owned(),
            allowed_origins: parse(&raw, "ALLOWED_ORIGINS")?,
            api_keys: parse(&raw, "API_KEYS")?,
            consumer_name,
            claim_idle_ms: positive(&raw, "CLAIM_IDLE_MS")?,
            max_deliveries: positive(&raw, "MAX_DELIVERIES")?,
            stream_retention: parse(&raw, "STREAM_RETENTION")?,
            persister_batch_size: positive(&raw, "PERSISTER_BATCH_SIZE")?,
            persister_block_ms: positive(&raw, "PERSISTER_BLOCK_MS")?,
            ws_send_queue: positive(&raw, "WS_SEND_QUEUE")?,
            max_connections: positive(&raw, "MAX_CONNECTIONS")?,
            max_body_bytes: positive(&raw, "MAX_BODY_BYTES")?,
            max_batch_lines: positive(&raw, "MAX_BATCH_LINES")?,
            max_batch_bytes: positive(&raw, "MAX_BATCH_BYTES")?,
            max_backlog: positive(&raw, "MAX_BACKLOG")?,
            redis_timeout_ms: positive(&raw, "REDIS_TIMEOUT_MS")?,
            database_pool_size: positive(&raw, "DATABASE_POOL_SIZE")?,
        };
        Ok(settings)
    }

    /// The database URL with another database name: where tests and the persister's "create the database
    /// when missing" connect.
    pub fn database_url_for(&self, database: &str) -> String {
        replace_database(&self.database_url, database)
    }
}

/// `url` with its path (the database name) replaced, query string kept.
pub fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The database name in a Postgres URL (`relay` in `postgres://host/relay`), if it has one.
pub fn database_name(url: &str) -> Option<&str> {
    let base = url.split('?').next()?;
    let rest = &base[base.find("://")? + 3..];
    let name = &rest[rest.find('/')? + 1..];
    (!name.is_empty()).then_some(name)
}

/// One source's keys (lower-cased) and values (as text; they are parsed by the caller).
fn table<T>(source: T) -> Result<HashMap<String, String>, SettingsError>
where
    T: config::Source + Send + Sync + 'static,
{
    let err = |e: config::ConfigError| SettingsError::Source(e.to_string());
    let map: HashMap<String, config::Value> = Config::builder()
        .add_source(source)
        .build()
        .map_err(err)?
        .try_deserialize()
        .map_err(err)?;
    map.into_iter()
        .map(|(k, v)| Ok((k.to_ascii_lowercase(), v.into_string().map_err(err)?)))
        .collect()
}

fn invalid(name: &'static str, value: &str, reason: impl fmt::Display) -> SettingsError {
    SettingsError::Invalid {
        name,
        value: value.to_owned(),
        reason: reason.to_string(),
    }
}

fn parse<T>(raw: &impl Fn(&str) -> String, name: &'static str) -> Result<T, SettingsError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    let value = raw(&name.to_ascii_lowercase());
    value.trim().parse().map_err(|e| invalid(name, &value, e))
}

fn positive<T>(raw: &impl Fn(&str) -> String, name: &'static str) -> Result<T, SettingsError>
where
    T: FromStr + Default + PartialEq,
    T::Err: fmt::Display,
{
    let v: T = parse(raw, name)?;
    if v == T::default() {
        return Err(invalid(name, "0", "must be greater than zero"));
    }
    Ok(v)
}

fn non_empty(raw: &impl Fn(&str) -> String, name: &'static str) -> Result<String, SettingsError> {
    let value = raw(&name.to_ascii_lowercase());
    if value.trim().is_empty() {
        return Err(invalid(name, &value, "must not be empty"));
    }
    Ok(value.trim().to_owned())
}

fn url(
    raw: &impl Fn(&str) -> String,
    name: &'static str,
    schemes: &[&str],
) -> Result<String, SettingsError> {
    let value = non_empty(raw, name)?;
    if !schemes.iter().any(|s| value.starts_with(s)) {
        return Err(invalid(
            name,
            &value,
            format!("expected a URL starting with {}", schemes.join(" or ")),
        ));
    }
    Ok(value)
}

/// `ALLOWED_ORIGINS`: `*`, or a comma-separated list of origins such as `https://relay.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    Any,
    List(Vec<String>),
}

impl AllowedOrigins {
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            Self::Any => true,
            Self::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }
}

impl FromStr for AllowedOrigins {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let items: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect();
        if items.is_empty() || items.iter().any(|o| o == "*") {
            return Ok(Self::Any);
        }
        for o in &items {
            if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                return Err(format!("`{o}` is not an origin like https://example.com"));
            }
        }
        Ok(Self::List(items))
    }
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Publish,
    Read,
    Subscribe,
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "publish" => Ok(Self::Publish),
            "read" => Ok(Self::Read),
            "subscribe" => Ok(Self::Subscribe),
            other => Err(format!(
                "unknown scope `{other}` (publish, read, subscribe)"
            )),
        }
    }
}

/// `API_KEYS`: `key:scope+scope,…`. Its `Debug` never shows a key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiKeys(HashMap<String, Vec<Scope>>);

/// The outcome of checking a presented key against [`ApiKeys`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Granted,
    /// No key, or a key that is not configured: 401.
    Unauthenticated,
    /// A known key without the scope: 403.
    Forbidden,
}

impl ApiKeys {
    /// No keys configured: every request is allowed.
    pub fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    pub fn check(&self, key: Option<&str>, scope: Scope) -> Access {
        if self.is_open() {
            return Access::Granted;
        }
        match key.and_then(|k| self.0.get(k)) {
            None => Access::Unauthenticated,
            Some(scopes) if scopes.contains(&scope) => Access::Granted,
            Some(_) => Access::Forbidden,
        }
    }
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

impl FromStr for ApiKeys {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut keys = HashMap::new();
        for (i, item) in s
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .enumerate()
        {
            // The error never repeats the key itself: settings errors are logged.
            let (key, scopes) = item
                .rsplit_once(':')
                .ok_or_else(|| format!("entry {} is not key:scope+scope", i + 1))?;
            if key.is_empty() {
                return Err(format!("entry {} has an empty key", i + 1));
            }
            let scopes = scopes
                .split('+')
                .map(str::parse)
                .collect::<Result<Vec<Scope>, _>>()?;
            keys.insert(key.to_owned(), scopes);
        }
        Ok(Self(keys))
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("redis_url", &redact_password(&self.redis_url))
            .field("database_url", &redact_password(&self.database_url))
            .field("stream_key", &self.stream_key)
            .field("ingest_addr", &self.ingest_addr)
            .field("gateway_addr", &self.gateway_addr)
            .field("persister_addr", &self.persister_addr)
            .field("api_keys", &self.api_keys)
            .field("consumer_name", &self.consumer_name)
            .finish_non_exhaustive()
    }
}

/// A URL fit for a log line: `user:secret@` becomes `user:***@`.
pub fn redact_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let Some(at) = url[scheme_end..].find('@').map(|i| scheme_end + i) else {
        return url.to_owned();
    };
    match url[scheme_end..at].find(':') {
        Some(colon) => format!("{}:***{}", &url[..scheme_end + colon], &url[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::from_sources(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn the_embedded_defaults_are_the_contracts() {
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
        ] {
            let err = with(&[(name, value)]).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("invalid setting {name}=")),
                "{err}"
            );
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

    #[test]
    fn api_keys_grant_by_scope_and_never_print_a_key() {
        let keys: ApiKeys = "k1:publish+read, k2:subscribe".parse().unwrap();
        assert_eq!(keys.check(Some("k1"), Scope::Read), Access::Granted);
        assert_eq!(keys.check(Some("k2"), Scope::Publish), Access::Forbidden);
        assert_eq!(
            keys.check(Some("nope"), Scope::Read),
            Access::Unauthenticated
        );
        assert_eq!(keys.check(None, Scope::Read), Access::Unauthenticated);
        assert!(!format!("{keys:?}").contains("k1"));
        assert!(ApiKeys::default().check(None, Scope::Publish) == Access::Granted);
    }

    #[test]
    fn database_urls_can_point_at_another_database() {
        assert_eq!(
            replace_database("postgres://u@h:5432/relay", "t1"),
            "postgres://u@h:5432/t1"
        );
        assert_eq!(
            replace_database("postgres://u@h/relay?sslmode=disable", "t1"),
            "postgres://u@h/t1?sslmode=disable"
        );
        assert_eq!(
            replace_database("postgres://u@h", "t1"),
            "postgres://u@h/t1"
        );
        assert_eq!(database_name("postgres://u@h/relay?x=1"), Some("relay"));
        assert_eq!(
            redact_password("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
    }
}
