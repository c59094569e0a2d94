//! `GET /messages/{id}`: one persisted message, if the caller may read its channel.

use actix_web::{web, HttpRequest, HttpResponse};
use service::settings::Scope as KeyScope;
use uuid::Uuid;

use crate::problem::ApiError;
use crate::state::AppState;

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
