//! `GET /messages` and `GET /channels/{channel}/messages`: the query, the committed watermark, and a page
//! with its `Link` to the next one; without `limit`, the whole list streamed (`stream.rs`).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use model::ChannelName;
use model::StreamId;
use serde::Deserialize;
use service::settings::Scope as KeyScope;
use store::read::Window;
use store::PgPool;

use super::stream;
use crate::problem::ApiError;
use crate::state::AppState;

/// The largest page `limit` allows.
pub const MAX_LIMIT: i64 = 1000;
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
        super::watermark::committed_below(&mut state.redis.clone(), &state.settings.stream_key)
            .await
            .map_err(|e| ApiError::StreamUnavailable(e.into()))?;
    match limit {
        Some(limit) => page(&state.db, scope, after, below, limit).await,
        None => {
            let channel = scope.channel().map(std::sync::Arc::from);
            stream::stream_all(state, channel, after, below).await
        }
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
