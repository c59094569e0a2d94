//! Storing a batch of messages, idempotently on the message id and the stream position.
//!
//! The fast path copies the batch straight into `messages` with binary `COPY`. `COPY` has no
//! `ON CONFLICT`, so when any row is already there (a redelivered entry: the persister died between commit
//! and `XACK`, or another replica claimed it) the copy fails with a unique violation; the savepoint rolls
//! it back and the batch goes the slow way: `COPY` into a temporary staging table, then
//! `INSERT … SELECT … ON CONFLICT DO NOTHING`. Redelivery is rare, so the common case costs one `COPY`.

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::rows::{NewMessage, StagedMessage};
use crate::schema::{messages, messages_staging};

/// Writes `rows` in one transaction and returns how many were new. When this returns `Ok`, every row is
/// committed (new or already present); only then may the entries be acknowledged.
pub fn store_batch(conn: &mut PgConnection, rows: &[NewMessage]) -> QueryResult<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    conn.transaction(|conn| {
        // A nested `transaction` is a savepoint: a failed COPY leaves the outer transaction usable.
        let fast = conn.transaction(|conn| {
            diesel::copy_from(messages::table)
                .from_insertable(rows)
                .execute(conn)
        });
        match fast {
            Ok(n) => Ok(n),
            Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {
                store_deduplicated(conn, rows)
            }
            Err(e) => Err(e),
        }
    })
}

fn store_deduplicated(conn: &mut PgConnection, rows: &[NewMessage]) -> QueryResult<usize> {
    diesel::sql_query(
        "CREATE TEMP TABLE IF NOT EXISTS messages_staging \
         (LIKE messages INCLUDING DEFAULTS EXCLUDING CONSTRAINTS) ON COMMIT DELETE ROWS",
    )
    .execute(conn)?;
    let staged: Vec<StagedMessage<'_>> = rows.iter().map(NewMessage::staged).collect();
    diesel::copy_from(messages_staging::table)
        .from_insertable(&staged)
        .execute(conn)?;
    diesel::sql_query(
        "INSERT INTO messages (stream_ms, stream_seq, id, received_at, payload) \
         SELECT stream_ms, stream_seq, id, received_at, payload FROM messages_staging \
         ORDER BY stream_ms, stream_seq ON CONFLICT DO NOTHING",
    )
    // The staging rows go with the commit (ON COMMIT DELETE ROWS): one batch per transaction.
    .execute(conn)
}
