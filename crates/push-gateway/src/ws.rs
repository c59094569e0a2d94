//! `GET /ws`: admitting a WebSocket client — its query, origin, credential, channels and slot — and
//! starting its session (`session`).

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use model::{ChannelPattern, StreamId};
use serde::Deserialize;
use service::settings::{Access, Caller, Scope};

use crate::ending::{close_linger, End};
use crate::hub::Refused;
use crate::outlet::Outlet;
use crate::refused::UpgradeError;
use crate::routing::{Filter, Refusal, Subs};
use crate::session::{serve, Opening};
use crate::slots::NoSlot;
use crate::state::AppState;

#[derive(Deserialize)]
pub struct WsQuery {
    since: Option<String>,
    access_token: Option<String>,
    channels: Option<String>,
}

/// `GET /ws`: admits the client ([`admit`]), takes its slot and a place in the hub, upgrades the
/// connection, and runs the session until it ends; then lets the socket go ([`let_go`]).
pub async fn ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, UpgradeError> {
    let Admitted {
        caller,
        since,
        filter,
    } = admit(&req, &state)?;
    // The slot first: an address over its cap, or a full gateway, costs no subscription.
    let addr = state.settings.trusted_proxies.client_addr(&req);
    let slot = match state.slots.take(addr) {
        Ok(slot) => slot,
        Err(NoSlot::Full) => return Err(gateway_full(&state)),
        Err(NoSlot::AddressFull) => {
            state.metrics.refused.inc();
            return Err(UpgradeError::AddressFull);
        }
    };
    let subscription = match state.hub.subscribe(Arc::clone(&filter)) {
        Ok(subscription) => subscription,
        Err(Refused::Full) => return Err(gateway_full(&state)),
        Err(Refused::NotReady) => return Err(UpgradeError::NotReady),
    };
    let (response, session, messages) = match actix_ws::handle(&req, body) {
        Ok(parts) => parts,
        Err(e) => {
            state.hub.unsubscribe(subscription.id);
            return Err(UpgradeError::NotAWebSocket(e.to_string()));
        }
    };
    // The slot lives as long as the socket. (Outside `service::http::serve` there is no connection data;
    // then the session holds it, the best approximation.)
    let slot = service::http::ConnectionHeld::hold(&req, slot).err();
    let connection = service::http::ConnectionHeld::of(&req);
    let sessions = state.sessions.clone();
    actix_web::rt::spawn(sessions.track_future(async move {
        let _slot = slot;
        let id = subscription.id;
        let written = connection
            .as_ref()
            .map(service::http::ConnectionHeld::written);
        let outlet = Outlet::new(session.clone(), written);
        let opening = Opening {
            since,
            addr,
            may: &caller.channels,
            expires: caller.expires,
        };
        let mut subs = Subs::new(Arc::clone(&filter));
        state
            .metrics
            .subscriptions
            .add(filter.patterns().len() as i64);
        let reason = serve(&state, outlet, messages, subscription, opening, &mut subs).await;
        // Out of the hub at once: nothing more is queued for a session that has ended.
        state.hub.unsubscribe(id);
        state
            .metrics
            .subscriptions
            .sub(subs.filter.patterns().len() as i64);
        let_go(&state, session, reason, connection).await;
    }));
    Ok(response)
}

/// What a request that may open a socket asked for, once checked.
struct Admitted {
    caller: Caller,
    since: Option<StreamId>,
    filter: Arc<Filter>,
}

/// Checks the request before anything is held for it: the query, the origin (first: a page on a foreign
/// origin is refused whatever key it presents), the credential and its scope, `since`, and the channels
/// (every pattern subscribed to, `*` when none is named, covered by the credential's).
fn admit(req: &HttpRequest, state: &AppState) -> Result<Admitted, UpgradeError> {
    let Ok(query) = web::Query::<WsQuery>::from_query(req.query_string()) else {
        return Err(UpgradeError::BadQuery("bad query string".into()));
    };
    let bearer = service::http::bearer(req.headers()).or(query.access_token.as_deref());
    if let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
    {
        if !state.settings.allowed_origins.allows(origin) {
            return Err(UpgradeError::OriginNotAllowed(origin.to_owned()));
        }
    }
    let caller = match state.settings.authorize(bearer, Scope::Subscribe) {
        Access::Granted(caller) => {
            service::http::Subject::record(req, caller.sub.as_deref());
            caller
        }
        Access::Unauthenticated => return Err(UpgradeError::Unauthenticated),
        Access::Forbidden => return Err(UpgradeError::LacksScope),
    };
    let since = match query.since.as_deref().map(str::parse::<StreamId>) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(e)) => return Err(UpgradeError::BadQuery(format!("since: {e}"))),
    };
    let filter = Arc::new(subscriptions(
        query.channels.as_deref(),
        state.settings.max_subscriptions,
    )?);
    if let Some(uncovered) = filter.patterns().iter().find(|p| !caller.channels.cover(p)) {
        return Err(UpgradeError::PatternForbidden(uncovered.clone()));
    }
    Ok(Admitted {
        caller,
        since,
        filter,
    })
}

/// Lets the socket of a session that has ended go. Ending the session ends the response stream, but
/// actix keeps trying to flush what is already buffered for as long as the client does not read: without
/// this, a client that stopped reading would keep its socket (and its slot) for ever. A client that ended
/// the session itself, or whose close frame was sent, gets a short linger to read it; one that does not
/// read is cut at once.
async fn let_go(
    state: &AppState,
    session: actix_ws::Session,
    reason: End,
    connection: Option<service::http::ConnectionHeld>,
) {
    let closed = match reason {
        Some(reason) => {
            // Handing over the close frame waits for room in actix-ws's queue, which a client that
            // stopped reading never makes: the linger bounds that wait too.
            let close = session.close(Some(reason));
            tokio::time::timeout(close_linger(state), close)
                .await
                .is_ok()
        }
        None => false,
    };
    if closed {
        tokio::time::sleep(close_linger(state)).await;
    }
    if let Some(connection) = connection {
        connection.shutdown();
    }
}

/// The socket's subscriptions from `?channels=`: `*` without it, none for an empty value, else the
/// comma-separated patterns, none overlapping another and at most `MAX_SUBSCRIPTIONS`.
fn subscriptions(channels: Option<&str>, max: usize) -> Result<Filter, UpgradeError> {
    let Some(list) = channels else {
        return Ok(Filter::all());
    };
    let mut patterns = Vec::new();
    for text in list.split(',').filter(|p| !p.is_empty()) {
        let pattern = text
            .parse::<ChannelPattern>()
            .map_err(|e| UpgradeError::BadQuery(format!("channels: `{text}`: {e}")))?;
        patterns.push(pattern);
    }
    Filter::new(patterns, max).map_err(|refusal| match refusal {
        Refusal::Overlap(a, b) => UpgradeError::Overlap(a, b),
        Refusal::TooMany(max) => UpgradeError::TooManySubscriptions(max),
    })
}

/// A gateway at `MAX_CONNECTIONS`, counted as refused.
fn gateway_full(state: &AppState) -> UpgradeError {
    state.metrics.refused.inc();
    UpgradeError::GatewayFull
}
