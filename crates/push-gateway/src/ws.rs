//! `GET /ws`: admitting a WebSocket client — its query, origin, credential, channels and slot — and
//! starting its session (`session`).

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use model::{ChannelPattern, StreamId};
use serde::Deserialize;
use service::settings::{Access, Scope};

use crate::hub::Refused;
use crate::routing::{Filter, Refusal, Subs};
use crate::session::{close_linger, serve, Opening, Outlet};
use crate::slots::NoSlot;
use crate::state::AppState;

#[derive(Deserialize)]
pub struct WsQuery {
    since: Option<String>,
    access_token: Option<String>,
    channels: Option<String>,
}

pub async fn ws(req: HttpRequest, body: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    let Ok(query) = web::Query::<WsQuery>::from_query(req.query_string()) else {
        return problem(
            400,
            "invalid-parameter",
            "Invalid parameter",
            "bad query string".into(),
        );
    };
    let bearer = service::http::bearer(req.headers()).or(query.access_token.as_deref());
    // Origin first: a page on a foreign origin is refused whatever key it presents.
    if let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
    {
        if !state.settings.allowed_origins.allows(origin) {
            return problem(
                403,
                "origin-not-allowed",
                "Origin not allowed",
                format!("origin {origin} is not in ALLOWED_ORIGINS"),
            );
        }
    }
    let caller = match state.settings.authorize(bearer, Scope::Subscribe) {
        Access::Granted(caller) => {
            service::http::Subject::record(&req, caller.sub.as_deref());
            caller
        }
        Access::Unauthenticated => {
            return problem(401, "unauthenticated", "Unauthenticated", "send a key with the `subscribe` scope as `Authorization: Bearer <key>` or `?access_token=<key>`".into())
        }
        Access::Forbidden => return problem(403, "forbidden", "Forbidden", "this API key lacks the `subscribe` scope".into()),
    };
    let since = match query.since.as_deref().map(str::parse::<StreamId>) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(e)) => {
            return problem(
                400,
                "invalid-parameter",
                "Invalid parameter",
                format!("since: {e}"),
            )
        }
    };
    let filter = match subscriptions(query.channels.as_deref(), state.settings.max_subscriptions) {
        Ok(filter) => Arc::new(filter),
        Err(refused) => return *refused,
    };
    // Every pattern subscribed to (`*` when none is named) must be covered by the credential's.
    if let Some(uncovered) = filter.patterns().iter().find(|p| !caller.channels.cover(p)) {
        return problem(
            403,
            "forbidden",
            "Forbidden",
            format!("this credential may not subscribe to `{uncovered}`"),
        );
    }
    // The slot first: an address over its cap, or a full gateway, costs no subscription.
    let addr = state.settings.trusted_proxies.client_addr(&req);
    let slot = match state.slots.take(addr) {
        Ok(slot) => slot,
        Err(NoSlot::Full) => return gateway_full(&state),
        Err(NoSlot::AddressFull) => {
            state.metrics.refused.inc();
            let detail = "this address has MAX_CONNECTIONS_PER_IP WebSockets open; close one first";
            return service::Problem::new(
                actix_web::http::StatusCode::TOO_MANY_REQUESTS,
                "too-many-connections-from-address",
                "Too many connections from this address",
                detail,
            )
            .retry_after(service::problem::RETRY_AFTER_SECS)
            .response();
        }
    };
    let subscription = match state.hub.subscribe(Arc::clone(&filter)) {
        Ok(subscription) => subscription,
        Err(Refused::Full) => return gateway_full(&state),
        Err(Refused::NotReady) => {
            return problem(
                503,
                "not-ready",
                "Not ready",
                "the gateway has not reached the stream yet; retry shortly".into(),
            );
        }
    };
    let (response, session, messages) = match actix_ws::handle(&req, body) {
        Ok(parts) => parts,
        Err(e) => {
            state.hub.unsubscribe(subscription.id);
            return problem(
                400,
                "not-a-websocket",
                "Not a WebSocket handshake",
                e.to_string(),
            );
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
        // Ending the session ends the response stream, but actix keeps trying to flush what is already
        // buffered for as long as the client does not read: without this, a client that stopped reading
        // would keep its socket (and its slot) for ever. A client that ended the session itself, or whose
        // close frame was sent, gets a short linger to read it; one that does not read is cut at once.
        let closed = match reason {
            Some(reason) => {
                // Handing over the close frame waits for room in actix-ws's queue, which a client that
                // stopped reading never makes: the linger bounds that wait too.
                let close = session.close(Some(reason));
                tokio::time::timeout(close_linger(&state), close)
                    .await
                    .is_ok()
            }
            None => false,
        };
        if closed {
            tokio::time::sleep(close_linger(&state)).await;
        }
        if let Some(connection) = connection {
            connection.shutdown();
        }
    }));
    response
}

/// The socket's subscriptions from `?channels=`: `*` without it, none for an empty value, else the
/// comma-separated patterns, none overlapping another and at most `MAX_SUBSCRIPTIONS`; or the problem
/// that refuses the upgrade.
fn subscriptions(channels: Option<&str>, max: usize) -> Result<Filter, Box<HttpResponse>> {
    let Some(list) = channels else {
        return Ok(Filter::all());
    };
    let mut patterns = Vec::new();
    for text in list.split(',').filter(|p| !p.is_empty()) {
        match text.parse::<ChannelPattern>() {
            Ok(pattern) => patterns.push(pattern),
            Err(e) => {
                let detail = format!("channels: `{text}`: {e}");
                let refused = problem(400, "invalid-parameter", "Invalid parameter", detail);
                return Err(Box::new(refused));
            }
        }
    }
    Filter::new(patterns, max).map_err(|refusal| Box::new(match refusal {
        Refusal::Overlap(a, b) => problem(
            409,
            "overlapping-subscriptions",
            "Overlapping subscriptions",
            format!("channels: `{a}` and `{b}` overlap: a message would be sent twice; subscribe to the wider one"),
        ),
        Refusal::TooMany(max) => problem(
            429,
            "too-many-subscriptions",
            "Too many subscriptions",
            format!("channels: more than MAX_SUBSCRIPTIONS ({max}) patterns"),
        ),
    }))
}

/// A refused upgrade, as the one problem response of every service.
/// 503 for a gateway at `MAX_CONNECTIONS`, counted as refused.
fn gateway_full(state: &AppState) -> HttpResponse {
    state.metrics.refused.inc();
    problem(
        503,
        "too-many-connections",
        "Too many connections",
        "the gateway is at MAX_CONNECTIONS; retry later".into(),
    )
}

fn problem(status: u16, slug: &str, title: &'static str, detail: String) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    service::Problem::new(status, slug, title, detail).response()
}
