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

/// Messages after `after` (exclusive) and below `below` (exclusive, when given), in stream order, at
/// most `limit` of them.
fn window(
    after: Option<StreamId>,
    below: Option<StreamId>,
    limit: i64,
) -> messages::BoxedQuery<'static, Pg, SqlTypeOf<AsSelect<MessageRow, Pg>>> {
    let mut query = messages::table
        .select(MessageRow::as_select())
        .order((messages::stream_ms, messages::stream_seq))
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(position_filter(">", after));
    }
    if let Some(below) = below {
        query = query.filter(position_filter("<", below));
    }
    query
}

/// Up to `limit` messages after `after` (exclusive) and below `below` (exclusive, when given), in
/// stream order.
pub fn page(
    conn: &mut PgConnection,
    after: Option<StreamId>,
    below: Option<StreamId>,
    limit: i64,
) -> QueryResult<Vec<MessageRow>> {
    window(after, below, limit).load(conn)
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
    // Stopping early still drains the rest of the result from libpq: the limit bounds that too.
    let rows = window(after, below, limit).load_iter::<MessageRow, PgRowByRowLoadingMode>(conn)?;
    for row in rows {
        if !each(row?) {
            break;
        }
    }
    Ok(())
}
