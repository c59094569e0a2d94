//! A full read (`GET /messages` without `limit`): one JSON array, streamed in keyset pages, each read on
//! the blocking pool with a connection that goes back to the pool before the page is sent.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use bytes::Bytes;
use futures_util::StreamExt;
use model::StreamId;
use store::read::Window;

use crate::problem::ApiError;
use crate::state::AppState;

/// Response chunks are flushed at about this size.
const CHUNK_BYTES: usize = 64 * 1024;

/// Every row of `channel` (of every channel when `None`) after `after` and below the watermark, as one
/// JSON array, streamed in keyset pages.
///
/// A page is at most `PAGE_ROWS` rows and about `PAGE_BYTES` of JSON; each is read on the blocking pool
/// with a pooled connection that goes back to the pool *before* the page is handed to the socket. So a
/// client that stops reading holds no database connection (nor a blocking thread): the response stream
/// is simply not polled, and the next page is read only when it asks. At most `full_reads` pages are
/// being read at once, so full reads never take the whole pool.
pub(super) async fn stream_all(
    state: web::Data<AppState>,
    channel: Option<Arc<str>>,
    after: Option<StreamId>,
    below: Option<StreamId>,
) -> Result<HttpResponse, ApiError> {
    // The first page before answering: a failure to reach Postgres then is a clean 503, not a 200 with
    // a broken body. A failure after it can only abort the response.
    let first = read_page(&state, channel.clone(), after, below, FIRST_PAGE_ROWS).await?;
    // The page's own buffer becomes the chunk (brackets and commas added in place): one allocation
    // per page, not two.
    let (first_last, first_done, first_empty, first_limit) = (
        first.last,
        first.done,
        first.json.is_empty(),
        first.next_limit,
    );
    let mut opening = first.json;
    opening.insert(0, b'[');
    if first_done {
        opening.push(b']');
    }
    let rest = futures_util::stream::unfold(
        (state, first_last, first_done, first_empty, first_limit),
        move |(state, cursor, done, empty_so_far, limit)| {
            let channel = channel.clone();
            async move {
                if done {
                    return None;
                }
                let item = match read_page(&state, channel, cursor, below, limit).await {
                    Ok(page) => {
                        let empty = empty_so_far && page.json.is_empty();
                        let mut chunk = page.json;
                        if !empty_so_far && !chunk.is_empty() {
                            chunk.insert(0, b',');
                        }
                        if page.done {
                            chunk.push(b']');
                        }
                        let next = (state, page.last, page.done, empty, page.next_limit);
                        return Some((Ok(Bytes::from(chunk)), next));
                    }
                    Err(e) => {
                        log::error!("GET /messages aborted mid-stream: {e:#}");
                        Err(actix_web::error::ErrorServiceUnavailable(
                            "store unavailable",
                        ))
                    }
                };
                Some((item, (state, cursor, true, empty_so_far, limit)))
            }
        },
    );
    let body =
        futures_util::stream::once(async move { Ok::<_, actix_web::Error>(Bytes::from(opening)) })
            .chain(rest);
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .streaming(body))
}

/// Rows read per page of a full read, at most. A page asks for about as many rows as fit `PAGE_BYTES` at
/// the previous page's row size: a query stopped early still drains its rows from libpq, so asking for
/// far more than a page holds reads them for nothing.
const PAGE_ROWS: i64 = 1000;
/// Rows the first page asks for, before any row size is known.
const FIRST_PAGE_ROWS: i64 = 64;
/// A page ends after the row that takes its JSON past this size: a bound on memory per reader, and a
/// trade against the cost of each page (a pooled connection checked with `SELECT 1`, the query, a trip
/// to the blocking pool). `make bench`'s read of 1M rows of ~330 bytes, peak RSS of ingest-api:
/// 128 KiB pages 1.60 s at 17.4 MiB, 256 KiB 1.33–1.41 s at 18.0, 512 KiB (so `PAGE_ROWS` ends them)
/// 1.24–1.27 s at 18.2; 2,000 rows of 512 KiB 1.13–1.24 s at 19.5–20.3.
const PAGE_BYTES: usize = 512 * 1024;

/// One page of a full read: the rows' JSON (comma-separated, no brackets), the last id in it, and
/// whether it was the last page.
struct Page {
    json: Vec<u8>,
    last: Option<StreamId>,
    done: bool,
    /// How many rows the next page should ask for.
    next_limit: i64,
}

async fn read_page(
    state: &AppState,
    channel: Option<Arc<str>>,
    after: Option<StreamId>,
    below: Option<StreamId>,
    limit: i64,
) -> Result<Page, ApiError> {
    // Waiting for a turn is bounded like waiting for a pooled connection: a 503, not a hang.
    let wait = std::time::Duration::from_millis(state.settings.redis_timeout_ms);
    let _permit = tokio::time::timeout(wait, state.full_reads.acquire())
        .await
        .map_err(|_| {
            ApiError::StoreUnavailable(anyhow::anyhow!(
                "no turn for a full read within {wait:?}: too many at once"
            ))
        })?
        .map_err(|e| ApiError::Internal(e.into()))?;
    let db = state.db.clone();
    web::block(move || -> Result<Page, ApiError> {
        let mut conn = db.get().map_err(|e| ApiError::StoreUnavailable(e.into()))?;
        let mut page = Page {
            // Room for a full page and the row that ends it, so the buffer does not double past it.
            json: Vec::with_capacity(PAGE_BYTES + CHUNK_BYTES),
            last: after,
            done: true,
            next_limit: limit,
        };
        let mut rows = 0;
        let window = Window {
            channel: channel.as_deref(),
            after,
            below,
        };
        store::read::for_each(&mut conn, &window, limit, |row| {
            if rows > 0 {
                page.json.push(b',');
            }
            row.write_json(&mut page.json);
            page.last = Some(row.stream_id());
            rows += 1;
            page.json.len() < PAGE_BYTES
        })
        .map_err(|e| ApiError::StoreUnavailable(e.into()))?;
        // Fewer rows than asked and under the byte bound: the table has no more.
        page.done = rows < limit && page.json.len() < PAGE_BYTES;
        if rows > 0 {
            page.next_limit =
                store::read::rows_that_fit(rows, page.json.len(), PAGE_BYTES, PAGE_ROWS);
        }
        Ok(page)
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("blocking pool: {e}")))?
}
