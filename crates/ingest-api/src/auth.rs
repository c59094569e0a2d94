//! Credentials (`API_KEYS`): `Authorization: Bearer <key>` must carry the route's scope, on a channel
//! pattern that covers what the route touches.

use actix_web::HttpRequest;
use model::ChannelPattern;
use service::settings::{Access, ApiKeys, Caller, Scope};

use crate::problem::ApiError;

/// The caller, when its credential carries `scope` (401 for no or an unknown credential, 403 for
/// another scope), whatever the channel: for routes that check channels themselves (one message by id,
/// the channel list).
pub fn require(req: &HttpRequest, keys: &ApiKeys, scope: Scope) -> Result<Caller, ApiError> {
    match keys.check(service::http::bearer(req.headers()), scope) {
        Access::Granted(caller) => Ok(caller),
        Access::Unauthenticated => Err(ApiError::Unauthenticated),
        Access::Forbidden => Err(ApiError::Forbidden(scope.as_str())),
    }
}

/// [`require`], and one of the credential's patterns must cover `wanted` (403 otherwise).
pub fn require_on(
    req: &HttpRequest,
    keys: &ApiKeys,
    scope: Scope,
    wanted: &ChannelPattern,
) -> Result<Caller, ApiError> {
    let caller = require(req, keys, scope)?;
    if !caller.channels.cover(wanted) {
        return Err(ApiError::ChannelForbidden {
            scope: scope.as_str(),
            channel: wanted.to_string(),
        });
    }
    Ok(caller)
}
