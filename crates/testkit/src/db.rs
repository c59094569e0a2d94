//! Postgres as a test sees it: connections, row counts, and waiting for rows to arrive.

use std::time::Duration;

use anyhow::Context;
use diesel::{Connection, PgConnection, RunQueryDsl};
use service::Settings;

/// A connection to `url`; the error names the database (without its password).
pub fn pg(url: &str) -> anyhow::Result<PgConnection> {
    PgConnection::establish(url).with_context(|| {
        format!(
            "connecting to {}",
            service::settings::mask_url_password(url)
        )
    })
}

/// Rows in `table`.
pub fn count(conn: &mut PgConnection, table: &str) -> anyhow::Result<i64> {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    Ok(
        diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
            .get_result::<Count>(conn)?
            .n,
    )
}

/// Rows in the `messages` table of `database_url`, or why they could not be counted.
pub fn try_count_rows(database_url: &str) -> anyhow::Result<i64> {
    count(&mut pg(database_url)?, "messages")
}

/// Rows in the `messages` table of `database_url`.
pub fn count_rows(database_url: &str) -> i64 {
    try_count_rows(database_url).expect("count the test's rows")
}

/// Polls the row count until it reaches `n` or 20 s pass; returns the last count.
pub async fn wait_for_rows(settings: &Settings, n: i64) -> i64 {
    let url = &settings.database_url;
    crate::poll_until(
        Duration::from_secs(20),
        || {
            let url = url.clone();
            async move {
                tokio::task::spawn_blocking(move || count_rows(&url))
                    .await
                    .unwrap()
            }
        },
        |count| *count >= n,
    )
    .await
}

/// Creates and migrates the test's database, off the async runtime.
pub async fn prepare_database(settings: &Settings) {
    let url = settings.database_url.clone();
    tokio::task::spawn_blocking(move || store::prepare_database(&url))
        .await
        .unwrap()
        .unwrap();
}

/// Runs `f` on a connection to the test's database, on the blocking pool (Diesel blocks).
pub async fn with_connection<T: Send + 'static>(
    settings: &Settings,
    f: impl FnOnce(&mut PgConnection) -> T + Send + 'static,
) -> T {
    let url = settings.database_url.clone();
    tokio::task::spawn_blocking(move || f(&mut pg(&url).unwrap()))
        .await
        .unwrap()
}

/// Runs one SQL statement on the test's database (a sabotage, a migration step, rows written by hand).
pub async fn execute(settings: &Settings, sql: impl Into<String>) {
    let sql = sql.into();
    with_connection(settings, move |conn| {
        diesel::RunQueryDsl::execute(diesel::sql_query(sql), conn).unwrap();
    })
    .await;
}

/// Installs, in a test's own database (never the migrations), a log of every row Postgres *commits*
/// into `messages`: an `AFTER INSERT` row trigger writes the id into `insert_log` in the inserting
/// transaction. So the log counts deliveries to Postgres, independently of the table's constraints:
/// - the fast path's binary `COPY` fires the trigger per row; a `COPY` that fails on a unique violation
///   is rolled back to its savepoint, and its log rows with it;
/// - the slow path's `INSERT … ON CONFLICT (id) DO NOTHING` fires `AFTER INSERT` only for rows it
///   inserted, not for the ones it skipped;
/// - a transaction that never commits (a persister killed mid-batch) leaves nothing.
///
/// An id logged twice is a message stored twice — whether or not a unique index stopped a second *row*
/// (drop the index, or rewrite a stored row by delete and insert, and this still sees it).
pub fn log_inserts(conn: &mut PgConnection) -> anyhow::Result<()> {
    diesel::connection::SimpleConnection::batch_execute(
        conn,
        "CREATE TABLE insert_log (id uuid NOT NULL); \
         CREATE FUNCTION log_insert() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN INSERT INTO insert_log VALUES (NEW.id); RETURN NEW; END $$; \
         CREATE TRIGGER log_insert AFTER INSERT ON messages \
         FOR EACH ROW EXECUTE FUNCTION log_insert();",
    )
    .context("installing the insert log")
}

/// Creates and migrates `database_url` (as the persister would at start) and installs [`log_inserts`]
/// on it; the persister started afterwards finds the schema in place.
pub fn prepare_with_insert_log(database_url: &str) -> anyhow::Result<()> {
    store::prepare_database(database_url)?;
    log_inserts(&mut pg(database_url)?)
}

/// How many committed inserts [`log_inserts`] saw for each id.
pub fn inserts_per_id(
    conn: &mut PgConnection,
) -> anyhow::Result<std::collections::HashMap<String, i64>> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    Ok(
        diesel::sql_query("SELECT id::text AS id, count(*) AS n FROM insert_log GROUP BY id")
            .load::<Row>(conn)
            .context("reading the insert log")?
            .into_iter()
            .map(|r| (r.id, r.n))
            .collect(),
    )
}
