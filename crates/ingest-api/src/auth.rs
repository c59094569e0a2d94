//! API keys (`API_KEYS`): `Authorization: Bearer <key>` must carry the route's scope.

use actix_web::http::header;
use actix_web::HttpRequest;
use model::settings::{Access, ApiKeys, Scope};

use crate::problem::ApiError;

pub fn require(req: &HttpRequest, keys: &ApiKeys, scope: Scope) -> Result<(), ApiError> {
    if keys.is_open() {
        return Ok(());
    }
    let key = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match keys.check(key, scope) {
        Access::Granted => Ok(()),
        Access::Unauthenticated => Err(ApiError::Unauthenticated),
        Access::Forbidden => Err(ApiError::Forbidden(match scope {
            Scope::Publish => "publish",
            Scope::Read => "read",
            Scope::Subscribe => "subscribe",
        })),
    }
}
