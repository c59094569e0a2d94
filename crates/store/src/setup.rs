//! Getting a database ready: create it when missing, run the embedded migrations, build a pool.

use std::time::Duration;

use anyhow::Context;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use model::settings::{database_name, replace_database};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

pub type PgPool = Pool<ConnectionManager<PgConnection>>;

/// An arbitrary, fixed key for `pg_advisory_lock`: replicas that start together migrate one at a time.
const MIGRATION_LOCK: i64 = 0x52_454c_4159; // "RELAY"

/// Creates the database named in `url` when it does not exist, then runs pending migrations.
/// Safe to call from several processes at once.
pub fn prepare_database(url: &str) -> anyhow::Result<()> {
    let url = &with_timeouts(url, 5);
    let mut conn = match PgConnection::establish(url) {
        Ok(conn) => conn,
        Err(ConnectionError::BadConnection(msg)) if msg.contains("does not exist") => {
            create_database(url)?;
            PgConnection::establish(url).context("connecting to the database just created")?
        }
        Err(e) => return Err(e).context("connecting to Postgres (DATABASE_URL)"),
    };
    diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})")).execute(&mut conn)?;
    let ran = conn.run_pending_migrations(MIGRATIONS).map(|v| v.len());
    diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})")).execute(&mut conn)?;
    let ran = ran.map_err(|e| anyhow::anyhow!("running migrations: {e}"))?;
    if ran > 0 {
        log::info!("applied {ran} migration(s)");
    }
    Ok(())
}

fn create_database(url: &str) -> anyhow::Result<()> {
    let name = database_name(url).context("DATABASE_URL names no database")?;
    let mut admin = PgConnection::establish(&replace_database(url, "postgres"))
        .context("connecting to the `postgres` database to create the missing one")?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match diesel::sql_query(format!("CREATE DATABASE {quoted}")).execute(&mut admin) {
        Ok(_) => {
            log::info!("created database {name}");
            Ok(())
        }
        // Another replica created it first.
        Err(DieselError::DatabaseError(DatabaseErrorKind::Unknown, info))
            if info.message().contains("already exists") =>
        {
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("creating database {name}")),
    }
}

/// A pool that does not connect until asked: a service starts (and stays up) while Postgres is down, and a
/// request that needs it fails after `timeout` instead of hanging.
pub fn connect_pool(url: &str, size: u32, timeout: Duration) -> PgPool {
    Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        .connection_timeout(timeout)
        .test_on_check_out(true)
        .build_unchecked(ConnectionManager::new(with_timeouts(
            url,
            timeout.as_secs(),
        )))
}

/// `url` with libpq's `connect_timeout` (seconds) and TCP keepalives added unless it sets them: a
/// Postgres host that stops answering then fails a connection attempt in bounded time, and a dead
/// connection is noticed, instead of a request or the persister waiting on it indefinitely.
pub fn with_timeouts(url: &str, connect_timeout_secs: u64) -> String {
    let mut out = url.to_owned();
    let mut add = |key: &str, value: String| {
        if !url.contains(&format!("{key}=")) {
            out.push(if out.contains('?') { '&' } else { '?' });
            out.push_str(&format!("{key}={value}"));
        }
    };
    add("connect_timeout", connect_timeout_secs.max(2).to_string());
    add("keepalives_idle", "10".into());
    add("keepalives_interval", "5".into());
    add("keepalives_count", "3".into());
    out
}

#[cfg(test)]
mod tests {
    use super::with_timeouts;

    #[test]
    fn timeouts_are_added_once_and_never_override_the_url() {
        assert_eq!(
            with_timeouts("postgres://h/db", 5),
            "postgres://h/db?connect_timeout=5&keepalives_idle=10&keepalives_interval=5&keepalives_count=3"
        );
        let own = with_timeouts("postgres://h/db?connect_timeout=9&sslmode=disable", 5);
        assert!(
            own.starts_with("postgres://h/db?connect_timeout=9&sslmode=disable&keepalives_idle=10")
        );
        assert_eq!(own.matches("connect_timeout").count(), 1);
    }
}
