//! The read side: one message, a page, or every message streamed row by row in constant memory.

use diesel::dsl::{sql, AsSelect, SqlTypeOf};
use diesel::pg::{Pg, PgConnection, PgRowByRowLoadingMode};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool};
use model::StreamId;
use uuid::Uuid;

use crate::rows::MessageRow;
use crate::schema::messages;

pub fn find(conn: &mut PgConnection, id: Uuid) -> QueryResult<Option<MessageRow>> {
    messages::table
        .filter(messages::id.eq(id))
        .select(MessageRow::as_select())
        .first(conn)
        .optional()
}

/// `(stream_ms, stream_seq) <cmp> at` (`cmp` is `>` or `<`), written as a row comparison so that Postgres
/// walks the primary key from `at` on (an `a > x OR (a = x AND b > y)` filter would not be an index
/// range). `> after` starts a page; `< below` stops it at the committed watermark (see `ingest-api`'s
/// `watermark.rs`).
fn position_filter(
    cmp: &'static str,
    at: StreamId,
) -> diesel::expression::SqlLiteral<Bool, impl diesel::query_builder::QueryFragment<diesel::pg::Pg>>
{
    let (ms, seq) = at.as_i64_pair();
    sql::<Bool>(&format!("(stream_ms, stream_seq) {cmp} ("))
        .bind::<BigInt, _>(ms)
        .sql(", ")
        .bind::<BigInt, _>(seq)
        .sql(")")
}

/// Which messages a read walks: those of one channel (or all), after `after` (exclusive) and below
/// `below` (exclusive, the committed watermark), in stream order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window<'a> {
    pub channel: Option<&'a str>,
    pub after: Option<StreamId>,
    pub below: Option<StreamId>,
}

impl Window<'_> {
    /// At most `limit` messages of the window. A channel's read is a range scan of its
    /// `(channel, stream_ms, stream_seq)` index; a read of every channel, of the primary key.
    fn query(
        &self,
        limit: i64,
    ) -> messages::BoxedQuery<'static, Pg, SqlTypeOf<AsSelect<MessageRow, Pg>>> {
        let mut query = messages::table
            .select(MessageRow::as_select())
            .order((messages::stream_ms, messages::stream_seq))
            .limit(limit)
            .into_boxed();
        if let Some(channel) = self.channel {
            query = query.filter(messages::channel.eq(channel.to_owned()));
        }
        if let Some(after) = self.after {
            query = query.filter(position_filter(">", after));
        }
        if let Some(below) = self.below {
            query = query.filter(position_filter("<", below));
        }
        query
    }
}

/// Rows one query of [`page_json`] asks for at most. Stopping a query early still drains its rows from
/// libpq, so a page is read in short queries sized by the rows seen so far, not one query of `limit + 1`.
const PAGE_QUERY_ROWS: i64 = 100;

/// The JSON array of up to `limit` rows after `after`, ended early after the row that takes it past
/// `max_bytes` (always at least one row); the last row's id; and whether more rows remain (one
/// row past the page is read to tell, never kept).
pub fn page_json(
    conn: &mut PgConnection,
    window: &Window<'_>,
    limit: i64,
    max_bytes: usize,
) -> QueryResult<(Vec<u8>, Option<StreamId>, bool)> {
    let mut body = vec![b'['];
    let (mut cursor, mut rows, mut more) = (window.after, 0i64, false);
    let mut ask = (limit + 1).min(PAGE_QUERY_ROWS);
    loop {
        let (mut got, mut full) = (0, false);
        let from_cursor = Window {
            after: cursor,
            ..*window
        };
        for_each(conn, &from_cursor, ask, |row| {
            got += 1;
            if rows == limit || body.len() > max_bytes {
                full = true;
                return false;
            }
            if rows > 0 {
                body.push(b',');
            }
            row.write_json(&mut body);
            cursor = Some(row.stream_id());
            rows += 1;
            true
        })?;
        if full {
            more = true;
            break;
        }
        if got < ask {
            break; // the table has no more
        }
        // As many rows as fit the bytes left at the size seen so far, one more to tell whether a
        // next page exists, and never more than one query's worth.
        let per_row = (body.len() as i64 / rows.max(1)).max(1);
        let fit = (max_bytes as i64 - body.len() as i64).max(0) / per_row + 2;
        ask = (limit + 1 - rows).min(fit).clamp(1, PAGE_QUERY_ROWS);
    }
    body.push(b']');
    Ok((body, cursor, more))
}

/// How many rows the next page of a read asks for: as many as fit `page_bytes` at the size per row of
/// the `read` rows that took `read_bytes`, and one more (a query stopped early still drains its rows from
/// libpq, so asking for far more than a page holds reads them for nothing), within `1..=max_rows`.
pub fn rows_that_fit(read: i64, read_bytes: usize, page_bytes: usize, max_rows: i64) -> i64 {
    let per_row = (read_bytes as i64 / read.max(1)).max(1);
    (page_bytes as i64 / per_row + 1).clamp(1, max_rows)
}

/// Calls `each` for up to `limit` messages of `window`, in stream order, one row in memory at a time
/// (libpq's single-row mode). `each` returns `false` to stop early, e.g. when the HTTP client has gone.
pub fn for_each(
    conn: &mut PgConnection,
    window: &Window<'_>,
    limit: i64,
    mut each: impl FnMut(MessageRow) -> bool,
) -> QueryResult<()> {
    // Stopping early still drains the rest of the result from libpq: the limit bounds that too.
    let rows = window
        .query(limit)
        .load_iter::<MessageRow, PgRowByRowLoadingMode>(conn)?;
    for row in rows {
        if !each(row?) {
            break;
        }
    }
    Ok(())
}

/// One channel as `GET /channels` lists it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = crate::schema::channels, check_for_backend(Pg))]
pub struct ChannelRow {
    pub channel: String,
    pub messages: i64,
    pub last_stream_ms: i64,
    pub last_stream_seq: i64,
    pub last_received_at: chrono::DateTime<chrono::Utc>,
}

/// The channels that hold a message, by name, those starting with `prefix` when given: read from the
/// `channels` table the persister keeps, so the cost grows with the channels, never with the messages.
pub fn channels(conn: &mut PgConnection, prefix: Option<&str>) -> QueryResult<Vec<ChannelRow>> {
    use crate::schema::channels::dsl;
    let mut query = dsl::channels
        .select(ChannelRow::as_select())
        .order(dsl::channel)
        .into_boxed();
    if let Some(prefix) = prefix.filter(|p| !p.is_empty()) {
        // `starts_with`, not LIKE: `_` is a wildcard to LIKE and a character of channel names.
        query = query.filter(
            sql::<Bool>("starts_with(channel, ")
                .bind::<diesel::sql_types::Text, _>(prefix.to_owned())
                .sql(")"),
        );
    }
    query.load(conn)
}

#[cfg(test)]
mod tests {
    use super::rows_that_fit;

    #[test]
    fn a_page_asks_for_the_rows_that_fit_its_bytes() {
        const MIB: usize = 1024 * 1024;
        assert_eq!(
            rows_that_fit(0, 0, MIB, 2000),
            2000,
            "nothing read: a full page"
        );
        assert_eq!(
            rows_that_fit(100, 100 * 300, MIB, 2000),
            2000,
            "small rows: all a page holds"
        );
        assert_eq!(
            rows_that_fit(10, 10 * 10_000, MIB, 2000),
            105,
            "10 kB rows: 1 MiB, and one more"
        );
        assert_eq!(
            rows_that_fit(3, 3 * MIB, MIB, 2000),
            2,
            "1 MiB rows: one, and one more"
        );
        assert_eq!(
            rows_that_fit(1, 8 * MIB, MIB, 2000),
            1,
            "never fewer than one"
        );
    }
}
