//! `GET /messages`, `GET /channels/{channel}/messages`, `GET /channels` and `GET /messages/{id}`: reads
//! of what the persister has stored.
//!
//! Diesel is blocking, so every query runs on the blocking pool. Without `limit`, the whole table is
//! streamed in keyset pages (see [`stream_all`]): memory stays constant however many rows there are, and
//! a client that stops reading holds no database connection. Every read is cut at the committed
//! watermark (`watermark.rs`).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::StreamExt;
use model::ChannelName;
use model::StreamId;
use serde::Deserialize;
use service::settings::Scope as KeyScope;
use std::sync::Arc;
use store::read::Window;
use store::PgPool;
use uuid::Uuid;

use crate::problem::ApiError;
use crate::state::AppState;

/// The largest page `limit` allows.
pub const MAX_LIMIT: i64 = 1000;
/// Response chunks are flushed at about this size.
const CHUNK_BYTES: usize = 64 * 1024;

#[derive(Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<String>,
}

/// What a list reads: every channel's messages (`GET /messages`) or one channel's.
pub enum Scope {
    All,
    Channel(ChannelName),
}

impl Scope {
    fn channel(&self) -> Option<&str> {
        match self {
            Self::All => None,
            Self::Channel(c) => Some(c.as_str()),
        }
    }

    /// The path the `Link` of a next page names.
    fn path(&self) -> String {
        match self {
            Self::All => "/messages".to_owned(),
            Self::Channel(c) => format!("/channels/{c}/messages"),
        }
    }
}

pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    scope: Scope,
) -> Result<HttpResponse, ApiError> {
    let wanted = match &scope {
        Scope::All => model::ChannelPattern::all(),
        Scope::Channel(c) => model::ChannelPattern::Exact(c.clone()),
    };
    crate::auth::require_on(&req, &state.settings, KeyScope::Read, &wanted)?;
    let query = web::Query::<ListQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::BadQuery(format!("bad query string: {e}")))?;
    let after = match query.after.as_deref() {
        Some(a) => Some(
            a.parse::<StreamId>()
                .map_err(|e| ApiError::BadQuery(format!("after: {e}")))?,
        ),
        None => None,
    };
    let limit = match query.limit.as_deref() {
        Some(l) => Some(
            l.parse::<i64>()
                .ok()
                .filter(|l| (1..=MAX_LIMIT).contains(l))
                .ok_or_else(|| {
                    ApiError::BadQuery(format!(
                        "limit: `{l}` is not a whole number from 1 to {MAX_LIMIT}"
                    ))
                })?,
        ),
        None => None,
    };
    // Only a prefix that can no longer change is shown (see `watermark.rs`): a client paging with
    // `after=` never steps over a row that commits later.
    let below =
        crate::watermark::committed_below(&mut state.redis.clone(), &state.settings.stream_key)
            .await
            .map_err(|e| ApiError::StreamUnavailable(e.into()))?;
    match limit {
        Some(limit) => page(&state.db, scope, after, below, limit).await,
        None => stream_all(state, scope, after, below).await,
    }
}

/// A page of `GET /messages?limit=` ends at `limit` messages or after the message that takes its JSON
/// past this size, whichever comes first: with messages of `MAX_BODY_BYTES`, a page of 1,000 would
/// otherwise be a gibibyte per reader.
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// One page, with `Link: <…>; rel="next"` when more rows remain. The page's JSON is written straight
/// into the response body as rows arrive, one row in memory at a time: the body is the only copy.
async fn page(
    db: &PgPool,
    scope: Scope,
    after: Option<StreamId>,
    below: Option<StreamId>,
    limit: i64,
) -> Result<HttpResponse, ApiError> {
    let db = db.clone();
    let path = scope.path();
    let (body, last, more) = web::block(move || -> Result<_, ApiError> {
        let mut conn = db.get().map_err(|e| ApiError::StoreUnavailable(e.into()))?;
        let window = Window {
            channel: scope.channel(),
            after,
            below,
        };
        store::read::page_json(&mut conn, &window, limit, MAX_PAGE_BYTES)
            .map_err(|e| ApiError::StoreUnavailable(e.into()))
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("blocking pool: {e}")))??;
    let mut res = HttpResponse::Ok();
    res.content_type("application/json");
    if let (true, Some(last)) = (more, last) {
        res.insert_header((
            header::LINK,
            format!("<{path}?after={last}&limit={limit}>; rel=\"next\""),
        ));
    }
    Ok(res.body(body))
}

/// Every row after `after` (and below the watermark), as one JSON array, streamed in keyset pages.
///
/// A page is at most `PAGE_ROWS` rows and about `PAGE_BYTES` of JSON; each is read on the blocking pool
/// with a pooled connection that goes back to the pool *before* the page is handed to the socket. So a
/// client that stops reading holds no database connection (nor a blocking thread): the response stream
/// is simply not polled, and the next page is read only when it asks. At most `full_reads` pages are
/// being read at once, so full reads never take the whole pool.
async fn stream_all(
    state: web::Data<AppState>,
    scope: Scope,
    after: Option<StreamId>,
    below: Option<StreamId>,
) -> Result<HttpResponse, ApiError> {
    let channel: Option<Arc<str>> = scope.channel().map(Arc::from);
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
            let per_row = (page.json.len() as i64 / rows).max(1);
            page.next_limit = (PAGE_BYTES as i64 / per_row + 1).clamp(1, PAGE_ROWS);
        }
        Ok(page)
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("blocking pool: {e}")))?
}

pub async fn one(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = crate::auth::require(&req, &state.settings, KeyScope::Read)?;
    let id = Uuid::try_parse(&path)
        .map_err(|_| ApiError::BadQuery(format!("`{}` is not a UUID", path.as_str())))?;
    let db = state.db.clone();
    let row = web::block(move || -> Result<_, ApiError> {
        let mut conn = db.get().map_err(|e| ApiError::StoreUnavailable(e.into()))?;
        store::read::find(&mut conn, id).map_err(|e| ApiError::StoreUnavailable(e.into()))
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("blocking pool: {e}")))??;
    match row {
        // A message of a channel the caller may not read does not exist, as far as it can tell.
        Some(row) if caller.channels.cover_channel(&row.channel) => Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body(row.to_json())),
        _ => Err(ApiError::NotFound),
    }
}

#[derive(Deserialize)]
pub struct ChannelsQuery {
    prefix: Option<String>,
}

/// `GET /channels`: every channel that holds a persisted message, by name, with its count and last
/// message, read from the table the persister keeps (never by counting messages).
pub async fn channels(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = crate::auth::require(&req, &state.settings, KeyScope::Read)?;
    let query = web::Query::<ChannelsQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::BadQuery(format!("bad query string: {e}")))?;
    let prefix = query.into_inner().prefix.unwrap_or_default();
    // A prefix is what a pattern has before its `*`: the same characters as a channel name.
    format!("{prefix}*")
        .parse::<model::ChannelPattern>()
        .map_err(|e| ApiError::BadQuery(format!("prefix: {e}")))?;
    let db = state.db.clone();
    let rows = web::block(move || -> Result<_, ApiError> {
        let mut conn = db.get().map_err(|e| ApiError::StoreUnavailable(e.into()))?;
        store::read::channels(&mut conn, Some(&prefix))
            .map_err(|e| ApiError::StoreUnavailable(e.into()))
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("blocking pool: {e}")))??;
    // Only the channels the caller may read.
    let list: Vec<ChannelInfo> = rows
        .into_iter()
        .filter(|row| caller.channels.cover_channel(&row.channel))
        .map(ChannelInfo::from)
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

/// One channel in `GET /channels`.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({"channel": "chat.room1", "messages": 42, "last_stream_id": "1732478400123-0", "last_received_at": "2026-11-24T20:00:00.123456Z"}))]
pub struct ChannelInfo {
    channel: String,
    messages: i64,
    last_stream_id: String,
    last_received_at: String,
}

impl From<store::read::ChannelRow> for ChannelInfo {
    fn from(row: store::read::ChannelRow) -> Self {
        Self {
            channel: row.channel,
            messages: row.messages,
            last_stream_id: StreamId::from_i64_pair(row.last_stream_ms, row.last_stream_seq)
                .to_string(),
            last_received_at: model::format_received_at(&row.last_received_at),
        }
    }
}
