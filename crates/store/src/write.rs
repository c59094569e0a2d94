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
            Ok(n) => {
                count_in_channels(conn, rows)?;
                Ok(Written {
                    new: n,
                    conflicts: Vec::new(),
                })
            }
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
    #[derive(QueryableByName)]
    struct Inserted {
        #[diesel(sql_type = diesel::sql_types::Text)]
        channel: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        stream_ms: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        stream_seq: i64,
        #[diesel(sql_type = diesel::sql_types::Timestamptz)]
        received_at: chrono::DateTime<chrono::Utc>,
    }
    impl Counted for Inserted {
        fn counted(&self) -> StoredRow<'_> {
            (
                self.channel.as_str(),
                (self.stream_ms, self.stream_seq),
                self.received_at,
            )
        }
    }
    let inserted: Vec<Inserted> = diesel::sql_query(
        "INSERT INTO messages (stream_ms, stream_seq, id, received_at, payload, channel) \
         SELECT stream_ms, stream_seq, id, received_at, payload, channel FROM messages_staging \
         ORDER BY stream_ms, stream_seq ON CONFLICT (id) DO NOTHING \
         RETURNING channel, stream_ms, stream_seq, received_at",
    )
    // The staging rows go with the commit (ON COMMIT DELETE ROWS): one batch per transaction.
    .load(conn)?;
    // Only the rows that were new count: a redelivered message is in its channel's count already.
    count_in_channels(conn, &inserted)?;
    Ok(Written {
        new: inserted.len(),
        conflicts,
    })
}

type Timestamp = chrono::DateTime<chrono::Utc>;
/// A stored row as the channels table counts it: channel, stream position, received_at.
type StoredRow<'a> = (&'a str, (i64, i64), Timestamp);

/// A row the channels table counts: a batch's row, or one that `INSERT … RETURNING` says was new.
trait Counted {
    fn counted(&self) -> StoredRow<'_>;
}

impl Counted for NewMessage {
    fn counted(&self) -> StoredRow<'_> {
        (
            self.channel.as_str(),
            (self.stream_ms, self.stream_seq),
            self.received_at,
        )
    }
}

/// Adds newly stored rows (channel, stream position, received_at) to the `channels` table, in the
/// batch's transaction: each channel's count grows by its new rows, and its last message becomes the
/// newest of them if that is newer than the one it has (a claimed batch can commit after a later one).
/// Channels are written in name order, so two replicas' batches lock them in the same order and never
/// deadlock on each other.
fn count_in_channels(conn: &mut PgConnection, rows: &[impl Counted]) -> QueryResult<()> {
    use std::collections::BTreeMap;
    // Per channel: new rows, and the position and received_at of the newest.
    let mut per_channel: BTreeMap<&str, (i64, (i64, i64), Timestamp)> = BTreeMap::new();
    for (channel, position, received_at) in rows.iter().map(Counted::counted) {
        let entry = per_channel
            .entry(channel)
            .or_insert((0, position, received_at));
        entry.0 += 1;
        if position >= entry.1 {
            (entry.1, entry.2) = (position, received_at);
        }
    }
    if per_channel.is_empty() {
        return Ok(());
    }
    use diesel::sql_types::{Array, BigInt, Text, Timestamptz};
    let names: Vec<&str> = per_channel.keys().copied().collect();
    let counts: Vec<i64> = per_channel.values().map(|v| v.0).collect();
    let ms: Vec<i64> = per_channel.values().map(|v| v.1 .0).collect();
    let seq: Vec<i64> = per_channel.values().map(|v| v.1 .1).collect();
    let at: Vec<chrono::DateTime<chrono::Utc>> = per_channel.values().map(|v| v.2).collect();
    diesel::sql_query(
        "INSERT INTO channels (channel, messages, last_stream_ms, last_stream_seq, last_received_at) \
         SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::timestamptz[]) \
         ON CONFLICT (channel) DO UPDATE SET \
           messages = channels.messages + EXCLUDED.messages, \
           last_stream_ms = CASE WHEN (EXCLUDED.last_stream_ms, EXCLUDED.last_stream_seq) \
               > (channels.last_stream_ms, channels.last_stream_seq) \
             THEN EXCLUDED.last_stream_ms ELSE channels.last_stream_ms END, \
           last_stream_seq = CASE WHEN (EXCLUDED.last_stream_ms, EXCLUDED.last_stream_seq) \
               > (channels.last_stream_ms, channels.last_stream_seq) \
             THEN EXCLUDED.last_stream_seq ELSE channels.last_stream_seq END, \
           last_received_at = CASE WHEN (EXCLUDED.last_stream_ms, EXCLUDED.last_stream_seq) \
               > (channels.last_stream_ms, channels.last_stream_seq) \
             THEN EXCLUDED.last_received_at ELSE channels.last_received_at END",
    )
    .bind::<Array<Text>, _>(names)
    .bind::<Array<BigInt>, _>(counts)
    .bind::<Array<BigInt>, _>(ms)
    .bind::<Array<BigInt>, _>(seq)
    .bind::<Array<Timestamptz>, _>(at)
    .execute(conn)?;
    Ok(())
}
