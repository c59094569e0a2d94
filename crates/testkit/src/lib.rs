//! Relay's one test harness, shared by every crate's `tests/`, the fault tests and the benchmark:
//! settings that give a test its own database and stream key and the clean-up that removes them
//! ([`test_settings`], [`Cleanup`]); the three services in-process ([`app`]) or as processes ([`procs`]);
//! the stores as a test sees them ([`db`], [`stream`]); a WebSocket client ([`ws`]); a raw HTTP/1.1 client
//! for attacks ([`raw`]). Tests run against the
//! real Redis and Postgres named by `REDIS_URL` and `DATABASE_URL` (default: the local ones).
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod app;
pub mod db;
pub mod metrics;
pub mod procs;
pub mod raw;
pub mod stream;
pub mod ws;

use std::future::Future;
use std::time::{Duration, Instant};

use diesel::{Connection, PgConnection, RunQueryDsl};
use service::Settings;
use uuid::Uuid;

pub use app::{spawn_gateway, spawn_ingest, spawn_persister, spawn_relay, Relay, Running};
pub use db::{count_rows, wait_for_rows};
pub use stream::{dead_letters, entry, pending, stream_len, trim, xadd, xadd_fields};
pub use ws::{Seen, Ws};

/// Settings for one test: database `relay_test_<uuid>`, stream `test:<uuid>`, OS-chosen ports, and a
/// short persister block so tests stop quickly.
pub fn test_settings() -> Settings {
    let mut s = Settings::defaults();
    let tag = Uuid::now_v7().simple().to_string();
    if let Ok(url) = std::env::var("DATABASE_URL") {
        s.database_url = url;
    }
    if let Ok(url) = std::env::var("REDIS_URL") {
        s.redis_url = url;
    }
    s.database_url = plain_text_postgres(&store::url::with_database(
        &s.database_url,
        &format!("relay_test_{tag}"),
    ));
    s.stream_key = format!("test:{tag}");
    s.consumer_name = format!("test-{tag}");
    let any_port = "127.0.0.1:0".parse().expect("a valid address");
    s.ingest_addr = any_port;
    s.persister_addr = any_port;
    s.gateway_addr = any_port;
    s.persister_block_ms = 100;
    s
}

/// `url` with `sslmode=disable&gssencmode=disable` added when it is a URL that names neither: tests and the
/// bench reach Postgres as compose does, in plain text. A Debian Postgres offers TLS on loopback, which
/// libpq takes by default; then a pool thread still connecting when a test process exits runs inside
/// libcrypto while its exit handlers tear it down. One CI run ended a passing test that had started an
/// in-process persister with SIGSEGV at exit, the likeliest such case. The bench measured TLS on
/// loopback at 7% of a full read's CPU as well. A key=value DSN is left as it is.
pub fn plain_text_postgres(url: &str) -> String {
    let url_form = ["postgres://", "postgresql://"]
        .iter()
        .any(|scheme| url.starts_with(scheme));
    if !url_form || url.contains("sslmode=") || url.contains("gssencmode=") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}sslmode=disable&gssencmode=disable")
}

/// A test's settings and the guard that removes its database and stream when the test ends.
pub fn setup() -> (Settings, Cleanup) {
    let settings = test_settings();
    (settings.clone(), Cleanup(settings))
}

/// A synchronous Redis connection for test set-up and checks.
pub fn redis(settings: &Settings) -> redis::Connection {
    redis::Client::open(settings.redis_url.as_str())
        .and_then(|c| c.get_connection())
        .expect("connect to Redis")
}

/// Calls `fetch` every 50 ms until `done` holds for its value or `limit` passes; returns the last value,
/// so the caller's assertion shows what was there at the deadline.
pub async fn poll_until<T, Fut>(
    limit: Duration,
    mut fetch: impl FnMut() -> Fut,
    done: impl Fn(&T) -> bool,
) -> T
where
    Fut: Future<Output = T>,
{
    let deadline = Instant::now() + limit;
    loop {
        let value = fetch().await;
        if done(&value) || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `stream_id` of each value: accepted answers, messages, frames' data.
pub fn stream_ids(values: &[serde_json::Value]) -> Vec<String> {
    values
        .iter()
        .map(|v| v["stream_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Drops the test's database and its stream keys. Runs on a plain thread, since it may be called from
/// `Drop` inside an async runtime.
pub fn cleanup(settings: &Settings) {
    let Some(db) = store::url::database_name(&settings.database_url) else {
        return;
    };
    let admin = store::url::with_database(&settings.database_url, "postgres");
    let redis_url = settings.redis_url.clone();
    let key = settings.stream_key.clone();
    let _ = std::thread::spawn(move || {
        if let Ok(mut conn) = PgConnection::establish(&admin) {
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                .execute(&mut conn);
        }
        if let Ok(mut conn) =
            redis::Client::open(redis_url.as_str()).and_then(|c| c.get_connection())
        {
            let _: redis::RedisResult<()> = redis::cmd("DEL")
                .arg(&key)
                .arg(model::dead_letter_key(&key))
                .query(&mut conn);
        }
    })
    .join();
}

/// Removes the test's database and keys when dropped, also when the test panics.
pub struct Cleanup(pub Settings);

impl Drop for Cleanup {
    fn drop(&mut self) {
        cleanup(&self.0);
    }
}

/// A secret for `TOKEN_SECRET` in tests (32 bytes).
pub const TOKEN_SECRET: &str = "test-secret-of-thirty-two-bytes!";

/// A token signed with HS256 and [`TOKEN_SECRET`], with `claims` (an `exp` of `exp_in_secs` from now
/// is added), as an application's back end mints one.
pub fn token(exp_in_secs: i64, mut claims: serde_json::Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    claims["exp"] = serde_json::json!(now + exp_in_secs);
    let key = jsonwebtoken::EncodingKey::from_secret(TOKEN_SECRET.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}
