//! `GET /messages` and `GET /messages/{id}`: reads of what the persister has stored.
//!
//! Diesel is blocking, so every query runs on the blocking pool. Without `limit`, the whole table is
//! streamed: a blocking task walks the rows one at a time (libpq single-row mode) and hands ~64 KiB chunks
//! of the JSON array to the response through a small bounded channel, so memory stays constant however
//! many rows there are, and a client that stops reading stops the query.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::StreamExt;
use model::StreamId;
use serde::Deserialize;
use service::settings::Scope;
use store::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::problem::ApiError;
use crate::startup::AppState;

/// The largest page `limit` allows.
pub const MAX_LIMIT: i64 = 1000;
/// Response chunks are flushed at about this size.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks buffered between the query and the socket.
const CHUNKS_IN_FLIGHT: usize = 4;

#[derive(Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<String>,
}

pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    crate::auth::require(&req, &state.settings.api_keys, Scope::Read)?;
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
        Some(limit) => page(&state.db, after, below, limit).await,
        None => stream_all(state.db.clone(), after, below).await,
    }
}

/// One page, with `Link: <…>; rel="next"` when more rows remain.
async fn page(
    db: &PgPool,
    after: Option<StreamId>,
    below: Option<StreamId>,
    limit: i64,
) -> Result<HttpResponse, ApiError> {
    let db = db.clone();
    let mut rows = web::block(move || -> Result<_, ApiError> {
        let mut conn = db.get().map_err(|e| ApiError::StoreUnavailable(e.into()))?;
        // One extra row tells whether there is a next page without a second query.
        store::read::page(&mut conn, after, below, limit + 1)
            .map_err(|e| ApiError::StoreUnavailable(e.into()))
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("blocking pool: {e}")))??;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let mut body =
        Vec::with_capacity(rows.iter().map(|r| r.payload.0.len() + 128).sum::<usize>() + 2);
    body.push(b'[');
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        row.write_json(&mut body);
    }
    body.push(b']');
    let mut res = HttpResponse::Ok();
    res.content_type("application/json");
    if let (true, Some(last)) = (more, rows.last()) {
        res.insert_header((
            header::LINK,
            format!(
                "</messages?after={}&limit={limit}>; rel=\"next\"",
                last.stream_id()
            ),
        ));
    }
    Ok(res.body(body))
}

/// Every row after `after`, as one JSON array, streamed.
async fn stream_all(
    db: PgPool,
    after: Option<StreamId>,
    below: Option<StreamId>,
) -> Result<HttpResponse, ApiError> {
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, ApiError>>(CHUNKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut conn = match db.get() {
            Ok(conn) => conn,
            Err(e) => {
                let _ = tx.blocking_send(Err(ApiError::StoreUnavailable(e.into())));
                return;
            }
        };
        let mut buf = Vec::with_capacity(CHUNK_BYTES + 4096);
        buf.push(b'[');
        let mut first = true;
        let walked = store::read::for_each(&mut conn, after, below, |row| {
            if !std::mem::take(&mut first) {
                buf.push(b',');
            }
            row.write_json(&mut buf);
            if buf.len() < CHUNK_BYTES {
                return true;
            }
            let chunk = Bytes::from(std::mem::replace(
                &mut buf,
                Vec::with_capacity(CHUNK_BYTES + 4096),
            ));
            // An error here means the client has gone: stop reading rows.
            tx.blocking_send(Ok(chunk)).is_ok()
        });
        match walked {
            Ok(()) => {
                buf.push(b']');
                let _ = tx.blocking_send(Ok(Bytes::from(buf)));
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(ApiError::StoreUnavailable(e.into())));
            }
        }
    });
    // Wait for the first chunk before answering: a failure to reach Postgres then is a clean 503, not a
    // 200 with a broken body. A failure after the first chunk can only abort the response.
    let first = match rx.recv().await {
        Some(Ok(chunk)) => chunk,
        Some(Err(e)) => return Err(e),
        None => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "the reading task ended without an answer"
            )))
        }
    };
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| {
            let item = item.map_err(|e| {
                log::error!("GET /messages aborted mid-stream: {e:#}");
                actix_web::error::ErrorServiceUnavailable("store unavailable")
            });
            (item, rx)
        })
    });
    let body =
        futures_util::stream::once(async move { Ok::<_, actix_web::Error>(first) }).chain(rest);
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .streaming(body))
}

pub async fn one(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    crate::auth::require(&req, &state.settings.api_keys, Scope::Read)?;
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
        Some(row) => Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body(row.to_json())),
        None => Err(ApiError::NotFound),
    }
}
