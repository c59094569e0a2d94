//! Storing a batch of messages, idempotently on the message id and the stream position.
//!
//! The fast path copies the batch straight into `messages` with binary `COPY`. `COPY` has no
//! `ON CONFLICT`, so when any row is already there (a redelivered entry: the persister died between commit
//! and `XACK`, or another replica claimed it) the copy fails with a unique violation; the savepoint rolls
//! it back and the batch goes the slow way: `COPY` into a temporary staging table, then
//! `INSERT … SELECT … ON CONFLICT (id) DO NOTHING`. Redelivery is rare, so the common case costs one
//! `COPY`.
//!
//! A conflict on the id is a redelivery: the same message, stored once. A conflict on the stream
//! position with *another* id is not: a different message reuses a position (Redis lost an `everysec`
//! second or failed over, and reissued the id). That one must not vanish — `ON CONFLICT DO NOTHING` with no
//! target would drop it silently — so the slow path takes such rows out and reports them
//! ([`Written::conflicts`]); the persister dead-letters them with the reason, and the row already stored
//! at that position stays as it is (it was acknowledged first, and clients may have read it).

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::rows::{NewMessage, StagedMessage};
use crate::schema::{messages, messages_staging};

/// What one batch did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Rows that were not there before.
    pub new: usize,
    /// Rows not stored because their stream position holds a different message: (index in the batch,
    /// the id of the message stored there).
    pub conflicts: Vec<(usize, String)>,
}

/// Writes `rows` in one transaction. When this returns `Ok`, every row is committed (new or already
/// present) except the [`Written::conflicts`]; only then may the entries be acknowledged.
pub fn store_batch(conn: &mut PgConnection, rows: &[NewMessage]) -> QueryResult<Written> {
    if rows.is_empty() {
        return Ok(Written::default());
    }
    conn.transaction(|conn| {
        // A nested `transaction` is a savepoint: a failed COPY leaves the outer transaction usable.
        let fast = conn.transaction(|conn| {
            diesel::copy_from(messages::table)
                .from_insertable(rows)
                .execute(conn)
        });
        match fast {
            Ok(n) => Ok(Written {
                new: n,
                conflicts: Vec::new(),
            }),
            Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {
                store_deduplicated(conn, rows)
            }
            Err(e) => Err(e),
        }
    })
}

fn store_deduplicated(conn: &mut PgConnection, rows: &[NewMessage]) -> QueryResult<Written> {
    diesel::sql_query(
        "CREATE TEMP TABLE IF NOT EXISTS messages_staging \
         (LIKE messages INCLUDING DEFAULTS EXCLUDING CONSTRAINTS) ON COMMIT DELETE ROWS",
    )
    .execute(conn)?;
    let staged: Vec<StagedMessage<'_>> = rows.iter().map(NewMessage::staged).collect();
    diesel::copy_from(messages_staging::table)
        .from_insertable(&staged)
        .execute(conn)?;
    // A position that holds another id: a different message reusing it. Out of the insert, reported.
    #[derive(QueryableByName)]
    struct Taken {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        stream_ms: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        stream_seq: i64,
        #[diesel(sql_type = diesel::sql_types::Text)]
        held_by: String,
    }
    let taken: Vec<Taken> = diesel::sql_query(
        "DELETE FROM messages_staging s USING messages m \
         WHERE m.stream_ms = s.stream_ms AND m.stream_seq = s.stream_seq AND m.id <> s.id \
         RETURNING s.stream_ms, s.stream_seq, m.id::text AS held_by",
    )
    .load(conn)?;
    let conflicts = taken
        .into_iter()
        .filter_map(|t| {
            let at = rows
                .iter()
                .position(|r| (r.stream_ms, r.stream_seq) == (t.stream_ms, t.stream_seq))?;
            Some((at, t.held_by))
        })
        .collect();
    // The target is the id: a redelivered message is a no-op. A position conflict left here can only be
    // a concurrent insert of a different message since the DELETE above: it fails the batch (retried,
    // then caught by the DELETE), never a silent drop.
    let new = diesel::sql_query(
        "INSERT INTO messages (stream_ms, stream_seq, id, received_at, payload) \
         SELECT stream_ms, stream_seq, id, received_at, payload FROM messages_staging \
         ORDER BY stream_ms, stream_seq ON CONFLICT (id) DO NOTHING",
    )
    // The staging rows go with the commit (ON COMMIT DELETE ROWS): one batch per transaction.
    .execute(conn)?;
    Ok(Written { new, conflicts })
}
