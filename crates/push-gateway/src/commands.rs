//! A client's `subscribe` and `unsubscribe` frames over an open socket.

use std::net::IpAddr;
use std::sync::Arc;

use actix_ws::CloseCode;
use bytestring::ByteString;
use model::{ChannelPattern, StreamId};
use serde::Deserialize;

use crate::ending::{client_timeout, close, End};
use crate::frames;
use crate::hub::Subscription;
use crate::outlet::{send, Out, Outlet};
use crate::replay::replay;
use crate::routing::{Refusal, Subs};
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
    match parse(text) {
        Err(refused) => send(state, session, sub, Out::Text(refused)).await,
        Ok(Asked::Unsubscribe(pattern)) => unsubscribe(state, session, sub, subs, &pattern).await,
        Ok(Asked::Subscribe(pattern, since)) => {
            subscribe(state, session, sub, subs, (may, addr), pattern, since).await
        }
    }
}

/// What a well-formed frame asks for.
enum Asked {
    Subscribe(ChannelPattern, Option<StreamId>),
    Unsubscribe(ChannelPattern),
}

/// The frame in `text`, or the `error` frame (400) that refuses it.
fn parse(text: &str) -> Result<Asked, ByteString> {
    let Ok(cmd) = serde_json::from_str::<Command>(text) else {
        return Err(frames::error(
            None,
            400,
            "not a subscribe or unsubscribe frame",
        ));
    };
    let named = cmd.channel.as_deref();
    let refuse = |title: String| frames::error(named, 400, title);
    let pattern = match named.map(str::parse::<ChannelPattern>) {
        Some(Ok(pattern)) if matches!(cmd.kind.as_str(), "subscribe" | "unsubscribe") => pattern,
        Some(Err(e)) => return Err(refuse(format!("channel: {e}"))),
        _ => {
            let title =
                "expected {\"type\": \"subscribe\" or \"unsubscribe\", \"channel\": <pattern>}";
            return Err(refuse(title.into()));
        }
    };
    if cmd.kind == "unsubscribe" {
        return Ok(Asked::Unsubscribe(pattern));
    }
    match cmd.since.as_deref().map(str::parse::<StreamId>) {
        None => Ok(Asked::Subscribe(pattern, None)),
        Some(Ok(since)) => Ok(Asked::Subscribe(pattern, Some(since))),
        Some(Err(e)) => Err(refuse(format!("since: {e}"))),
    }
}

/// `unsubscribe`: the pattern leaves the socket's filter (404 when it was not subscribed).
async fn unsubscribe(
    state: &AppState,
    session: &mut Outlet,
    sub: &Subscription,
    subs: &mut Subs,
    pattern: &ChannelPattern,
) -> Result<(), End> {
    let answer = if subs.remove(pattern) {
        state.hub.set_filter(sub.id, Arc::clone(&subs.filter));
        state.metrics.subscriptions.dec();
        frames::unsubscribed(pattern)
    } else {
        frames::error(Some(&pattern.to_string()), 404, "not subscribed")
    };
    send(state, session, sub, Out::Text(answer)).await
}

/// `subscribe`: refused (409 overlap, 429 too many, 403 not covered) or joined at the hub's position,
/// answered with `subscribed`, then the replay from `since` up to the join when `since` is before it.
async fn subscribe(
    state: &AppState,
    session: &mut Outlet,
    sub: &Subscription,
    subs: &mut Subs,
    (may, addr): (&service::settings::Channels, Option<IpAddr>),
    pattern: ChannelPattern,
    since: Option<StreamId>,
) -> Result<(), End> {
    let refusal = match subs
        .filter
        .refuses(&pattern, state.settings.max_subscriptions)
    {
        Some(Refusal::Overlap(held, _)) => Some((
            409,
            format!("overlaps `{held}`: a message would be sent twice"),
        )),
        Some(Refusal::TooMany(max)) => Some((429, format!("more than MAX_SUBSCRIPTIONS ({max})"))),
        None if !may.cover(&pattern) => {
            Some((403, "this credential may not subscribe to it".to_owned()))
        }
        None => None,
    };
    if let Some((status, title)) = refusal {
        let refused = frames::error(Some(&pattern.to_string()), status, title);
        return send(state, session, sub, Out::Text(refused)).await;
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
