//! API keys (`API_KEYS`): `Authorization: Bearer <key>` must carry the route's scope.

use actix_web::HttpRequest;
use service::settings::{Access, ApiKeys, Caller, Scope};

use crate::problem::ApiError;

/// The caller, when its key carries `scope`; else 401 (no or unknown key) or 403 (wrong scope).
pub fn require(req: &HttpRequest, keys: &ApiKeys, scope: Scope) -> Result<Caller, ApiError> {
    match keys.check(service::http::bearer(req.headers()), scope) {
        Access::Granted(caller) => Ok(caller),
        Access::Unauthenticated => Err(ApiError::Unauthenticated),
        Access::Forbidden => Err(ApiError::Forbidden(scope.as_str())),
    }
}
