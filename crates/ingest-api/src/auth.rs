//! Credentials (`API_KEYS`, and tokens signed with `TOKEN_SECRET`): `Authorization: Bearer <credential>`
//! must carry the route's scope, on a channel pattern that covers what the route touches.

use actix_web::HttpRequest;
use model::ChannelPattern;
use service::settings::{Access, Caller, Scope};
use service::Settings;

use crate::problem::ApiError;

/// The caller, when its credential carries `scope` (401 for no or an unknown credential, 403 for
/// another scope), whatever the channel: for routes that check channels themselves (one message by id,
/// the channel list).
pub fn require(req: &HttpRequest, settings: &Settings, scope: Scope) -> Result<Caller, ApiError> {
    match settings.authorize(service::http::bearer(req.headers()), scope) {
        Access::Granted(caller) => {
            service::http::Subject::record(req, caller.sub.as_deref());
            Ok(caller)
        }
        Access::Unauthenticated => Err(ApiError::Unauthenticated),
        Access::Forbidden => Err(ApiError::Forbidden(scope.as_str())),
    }
}

/// [`require`], and one of the credential's patterns must cover `wanted` (403 otherwise).
pub fn require_on(
    req: &HttpRequest,
    settings: &Settings,
    scope: Scope,
    wanted: &ChannelPattern,
) -> Result<Caller, ApiError> {
    let caller = require(req, settings, scope)?;
    if !caller.channels.cover(wanted) {
        return Err(ApiError::ChannelForbidden {
            scope: scope.as_str(),
            channel: wanted.to_string(),
        });
    }
    Ok(caller)
}
