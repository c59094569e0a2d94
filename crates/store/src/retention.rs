//! `HISTORY_RETENTION`: deleting messages older than the retention, a bounded batch per transaction so
//! that no pass holds a long lock, with the `channels` table kept right in the same transaction.

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Timestamptz};

/// Deletes up to `batch` of the oldest messages received more than `age` ago, and takes them off their
/// channels' counts (a channel left with none leaves the list). Returns how many were deleted.
///
/// The oldest are found in stream order through the primary key (`stream_ms` is the Redis time the
/// message was added, within a clock's skew of `received_at`, which decides), so a pass reads only
/// what it deletes. Channel rows are updated in name order, as the persister's batches upsert them, so
/// the two never deadlock.
pub fn delete_older_than(
    conn: &mut PgConnection,
    age: std::time::Duration,
    batch: i64,
) -> QueryResult<usize> {
    let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
    let cutoff = chrono::Utc::now()
        .checked_sub_signed(age)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    #[derive(QueryableByName)]
    struct Deleted {
        #[diesel(sql_type = Text)]
        channel: String,
        #[diesel(sql_type = BigInt)]
        stream_ms: i64,
        #[diesel(sql_type = BigInt)]
        stream_seq: i64,
    }
    conn.transaction(|conn| {
        let deleted: Vec<Deleted> = diesel::sql_query(
            "DELETE FROM messages WHERE (stream_ms, stream_seq) IN ( \
               SELECT stream_ms, stream_seq FROM messages \
               WHERE stream_ms < $1 AND received_at < $2 \
               ORDER BY stream_ms, stream_seq LIMIT $3) \
             RETURNING channel, stream_ms, stream_seq",
        )
        // A minute of slack on the stream's clock: `received_at` is what decides.
        .bind::<BigInt, _>(cutoff.timestamp_millis() + 60_000)
        .bind::<Timestamptz, _>(cutoff)
        .bind::<BigInt, _>(batch)
        .load(conn)?;
        let mut per_channel = std::collections::BTreeMap::<&str, i64>::new();
        for d in &deleted {
            *per_channel.entry(d.channel.as_str()).or_default() += 1;
        }
        for (channel, n) in per_channel {
            diesel::sql_query("UPDATE channels SET messages = messages - $2 WHERE channel = $1")
                .bind::<Text, _>(channel)
                .bind::<BigInt, _>(n)
                .execute(conn)?;
        }
        if let Some(newest) = deleted.iter().map(|d| (d.stream_ms, d.stream_seq)).max() {
            diesel::sql_query("DELETE FROM channels WHERE messages <= 0").execute(conn)?;
            // The horizon only moves forward.
            diesel::sql_query(
                "INSERT INTO history_horizon (one, stream_ms, stream_seq) VALUES (TRUE, $1, $2) \
                 ON CONFLICT (one) DO UPDATE SET stream_ms = EXCLUDED.stream_ms, stream_seq = EXCLUDED.stream_seq \
                 WHERE (EXCLUDED.stream_ms, EXCLUDED.stream_seq) > (history_horizon.stream_ms, history_horizon.stream_seq)",
            )
            .bind::<BigInt, _>(newest.0)
            .bind::<BigInt, _>(newest.1)
            .execute(conn)?;
        }
        Ok(deleted.len())
    })
}

/// The newest stream position `HISTORY_RETENTION` has deleted, if it has deleted anything: messages at
/// or before it may be gone.
pub fn horizon(conn: &mut PgConnection) -> QueryResult<Option<model::StreamId>> {
    #[derive(QueryableByName)]
    struct Horizon {
        #[diesel(sql_type = BigInt)]
        stream_ms: i64,
        #[diesel(sql_type = BigInt)]
        stream_seq: i64,
    }
    let row: Option<Horizon> =
        diesel::sql_query("SELECT stream_ms, stream_seq FROM history_horizon")
            .get_result(conn)
            .optional()?;
    Ok(row.map(|h| model::StreamId::from_i64_pair(h.stream_ms, h.stream_seq)))
}
