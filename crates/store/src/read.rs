//! The read side: one message, a page, or every message streamed row by row in constant memory.

use diesel::dsl::sql;
use diesel::pg::{PgConnection, PgRowByRowLoadingMode};
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

/// `(stream_ms, stream_seq) > after`, written as a row comparison so that Postgres walks the primary key
/// from `after` on (an `a > x OR (a = x AND b > y)` filter would not be an index range).
fn after_filter(
    after: StreamId,
) -> diesel::expression::SqlLiteral<Bool, impl diesel::query_builder::QueryFragment<diesel::pg::Pg>>
{
    let (ms, seq) = after.as_i64_pair();
    sql::<Bool>("(stream_ms, stream_seq) > (")
        .bind::<BigInt, _>(ms)
        .sql(", ")
        .bind::<BigInt, _>(seq)
        .sql(")")
}

/// `(stream_ms, stream_seq) < below`: the committed watermark (see `ingest-api`'s `watermark.rs`).
fn below_filter(
    below: StreamId,
) -> diesel::expression::SqlLiteral<Bool, impl diesel::query_builder::QueryFragment<diesel::pg::Pg>>
{
    let (ms, seq) = below.as_i64_pair();
    sql::<Bool>("(stream_ms, stream_seq) < (")
        .bind::<BigInt, _>(ms)
        .sql(", ")
        .bind::<BigInt, _>(seq)
        .sql(")")
}

/// Up to `limit` messages after `after` (exclusive) and below `below` (exclusive, when given), in
/// stream order.
pub fn page(
    conn: &mut PgConnection,
    after: Option<StreamId>,
    below: Option<StreamId>,
    limit: i64,
) -> QueryResult<Vec<MessageRow>> {
    let mut query = messages::table
        .select(MessageRow::as_select())
        .order((messages::stream_ms, messages::stream_seq))
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(after_filter(after));
    }
    if let Some(below) = below {
        query = query.filter(below_filter(below));
    }
    query.load(conn)
}

/// Calls `each` for up to `limit` messages after `after` (and below `below`), in stream order, one row in memory at a time (libpq's
/// single-row mode). `each` returns `false` to stop early, e.g. when the HTTP client has gone.
pub fn for_each(
    conn: &mut PgConnection,
    after: Option<StreamId>,
    below: Option<StreamId>,
    limit: i64,
    mut each: impl FnMut(MessageRow) -> bool,
) -> QueryResult<()> {
    let mut query = messages::table
        .select(MessageRow::as_select())
        .order((messages::stream_ms, messages::stream_seq))
        // Stopping early still drains the rest of the result from libpq: the limit bounds that too.
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(after_filter(after));
    }
    if let Some(below) = below {
        query = query.filter(below_filter(below));
    }
    for row in query.load_iter::<MessageRow, PgRowByRowLoadingMode>(conn)? {
        if !each(row?) {
            break;
        }
    }
    Ok(())
}
