//! A client's `subscribe` and `unsubscribe` frames over an open socket.

use std::net::IpAddr;
use std::sync::Arc;

use actix_ws::CloseCode;
use model::{ChannelPattern, StreamId};
use serde::Deserialize;

use crate::frames;
use crate::hub::Subscription;
use crate::outlet::{send, Out, Outlet};
use crate::replay::replay;
use crate::routing::{Refusal, Subs};
use crate::session::{client_timeout, close, End};
use crate::state::AppState;

/// A client's frame: `subscribe` or `unsubscribe`.
#[derive(Deserialize)]
struct Command {
    #[serde(rename = "type")]
    kind: String,
    channel: Option<String>,
    since: Option<String>,
}

/// Answers a client's `subscribe` or `unsubscribe` frame, and changes the socket's subscriptions.
/// Anything refused gets an `error` frame and leaves the socket open.
///
/// A subscription joins the hub at the hub's position Q: every frame of it published after Q is queued
/// from then on. Its replay, when `since` is before Q, sends (since, Q] of its pattern only, from
/// Postgres and the stream, and stops at Q; live frames of it at or before Q (the catch-up history can
/// hold some) are skipped by the floor the subscription keeps. So no gap and no duplicate at its switch,
/// as for a connection's `since`.
pub(crate) async fn command(
    state: &AppState,
    session: &mut Outlet,
    sub: &Subscription,
    subs: &mut Subs,
    (may, addr): (&service::settings::Channels, Option<IpAddr>),
    text: &str,
) -> Result<(), End> {
    let Ok(cmd) = serde_json::from_str::<Command>(text) else {
        let refused = frames::error(None, 400, "not a subscribe or unsubscribe frame");
        return send(state, session, sub, Out::Text(refused)).await;
    };
    let named = cmd.channel.as_deref();
    let refuse = |status: u16, title: String| Out::Text(frames::error(named, status, title));
    let pattern = match named.map(str::parse::<ChannelPattern>) {
        Some(Ok(pattern)) if matches!(cmd.kind.as_str(), "subscribe" | "unsubscribe") => pattern,
        Some(Err(e)) => {
            return send(state, session, sub, refuse(400, format!("channel: {e}"))).await
        }
        _ => {
            let title =
                "expected {\"type\": \"subscribe\" or \"unsubscribe\", \"channel\": <pattern>}";
            return send(state, session, sub, refuse(400, title.into())).await;
        }
    };
    if cmd.kind == "unsubscribe" {
        if !subs.remove(&pattern) {
            return send(state, session, sub, refuse(404, "not subscribed".into())).await;
        }
        state.hub.set_filter(sub.id, Arc::clone(&subs.filter));
        state.metrics.subscriptions.dec();
        return send(
            state,
            session,
            sub,
            Out::Text(frames::unsubscribed(&pattern)),
        )
        .await;
    }
    let since = match cmd.since.as_deref().map(str::parse::<StreamId>) {
        None => None,
        Some(Ok(since)) => Some(since),
        Some(Err(e)) => return send(state, session, sub, refuse(400, format!("since: {e}"))).await,
    };
    if let Some(refusal) = subs
        .filter
        .refuses(&pattern, state.settings.max_subscriptions)
    {
        let (status, title) = match refusal {
            Refusal::Overlap(held, _) => (
                409,
                format!("overlaps `{held}`: a message would be sent twice"),
            ),
            Refusal::TooMany(max) => (429, format!("more than MAX_SUBSCRIPTIONS ({max})")),
        };
        return send(state, session, sub, refuse(status, title)).await;
    }
    if !may.cover(&pattern) {
        return send(
            state,
            session,
            sub,
            refuse(403, "this credential may not subscribe to it".into()),
        )
        .await;
    }
    let Some(joined) = state.hub.set_filter(sub.id, subs.with(&pattern)) else {
        return Err(close(CloseCode::Again, "gateway not ready; reconnect"));
    };
    subs.add(pattern.clone(), joined);
    state.metrics.subscriptions.inc();
    let start = since.filter(|s| *s < joined).unwrap_or(joined);
    send(
        state,
        session,
        sub,
        Out::Text(frames::subscribed(&pattern, start)),
    )
    .await?;
    if start < joined {
        // A replay like any other: it takes a turn, shared per address.
        let Some(_turn) = state.replays.take(addr, client_timeout(state)).await else {
            return Err(close(
                CloseCode::Again,
                "too many replays; reconnect with since",
            ));
        };
        let only = Subs::only(pattern);
        Box::pin(replay(state, session, sub, start, &only, Some(joined))).await?;
    }
    Ok(())
}
