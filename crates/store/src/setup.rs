//! Getting a database ready: create it when missing, run the embedded migrations, build a pool.

use std::time::Duration;

use crate::url::{database_name, with_database, with_timeouts};
use anyhow::Context;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

pub type PgPool = Pool<ConnectionManager<PgConnection>>;

/// The longest one read statement may run (a page of at most 1000 rows).
const READ_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a read waits for a lock (only DDL takes one that blocks reads).
const READ_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

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
    let mut admin = PgConnection::establish(&with_database(url, "postgres"))
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
        // Every read is short (full reads go in keyset pages), so each statement is bounded too, and a
        // read queued behind DDL's lock fails as a 503 instead of holding the connection.
        .build_unchecked(ConnectionManager::new(crate::url::with_session_timeouts(
            &with_timeouts(url, timeout.as_secs()),
            READ_STATEMENT_TIMEOUT,
            READ_LOCK_TIMEOUT,
        )))
}
