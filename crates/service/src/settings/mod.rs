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
mod sources;
#[cfg(test)]
mod tests;
pub mod tokens;
mod values;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;

use config::Config;
use serde::{Deserialize, Serialize};

pub use access::{Access, ApiKeys, Caller, Channels, Scope};
use defs::{UsedBy, DEFS};
pub use origins::{AllowedHosts, AllowedOrigins};
pub use proxies::TrustedProxies;
pub use retention::HistoryRetention;
pub use sources::SettingsError;
use sources::{file_table, invalid};
pub use tokens::TokenSecret;
pub use values::{cluster_seeds, mask, mask_url_password, CLUSTER_SCHEME};

/// The variable that names an optional settings file (TOML).
pub const CONFIG_FILE_VAR: &str = "RELAY_CONFIG";

/// Every Relay setting, each field documented under its environment variable's name (from
/// [`defs::DEFS`], which `--help` and the README's table print).
#[derive(Clone, Deserialize, Serialize)]
pub struct Settings {
    /// `REDIS_URL` (default `redis://127.0.0.1:6379`): The Redis server holding the stream;
    /// redis+cluster://host:port,host:port,… names a Redis Cluster by some of its nodes (STREAM_KEY
    /// then needs a hash tag, e.g. {messages}).
    #[serde(deserialize_with = "values::redis_url")]
    pub redis_url: String,
    /// `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/relay`): The Postgres database
    /// of persisted messages (created by the persister when missing; push-gateway reads it to
    /// replay what the stream no longer holds).
    #[serde(deserialize_with = "values::postgres_url")]
    pub database_url: String,
    /// `STREAM_KEY` (default `messages`): The Redis Stream of accepted messages.
    #[serde(deserialize_with = "values::non_empty")]
    pub stream_key: String,
    /// `INGEST_ADDR` (default `127.0.0.1:8080`): Where ingest-api listens.
    #[serde(deserialize_with = "values::parsed")]
    pub ingest_addr: SocketAddr,
    /// `GATEWAY_ADDR` (default `127.0.0.1:8081`): Where push-gateway listens.
    #[serde(deserialize_with = "values::parsed")]
    pub gateway_addr: SocketAddr,
    /// `PERSISTER_ADDR` (default `127.0.0.1:8082`): Where the persister serves health and metrics.
    #[serde(deserialize_with = "values::parsed")]
    pub persister_addr: SocketAddr,
    /// `INGEST_PUBLIC_URL`: The ingest API as a browser reaches it, where the live page's form
    /// posts (empty: http:// + INGEST_ADDR).
    ///
    /// Never empty after loading: defaults to `http://` + `INGEST_ADDR`.
    pub ingest_public_url: String,
    /// `ALLOWED_ORIGINS`: Comma-separated browser origins allowed to call ingest-api (CORS) and
    /// open /ws; * is any; empty: loopback origins only (http://localhost:*, http://127.0.0.1:*,
    /// http://[::1]:*).
    #[serde(deserialize_with = "values::parsed", serialize_with = "values::debug")]
    pub allowed_origins: AllowedOrigins,
    /// `ALLOWED_HOSTS`: Comma-separated host names a request's Host may name while Relay is open
    /// (no API_KEYS or TOKEN_SECRET), besides localhost and loopback addresses; others get 421
    /// (health and metrics excepted), against DNS rebinding.
    #[serde(deserialize_with = "values::parsed", serialize_with = "values::debug")]
    pub allowed_hosts: AllowedHosts,
    /// `API_KEYS`: key:scope+scope[:pattern|pattern],… (scopes publish, read, subscribe; without
    /// patterns a key covers every channel; keys contain no `:` or `.`), or @path to read that list
    /// from a file; empty: no authentication (local use only: each service warns at start).
    #[serde(deserialize_with = "values::parsed", serialize_with = "values::debug")]
    pub api_keys: ApiKeys,
    /// `TOKEN_SECRET`: The HS256 secret of signed tokens (JWT with exp, scope, channels, sub), at
    /// least 32 bytes, or @path to read it from a file; empty: tokens are not accepted.
    #[serde(deserialize_with = "values::parsed", serialize_with = "values::debug")]
    pub token_secret: TokenSecret,
    /// `CONSUMER_NAME`: This replica's name in the consumer group, stable across its restarts
    /// (empty: the host name).
    ///
    /// Never empty after loading: defaults to the host name.
    pub consumer_name: String,
    /// `CLAIM_IDLE_MS` (default `15000`): An entry pending this long on another consumer is
    /// claimed.
    #[serde(deserialize_with = "values::positive")]
    pub claim_idle_ms: u64,
    /// `MAX_DELIVERIES` (default `5`): Tries after which an entry that cannot be stored goes to
    /// <STREAM_KEY>:dead.
    #[serde(deserialize_with = "values::positive")]
    pub max_deliveries: u64,
    /// `STREAM_RETENTION` (default `100000`): Stored entries kept in the stream for replay (fewer
    /// when they would take more than half of MAX_STREAM_BYTES).
    #[serde(deserialize_with = "values::parsed")]
    pub stream_retention: u64,
    /// `HISTORY_RETENTION` (default `0`): Messages older than this (90s, 30m, 12h, 30d) are deleted
    /// from Postgres, in batches, at least every 10 s; 0: keep every message.
    #[serde(deserialize_with = "values::parsed", serialize_with = "values::debug")]
    pub history_retention: HistoryRetention,
    /// `PERSISTER_BATCH_SIZE` (default `2000`): Entries read, and written in one transaction, at a
    /// time.
    #[serde(deserialize_with = "values::positive")]
    pub persister_batch_size: usize,
    /// `PERSISTER_READ_BYTES` (default `33554432`): Bytes of entries one read (or claim) from the
    /// stream brings back at most, whatever PERSISTER_BATCH_SIZE says (an entry larger than this
    /// comes alone).
    #[serde(deserialize_with = "values::positive")]
    pub persister_read_bytes: usize,
    /// `PERSISTER_BLOCK_MS` (default `1000`): How long one XREADGROUP waits for new entries.
    #[serde(deserialize_with = "values::positive")]
    pub persister_block_ms: u64,
    /// `WS_SEND_QUEUE` (default `1024`): Frames queued for one WebSocket client; a client whose
    /// queue fills catches up from the gateway's recent frames (16 × this) or the stream.
    #[serde(deserialize_with = "values::positive")]
    pub ws_send_queue: usize,
    /// `WS_SEND_QUEUE_BYTES` (default `8388608`): Bytes of frames queued for one WebSocket client
    /// (one frame larger than this still goes to an idle client); the recent frames kept for
    /// catching up are bounded by 4 × this.
    #[serde(deserialize_with = "values::positive")]
    pub ws_send_queue_bytes: usize,
    /// `WS_CATCH_UP_MS` (default `5000`): How long a WebSocket client whose queue filled may take
    /// to catch up before it is closed with 1013 (at most half of CLIENT_TIMEOUT_MS).
    #[serde(deserialize_with = "values::positive")]
    pub ws_catch_up_ms: u64,
    /// `MAX_CONNECTIONS` (default `10000`): WebSocket clients one gateway serves at once; more are
    /// refused with 503.
    #[serde(deserialize_with = "values::positive")]
    pub max_connections: usize,
    /// `MAX_SUBSCRIPTIONS` (default `100`): Channel patterns one WebSocket may subscribe to
    /// (?channels=); more are refused with 429.
    #[serde(deserialize_with = "values::positive")]
    pub max_subscriptions: usize,
    /// `MAX_BODY_BYTES` (default `1048576`): The size limit of one JSON message (and of each NDJSON
    /// line); the persister sizes its reads by it.
    #[serde(deserialize_with = "values::positive")]
    pub max_body_bytes: usize,
    /// `MAX_BATCH_LINES` (default `10000`): The line limit of one NDJSON batch.
    #[serde(deserialize_with = "values::positive")]
    pub max_batch_lines: usize,
    /// `MAX_BATCH_BYTES` (default `16777216`): The size limit of one NDJSON batch.
    #[serde(deserialize_with = "values::positive")]
    pub max_batch_bytes: usize,
    /// `MAX_BACKLOG` (default `1000000`): Persister lag (entries) above which POST /messages
    /// answers 503.
    #[serde(deserialize_with = "values::positive")]
    pub max_backlog: u64,
    /// `MAX_STREAM_BYTES` (default `1073741824`): The stream's memory in Redis (MEMORY USAGE …
    /// SAMPLES 0, exact, read every 250 ms) above which POST /messages answers 503; the persister
    /// keeps fewer than STREAM_RETENTION entries when they would take more than half of it.
    #[serde(deserialize_with = "values::positive")]
    pub max_stream_bytes: u64,
    /// `MAX_IDEMPOTENCY_BYTES` (default `67108864`): Bytes of Idempotency-Key records (each kept 24
    /// h) one credential (or, without API_KEYS, everyone) may hold in Redis; a post with a new
    /// Idempotency-Key over it answers 429.
    #[serde(deserialize_with = "values::positive")]
    pub max_idempotency_bytes: u64,
    /// `PUBLISH_RATE` (default `0`): Messages per second one API key (or, without API_KEYS, one
    /// client address) may publish, with a burst of one second's worth; over it, 429. 0: unlimited.
    ///
    /// 0: unlimited.
    #[serde(deserialize_with = "values::parsed")]
    pub publish_rate: u32,
    /// `CLIENT_TIMEOUT_MS` (default `15000`): A client that makes no progress sending its request
    /// (any request head, first or later on a kept-alive connection, or body) or reading what it is
    /// sent for this long is disconnected; once it has started, a request must also arrive at 64
    /// KiB/s or more after its first CLIENT_TIMEOUT_MS.
    #[serde(deserialize_with = "values::positive")]
    pub client_timeout_ms: u64,
    /// `MAX_INFLIGHT_BYTES` (default `268435456`): Request body bytes one ingest-api process holds
    /// at once; a request that would go over answers 503.
    #[serde(deserialize_with = "values::positive")]
    pub max_inflight_bytes: usize,
    /// `MAX_CONNECTIONS_PER_IP` (default `100`): WebSocket clients from one address (see
    /// TRUSTED_PROXIES); more are refused with 429.
    #[serde(deserialize_with = "values::positive")]
    pub max_connections_per_ip: usize,
    /// `MAX_HTTP_CONNECTIONS` (default `0`): TCP connections (HTTP and WebSocket) one process holds
    /// at once; one more is answered 503 and closed. 0: what the open-files limit allows, less 256
    /// for everything else.
    ///
    /// 0: sized to the open-files limit.
    #[serde(deserialize_with = "values::parsed")]
    pub max_http_connections: usize,
    /// `TRUSTED_PROXIES`: Comma-separated proxy addresses or networks (10.0.0.0/8) whose
    /// X-Forwarded-For is believed (its first address is the client's); empty: none.
    #[serde(deserialize_with = "values::parsed", serialize_with = "values::debug")]
    pub trusted_proxies: TrustedProxies,
    /// `REDIS_TIMEOUT_MS` (default `2000`): The longest a request waits on Redis before answering
    /// 503.
    #[serde(deserialize_with = "values::positive")]
    pub redis_timeout_ms: u64,
    /// `REDIS_ACK_REPLICAS` (default `0`): Replicas that must confirm an entry (Redis WAIT) before
    /// POST /messages answers 202; fewer within REDIS_ACK_TIMEOUT_MS answer 503. 0: answer once the
    /// primary has it.
    #[serde(deserialize_with = "values::parsed")]
    pub redis_ack_replicas: u64,
    /// `REDIS_ACK_TIMEOUT_MS` (default `1000`): How long POST /messages waits for
    /// REDIS_ACK_REPLICAS replicas to confirm an entry.
    #[serde(deserialize_with = "values::positive")]
    pub redis_ack_timeout_ms: u64,
    /// `DATABASE_POOL_SIZE` (default `8`): Postgres connections of one ingest-api process.
    #[serde(deserialize_with = "values::positive")]
    pub database_pool_size: u32,
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
