//! Test helpers for every service crate: settings that give a test its own database and stream key, and
//! the clean-up that removes them. Tests run against the real Redis and Postgres named by `REDIS_URL` and
//! `DATABASE_URL` (default: the local ones).

pub mod procs;

use diesel::{Connection, PgConnection, RunQueryDsl};
use service::Settings;
use uuid::Uuid;

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
    s.database_url = store::url::with_database(&s.database_url, &format!("relay_test_{tag}"));
    s.stream_key = format!("test:{tag}");
    s.consumer_name = format!("test-{tag}");
    let any_port = "127.0.0.1:0".parse().expect("a valid address");
    s.ingest_addr = any_port;
    s.persister_addr = any_port;
    s.gateway_addr = any_port;
    s.persister_block_ms = 100;
    s
}

/// Rows in the `messages` table of `database_url`.
pub fn count_rows(database_url: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = PgConnection::establish(database_url).expect("connect to the test database");
    diesel::sql_query("SELECT count(*) AS n FROM messages")
        .get_result::<Count>(&mut conn)
        .expect("count rows")
        .n
}

/// A synchronous Redis connection for test set-up and checks.
pub fn redis(settings: &Settings) -> redis::Connection {
    redis::Client::open(settings.redis_url.as_str())
        .and_then(|c| c.get_connection())
        .expect("connect to Redis")
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
