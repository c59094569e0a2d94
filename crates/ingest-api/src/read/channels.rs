//! `GET /channels`: the channels that hold a persisted message, from the table the persister keeps.

use actix_web::{web, HttpRequest, HttpResponse};
use model::StreamId;
use serde::Deserialize;
use service::settings::Scope as KeyScope;

use crate::problem::ApiError;
use crate::state::AppState;

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
