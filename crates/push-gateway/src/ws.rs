//! `GET /ws`: one WebSocket client.
//!
//! Resuming with `?since=<id>` has to join two sources without a gap or a duplicate at the seam: the
//! stream's history (`XRANGE`) and the live frames from the hub. The order of operations makes it safe:
//! 1. the client is subscribed to the hub *first*, so every entry the reader publishes from now on is
//!    queued for it;
//! 2. then the history after `since` is replayed from the stream in pages, up to whatever the stream holds
//!    at that time — which includes every entry published before step 1;
//! 3. then the queued live frames are sent, skipping any whose id is not after the last one sent (the
//!    entries that were both replayed and queued).
//!
//! Anything published before step 1 is in the stream by then; anything after is in the queue: no gap.
//!
//! A client whose queue fills (one large post, a slow link) falls behind rather than being closed: the
//! session sends what was queued, then catches up from the hub's shared history of recent frames — or
//! from the stream, the same replay as above, when the history no longer reaches back to it — and the hub
//! subscribes it again exactly after the last frame sent ([`catch_up`]). Only a client still behind
//! after `WS_CATCH_UP_MS` is too slow to keep up, and is closed with 1013.
//!
//! Everything the server writes — frames, pings, pongs, closes — goes through [`send`], which gives up
//! when the client makes no progress reading for `CLIENT_TIMEOUT_MS`: a client that floods pings and never
//! reads can no longer park its session in a `pong().await` that never returns. The connection's slot is
//! held by the socket itself (see `slots`), so it is free exactly when the socket is gone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use futures_util::StreamExt;
use model::{ChannelPattern, StreamId};
use redis::Value;
use serde::Deserialize;
use service::settings::{Access, Scope};

use crate::frames;
use crate::hub::{CatchUp, Frame, Refused, Subscription};
use crate::reader::{reply_id, to_frames};
use crate::routing::{Filter, Refusal, Subs};
use crate::seams::Seam;
use crate::slots::NoSlot;
use crate::startup::AppState;
use model::redis_stream::entry_list;

/// The close code of a socket whose token's `exp` passed (the client library asks for a new token and
/// resumes).
pub const TOKEN_EXPIRED: u16 = 4001;

/// How often the server pings each client (more often when `CLIENT_TIMEOUT_MS` is under three times this,
/// so a silent client is noticed in time).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Entries per page while replaying, at most.
const REPLAY_PAGE: usize = 500;
/// A replay page ends after the entry that takes its fields past this many bytes, if it has not ended at
/// [`REPLAY_PAGE`] entries before: with entries of 1 MiB a page of 500 would be half a gibibyte per
/// replay, each held twice (the reply and its frames) while it is sent.
const REPLAY_PAGE_BYTES: usize = 1024 * 1024;
/// One replay page, read inside Redis so that it can end at a byte bound (`XRANGE` counts entries
/// only): `{cut, entries}`, `entries` shaped as `XRANGE`'s reply, `cut` 1 when the byte bound ended it.
/// Sub-pages start at one entry and grow (to 16) only as far as the entries seen so far fit the bytes
/// left, so the script never copies much more than the page itself: 16 entries of 1 MiB at a time,
/// times 16 replays, kept Redis busy past `REDIS_TIMEOUT_MS`.
const REPLAY_PAGE_SCRIPT: &str = r"
local key, start = KEYS[1], ARGV[1]
local max_count, max_bytes = tonumber(ARGV[2]), tonumber(ARGV[3])
local out, bytes, want = {}, 0, 1
while #out < max_count do
  local page = redis.call('XRANGE', key, start, '+', 'COUNT', want)
  for _, entry in ipairs(page) do
    out[#out + 1] = entry
    start = '(' .. entry[1]
    for _, field in ipairs(entry[2]) do bytes = bytes + #field end
    if bytes >= max_bytes then return {1, out} end
  end
  if #page < want then break end
  -- The next sub-page: as many entries as fit the bytes left at the size seen so far (1 to 16).
  local fit = math.floor((max_bytes - bytes) * #out / math.max(bytes, 1))
  want = math.max(1, math.min(16, fit, max_count - #out))
end
return {0, out}
";
/// Frames taken from the hub's history at once while catching up.
const CATCH_UP_PAGE: usize = 256;

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
                let close = session.close(Some(reason));
                tokio::time::timeout(client_timeout(&state), close)
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
async fn command(
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

/// Why a session ended: `Some(reason)` when the server should send a close frame.
type End = Option<CloseReason>;

fn close(code: CloseCode, why: &str) -> End {
    Some(CloseReason {
        code,
        description: Some(why.to_owned()),
    })
}

/// What a session starts from: where it resumes, who it is (for the replay share), what it subscribed
/// to, and when its token expires.
struct Opening<'a> {
    since: Option<StreamId>,
    addr: Option<IpAddr>,
    /// What the credential may subscribe to (for `subscribe` frames).
    may: &'a service::settings::Channels,
    /// A token's `exp` (Unix seconds): the socket is closed with 4001 when it passes.
    expires: Option<u64>,
}

/// Resolves when a token's expiry passes; never for a session without one.
async fn expired(expiry: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match expiry {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

/// How long until `exp` (Unix seconds); zero once it has passed.
fn until(exp: u64) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(exp).saturating_sub(now)
}

async fn serve(
    state: &AppState,
    mut session: Outlet,
    mut messages: MessageStream,
    mut sub: Subscription,
    opening: Opening<'_>,
    subs: &mut Subs,
) -> End {
    let Opening {
        since,
        addr,
        may,
        expires,
    } = opening;
    // The start (hello, or a replay from `since`) runs once: boxed, so its state is not part of every
    // idle session's future.
    let mut last_sent = match Box::pin(start(state, &mut session, &sub, since, addr, subs)).await {
        Ok(position) => position,
        Err(end) => return end,
    };
    let live = state.metrics.frames.with_label_values(&["live"]);
    let timeout = client_timeout(state);
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL.min(timeout / 3));
    let mut last_heard = Instant::now();
    // Made once, not per loop turn: at a thousand frames a second per client, re-creating these
    // futures on every turn was a sixth of the gateway's CPU.
    let stopping = state.stop.cancelled();
    tokio::pin!(stopping);
    // Boxed and only for tokens: an API key's session carries no timer.
    let mut expiry = expires.map(|exp| Box::pin(tokio::time::sleep(until(exp))));
    loop {
        tokio::select! {
            biased;
            () = &mut stopping => return close(CloseCode::Away, "server shutting down"),
            () = expired(&mut expiry) => {
                return close(CloseCode::Other(TOKEN_EXPIRED), "token expired; reconnect with a new one");
            }
            frame = sub.recv() => {
                let Some(frame) = frame else {
                    // Behind: everything queued has been sent; the rest comes from the history.
                    // Boxed, as the replay is: a rare path whose state need not sit in every idle
                    // session's future.
                    match Box::pin(catch_up(state, &mut session, &sub, &mut last_sent, addr, subs)).await {
                        Ok(again) => sub = again,
                        Err(end) => return end,
                    }
                    continue;
                };
                // Send it and whatever else is already queued, without another turn of the select.
                // The burst is counted once and its delay observed once, for its newest frame (the
                // latest-accepted, so the burst's largest delay but for clock noise): per frame, at a
                // million frames a second, the clock read and the histogram were a gateway cost of
                // their own.
                let mut next = Some(frame);
                let mut burst: Option<Arc<Frame>> = None;
                let mut sent = 0;
                while let Some(frame) = next.take() {
                    if frame.stream_id > last_sent && subs.accepts(&frame.channel, frame.stream_id) {
                        let text = Out::Text(frame.text.clone());
                        if let Err(end) = send(state, &mut session, &sub, text).await {
                            return end;
                        }
                        sent += 1;
                        last_sent = frame.stream_id;
                        burst = Some(frame);
                    } // else: already sent during the replay
                    next = sub.try_recv();
                }
                if let Some(newest) = burst {
                    live.inc_by(sent);
                    delivered(state, &newest);
                }
            }
            message = messages.next() => match message {
                Some(Ok(Message::Ping(bytes))) => {
                    last_heard = Instant::now();
                    // Bounded like a frame: a client that sends pings but never reads the pongs is closed.
                    if let Err(end) = send(state, &mut session, &sub, Out::Pong(bytes)).await {
                        return end;
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    last_heard = Instant::now();
                    let asked = command(state, &mut session, &sub, subs, (may, addr), &text);
                    if let Err(end) = Box::pin(asked).await {
                        return end;
                    }
                }
                Some(Ok(Message::Close(_))) => return close(CloseCode::Normal, "bye"),
                Some(Ok(_)) => last_heard = Instant::now(),
                Some(Err(_)) | None => return None,
            },
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > timeout {
                    return close(CloseCode::Policy, "no answer to pings");
                }
                if let Err(end) = send(state, &mut session, &sub, Out::Ping).await {
                    return end;
                }
            }
        }
    }
}

/// A session's start: the `hello` frame, or the replay of what came after `since`. Returns the position
/// live frames continue after.
async fn start(
    state: &AppState,
    session: &mut Outlet,
    sub: &Subscription,
    since: Option<StreamId>,
    addr: Option<IpAddr>,
    subs: &Subs,
) -> Result<StreamId, End> {
    match since {
        Some(since) => {
            // A bounded number of replays at once, a share of them per address; one that cannot start
            // within CLIENT_TIMEOUT_MS is told to come back rather than queue without end.
            let permit = state.replays.take(addr, client_timeout(state)).await;
            let Some(permit) = permit else {
                return Err(close(
                    CloseCode::Again,
                    "too many replays; reconnect with since",
                ));
            };
            state.seams.pass(Seam::BeforeReplay).await;
            // `replay` returns the position the live frames continue after: the last entry sent, `since`
            // itself, or — for a `since` past the newest entry — the newest entry, which its `hello` named.
            // Boxed: the replay's state lives on the heap while it runs, not in every idle session's future.
            let position = Box::pin(replay(state, session, sub, since, subs, None)).await;
            // The turn is given back once the replay ends, before the live frames start.
            drop(permit);
            let position = position?;
            state.seams.pass(Seam::BeforeLive).await;
            Ok(position)
        }
        None => {
            let hello = Out::Text(frames::hello(sub.position));
            send(state, session, sub, hello).await?;
            Ok(sub.position)
        }
    }
}

/// Observes how long after its acceptance a message frame was written.
fn delivered(state: &AppState, frame: &Frame) {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let delay = (now_us - frame.received_at_us).max(0) as f64 / 1e6;
    state.metrics.delivery_delay.observe(delay);
}

/// Brings a client that fell behind back to live: the frames it missed from the hub's history (or from
/// the stream, when the history no longer reaches back to them), then a new subscription that continues
/// exactly after the last frame sent. A client still behind after the catch-up window is closed with 1013.
async fn catch_up(
    state: &AppState,
    session: &mut Outlet,
    behind: &Subscription,
    last_sent: &mut StreamId,
    addr: Option<IpAddr>,
    subs: &Subs,
) -> Result<Subscription, End> {
    let window = catch_up_window(state);
    let live = state.metrics.frames.with_label_values(&["live"]);
    loop {
        if behind.behind.elapsed() > window {
            return Err(too_slow(state));
        }
        match state.hub.catch_up(behind.id, *last_sent, CATCH_UP_PAGE) {
            CatchUp::Live(again) => return Ok(again),
            CatchUp::Frames(frames) => {
                for frame in &frames {
                    // Past every frame taken, sent or not: the next page starts after it.
                    *last_sent = frame.stream_id;
                    if subs.accepts(&frame.channel, frame.stream_id) {
                        send(state, session, behind, Out::Text(frame.text.clone())).await?;
                    }
                }
                live.inc_by(frames.len() as u64);
                if let Some(newest) = frames.last() {
                    delivered(state, newest);
                }
            }
            CatchUp::Evicted => {
                let left = window.saturating_sub(behind.behind.elapsed());
                let Some(_permit) = state.replays.take(addr, left).await else {
                    return Err(too_slow(state));
                };
                *last_sent =
                    Box::pin(replay(state, session, behind, *last_sent, subs, None)).await?;
            }
        }
    }
}

fn too_slow(state: &AppState) -> End {
    state.metrics.slow_clients.inc();
    close(
        CloseCode::Again,
        "too slow: still behind after WS_CATCH_UP_MS; reconnect with since",
    )
}

/// `WS_CATCH_UP_MS`, but at most half of `CLIENT_TIMEOUT_MS`, so that a client that stopped reading is
/// told it was too slow before its socket is given up for silent.
fn catch_up_window(state: &AppState) -> Duration {
    Duration::from_millis(state.settings.ws_catch_up_ms).min(client_timeout(state) / 2)
}

/// `CLIENT_TIMEOUT_MS`: how long a client may go without reading (or saying anything) before it is closed.
fn client_timeout(state: &AppState) -> Duration {
    Duration::from_millis(state.settings.client_timeout_ms)
}

/// How long a client gets to read a close frame before its socket is shut.
fn close_linger(state: &AppState) -> Duration {
    (client_timeout(state) / 4).min(Duration::from_secs(1))
}

/// actix-ws's session of one client, and how far the socket has got: actix-ws queues 32 frames
/// whatever their size (32 MiB with 1 MiB messages, pinned per socket), so the gateway hands it a text
/// frame only while what it has handed and the socket has not yet written stays within [`HANDED_BYTES`]
/// (a frame larger than that still goes to a client that has taken everything).
struct Outlet {
    session: Session,
    /// What the connection has written, from `base` on; `None` outside `service::http::serve`.
    written: Option<(service::connection::Written, u64)>,
    /// Bytes of text frames handed to actix-ws.
    handed: u64,
}

impl Outlet {
    fn new(session: Session, written: Option<service::connection::Written>) -> Self {
        Self {
            session,
            written: written.map(|w| {
                let base = w.get();
                (w, base)
            }),
            handed: 0,
        }
    }

    fn has_room(&self, len: usize, limit: usize) -> bool {
        let Some((written, base)) = &self.written else {
            return true;
        };
        let in_flight = self
            .handed
            .saturating_sub(written.get().saturating_sub(*base));
        in_flight == 0 || in_flight + len as u64 <= limit as u64
    }

    /// Waits until a frame of `len` bytes fits (the caller bounds the wait).
    async fn room_for(&self, len: usize, limit: usize) {
        while !self.has_room(len, limit) {
            tokio::time::sleep(ROOM_POLL).await;
        }
    }
}

/// Bytes of frames handed to actix-ws that the socket has not written yet, per socket (one frame larger
/// than this still goes to a socket that has written everything). actix encodes each socket's frames
/// into a buffer of its own, so this is memory per socket, unlike the hub's queue of shared frames:
/// the 1 MiB attack mix measured 480 MiB of gateway RSS with `WS_SEND_QUEUE_BYTES` (8 MiB) here.
const HANDED_BYTES: usize = 256 * 1024;

/// How often a send waiting for the socket to take what was handed to actix-ws looks again.
const ROOM_POLL: Duration = Duration::from_millis(5);

/// What the server writes to a client.
enum Out {
    Text(bytestring::ByteString),
    Ping,
    Pong(bytes::Bytes),
}

/// Writes to the client. A client that does not read would hold this forever, so it gives up when the
/// client has been behind for the catch-up window (1013), when the gateway stops, or after
/// `CLIENT_TIMEOUT_MS` without progress. A client that has not read for that long gets no close frame
/// (it would not read that either): the session ends, and the socket with it.
async fn send(
    state: &AppState,
    session: &mut Outlet,
    sub: &Subscription,
    out: Out,
) -> Result<(), End> {
    let limit = HANDED_BYTES;
    let sent = async {
        match out {
            Out::Text(text) => {
                let len = text.len();
                if !session.has_room(len, limit) {
                    session.room_for(len, limit).await;
                }
                session.session.text(text).await?;
                session.handed += len as u64;
                Ok(())
            }
            Out::Ping => session.session.ping(b"").await,
            Out::Pong(bytes) => session.session.pong(&bytes).await,
        }
    };
    tokio::pin!(sent);
    // Almost always there is room in the session's queue: done without arming any timer.
    if let Some(sent) = futures_util::FutureExt::now_or_never(&mut sent) {
        return sent.map_err(|_| None);
    }
    // The slow path (a full queue) boxed: its timers would otherwise take room in every session's future.
    Box::pin(async {
        tokio::select! {
            biased;
            () = sub.behind.longer_than(catch_up_window(state)) => Err(too_slow(state)),
            () = state.stop.cancelled() => Err(close(CloseCode::Away, "server shutting down")),
            () = tokio::time::sleep(client_timeout(state)) => Err(None),
            sent = &mut sent => sent.map_err(|_| None),
        }
    })
    .await
}

/// Replays the history after `since`, with a `gap` frame wherever part of it was trimmed first. Returns
/// the position live frames continue after.
///
/// Each page is read in one `MULTI` with an `XINFO STREAM`, so the trim check and the page see the same
/// stream: the persister's trim may pass the cursor at any moment — before the first page, or between
/// two pages while a send waits on a slow client — and the check is made again for every page, never
/// from a stale `oldest`:
/// - on the first page the cursor is `since`, which need not be an entry: entries after it are gone only
///   if anything was ever removed (`entries-added` > `length`) and `since` is below the oldest entry held
///   (and below the newest ever written; Redis 7.0 does not move `max-deleted-entry-id` on trims);
/// - on later pages the cursor is the last entry sent, which the stream held: if the oldest entry is now
///   above it, the trim passed it, and whatever lay between may be gone. The gap frame names the cursor,
///   and the client's fill from `GET /messages?after=<cursor>` finds whatever there was (nothing, when the
///   trim took only entries already sent).
///
/// The cursor advances by the raw id of the last entry in the page, whether or not it parses as a
/// [`StreamId`] (a foreign `XADD` can write `18446744073709551615-0`, above what the API accepts): a page
/// is never read twice.
async fn replay(
    state: &AppState,
    session: &mut Outlet,
    sub: &Subscription,
    since: StreamId,
    subs: &Subs,
    until: Option<StreamId>,
) -> Result<StreamId, End> {
    let unavailable = |e: redis::RedisError| {
        log::warn!("replay for a client failed: {e}");
        close(CloseCode::Again, "stream unavailable; reconnect with since")
    };
    let mut redis = state.replay_redis.clone();
    let key = &state.settings.stream_key;
    // `(id` for XRANGE, and the last position the client has (for gap frames).
    let mut start = format!("({since}");
    let mut position = since;
    let mut first_page = true;
    loop {
        let (info, (cut, page)): (HashMap<String, Value>, (u8, Value)) = match redis::pipe()
            .atomic()
            .cmd("XINFO")
            .arg("STREAM")
            .arg(key)
            .cmd("EVAL")
            .arg(REPLAY_PAGE_SCRIPT)
            .arg(1)
            .arg(key)
            .arg(&start)
            .arg(REPLAY_PAGE)
            .arg(REPLAY_PAGE_BYTES)
            .query_async(&mut redis)
            .await
        {
            Ok(reply) => reply,
            // No stream (yet): `since` is after the newest entry there is; the client starts live from
            // the beginning, told so.
            Err(e) if e.to_string().contains("no such key") => {
                let newest = if first_page {
                    StreamId::new(0, 0)
                } else {
                    position
                };
                send(state, session, sub, Out::Text(frames::hello(newest))).await?;
                return Ok(newest);
            }
            Err(e) => return Err(unavailable(e)),
        };
        let info = stream_info(&info);
        if first_page {
            first_page = false;
            // A `since` after the newest entry is taken as the newest entry (contract v1.1): the client
            // starts live, told where. Without this, every live frame up to `since` would be dropped as
            // already sent, silently.
            let newest = info.last.unwrap_or(info.last_generated);
            if since > newest {
                send(state, session, sub, Out::Text(frames::hello(newest))).await?;
                return Ok(newest);
            }
        }
        let oldest = info.first.unwrap_or(StreamId::new(
            info.last_generated.ms,
            info.last_generated.seq.saturating_add(1),
        ));
        let trimmed_past_cursor = if position == since {
            info.entries_added > info.length && since < oldest && since < info.last_generated
        } else {
            position < oldest
        };
        let page = entry_list(page);
        if trimmed_past_cursor && !page.is_empty() {
            // What the stream no longer holds is in Postgres: sent from there, up to the stream's
            // oldest entry. Only when Postgres cannot say is the client told of a gap.
            // A subscription's replay stops at its subscription's position: the rest is live.
            let stored_until = match until {
                Some(u) if u < oldest => StreamId::new(u.ms, u.seq.saturating_add(1)),
                _ => oldest,
            };
            match Box::pin(replay_stored(
                state,
                session,
                sub,
                subs,
                position,
                stored_until,
            ))
            .await
            {
                Ok(Some(last)) => position = last,
                Ok(None) => {}
                Err(Stored::Sending(end)) => return Err(end),
                Err(Stored::Unavailable(e)) => {
                    log::warn!("replaying from Postgres failed, sending a gap instead: {e:#}");
                    send(
                        state,
                        session,
                        sub,
                        Out::Text(frames::gap(position, oldest, subs.label.as_ref())),
                    )
                    .await?;
                    state.metrics.frames.with_label_values(&["gap"]).inc();
                }
            }
        }
        let count = page.len();
        if let Some(newest) = page.last() {
            start = format!("({}", newest.id);
        }
        for frame in to_frames(&page) {
            if until.is_some_and(|u| frame.stream_id > u) {
                return Ok(position); // the subscription's live frames go on from here
            }
            if !subs.accepts(&frame.channel, frame.stream_id) {
                // Not this socket's: passed over, but the replay's position moves past it.
                position = frame.stream_id;
                continue;
            }
            send(state, session, sub, Out::Text(frame.text.clone())).await?;
            state.metrics.frames.with_label_values(&["replay"]).inc();
            delivered(state, &frame);
            position = frame.stream_id;
        }
        if count < REPLAY_PAGE && cut == 0 {
            return Ok(position);
        }
    }
}

/// Why a replay from Postgres stopped.
enum Stored {
    /// Postgres could not be read: the caller falls back to a `gap` frame.
    Unavailable(anyhow::Error),
    /// Sending to the client ended the session.
    Sending(End),
}

/// Sends the stored messages after `since` and before `until` (the stream's oldest entry) that the
/// socket subscribed to; returns the last position read, if any. When `HISTORY_RETENTION` has deleted
/// messages after `since`, a `gap` frame says so first, naming the oldest message still held.
async fn replay_stored(
    state: &AppState,
    session: &mut Outlet,
    sub: &Subscription,
    subs: &Subs,
    since: StreamId,
    until: StreamId,
) -> Result<Option<StreamId>, Stored> {
    let (mut cursor, mut last) = (since, None);
    let horizon = crate::history::horizon(&state.db)
        .await
        .map_err(Stored::Unavailable)?;
    let mut gap = horizon.filter(|h| since < *h).map(|h| {
        cursor = h;
        last = Some(h);
        since
    });
    loop {
        let page = crate::history::page(&state.db, &subs.filter, cursor, until)
            .await
            .map_err(Stored::Unavailable)?;
        if let Some(gap_since) = gap.take() {
            // The oldest message held after the deleted ones: this page's first, or the stream's.
            let oldest = page.frames.first().map_or(until, |f| f.stream_id);
            let gap = frames::gap(gap_since, oldest, subs.label.as_ref());
            send(state, session, sub, Out::Text(gap))
                .await
                .map_err(Stored::Sending)?;
            state.metrics.frames.with_label_values(&["gap"]).inc();
        }
        for frame in page.frames {
            if !subs.accepts(&frame.channel, frame.stream_id) {
                continue;
            }
            send(state, session, sub, Out::Text(frame.text))
                .await
                .map_err(Stored::Sending)?;
            state.metrics.frames.with_label_values(&["replay"]).inc();
        }
        if let Some(read) = page.last {
            cursor = read;
            last = Some(read);
        }
        if !page.more {
            return Ok(last);
        }
    }
}

struct StreamInfo {
    first: Option<StreamId>,
    last: Option<StreamId>,
    last_generated: StreamId,
    length: u64,
    entries_added: u64,
}

fn int_of(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::Int(n)) => (*n).max(0) as u64,
        _ => 0,
    }
}

/// The parts of an `XINFO STREAM` reply the replay needs; a missing stream reads as an empty one.
fn stream_info(map: &HashMap<String, Value>) -> StreamInfo {
    let id_of = |v: Option<&Value>| -> Option<StreamId> {
        match v? {
            Value::BulkString(b) => reply_id(std::str::from_utf8(b).ok()?),
            Value::SimpleString(s) => reply_id(s),
            // `first-entry` is `[id, [field, value, …]]`.
            Value::Array(items) => match items.first()? {
                Value::BulkString(b) => reply_id(std::str::from_utf8(b).ok()?),
                _ => None,
            },
            _ => None,
        }
    };
    StreamInfo {
        first: id_of(map.get("first-entry")),
        last: id_of(map.get("last-entry")),
        last_generated: id_of(map.get("last-generated-id")).unwrap_or(StreamId::new(0, 0)),
        length: int_of(map.get("length")),
        entries_added: int_of(map.get("entries-added")),
    }
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
