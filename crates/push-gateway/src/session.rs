//! One WebSocket client's session: its start (hello, or a replay from `since`), the live loop and
//! catching up.
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
//! Everything the server writes goes through [`send`](crate::outlet::send) (`outlet.rs`). The
//! connection's slot is held by the socket itself (see `slots`), so it is free exactly when the socket is
//! gone.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_ws::{CloseCode, Message, MessageStream};
use futures_util::StreamExt;
use model::StreamId;

use crate::commands::command;
use crate::ending::{catch_up_window, client_timeout, close, may_shed, too_slow, End};
use crate::frames;
use crate::hub::{CatchUp, Frame, Subscription};
use crate::outlet::{delivered, send, Out, Outlet};
use crate::replay::replay;
use crate::routing::Subs;
use crate::state::AppState;
use crate::test_hooks::Seam;

/// The close code of a socket whose token's `exp` passed (the client library asks for a new token and
/// resumes).
pub const TOKEN_EXPIRED: u16 = 4001;

/// How often the server pings each client (more often when `CLIENT_TIMEOUT_MS` is under three times this,
/// so a silent client is noticed in time).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// Frames taken from the hub's history at once while catching up.
const CATCH_UP_PAGE: usize = 256;

/// What a session starts from: where it resumes, who it is (for the replay share), what it subscribed
/// to, and when its token expires.
pub(crate) struct Opening<'a> {
    pub(crate) since: Option<StreamId>,
    pub(crate) addr: Option<IpAddr>,
    /// What the credential may subscribe to (for `subscribe` frames).
    pub(crate) may: &'a service::settings::Channels,
    /// A token's `exp` (Unix seconds): the socket is closed with 4001 when it passes.
    pub(crate) expires: Option<u64>,
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

pub(crate) async fn serve(
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
                let burst = send_burst(state, &mut session, &mut sub, subs, frame, &mut last_sent, &live);
                if let Err(end) = burst.await {
                    return end;
                }
            }
            message = messages.next() => {
                let Some(Ok(message)) = message else {
                    return None;
                };
                if !matches!(message, Message::Close(_)) {
                    last_heard = Instant::now();
                }
                if let Err(end) = answer(state, &mut session, &sub, subs, (may, addr), message).await {
                    return end;
                }
            }
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

/// Sends `frame` and whatever else is already queued, without another turn of the session's select.
/// The burst is counted once and its delay observed once, for its newest frame (the latest-accepted, so
/// the burst's largest delay but for clock noise): per frame, at a million frames a second, the clock
/// read and the histogram were a gateway cost of their own.
async fn send_burst(
    state: &AppState,
    session: &mut Outlet,
    sub: &mut Subscription,
    subs: &Subs,
    frame: Arc<Frame>,
    last_sent: &mut StreamId,
    live: &service::metrics::prometheus::IntCounter,
) -> Result<(), End> {
    let mut next = Some(frame);
    let mut burst: Option<Arc<Frame>> = None;
    let mut sent = 0;
    while let Some(frame) = next.take() {
        if frame.stream_id > *last_sent && subs.accepts(&frame.channel, frame.stream_id) {
            send(state, session, &*sub, Out::Text(frame.text.clone())).await?;
            sent += 1;
            *last_sent = frame.stream_id;
            burst = Some(frame);
        } // else: already sent during the replay
        next = sub.try_recv();
    }
    if let Some(newest) = burst {
        live.inc_by(sent);
        delivered(state, &newest);
    }
    Ok(())
}

/// Answers what the client sent: a pong for a ping (bounded like a frame: a client that sends pings but
/// never reads the pongs is closed), a `subscribe`/`unsubscribe` command, or the end of the session.
async fn answer(
    state: &AppState,
    session: &mut Outlet,
    sub: &Subscription,
    subs: &mut Subs,
    (may, addr): (&service::settings::Channels, Option<IpAddr>),
    message: Message,
) -> Result<(), End> {
    match message {
        Message::Ping(bytes) => send(state, session, sub, Out::Pong(bytes)).await,
        Message::Text(text) => {
            Box::pin(command(state, session, sub, subs, (may, addr), &text)).await
        }
        Message::Close(_) => Err(close(CloseCode::Normal, "bye")),
        _ => Ok(()),
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
        // Past the window it is closed when overload allows (a few at a time), else it keeps catching up;
        // past CLIENT_TIMEOUT_MS it is closed whatever the ration, so a wait here always ends.
        let behind_for = behind.behind.elapsed();
        if behind_for > window && (may_shed(state) || behind_for > client_timeout(state)) {
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
                let wait = left.max(crate::shedding::STEP);
                let Some(_permit) = state.replays.take(addr, wait).await else {
                    continue; // past the window: closed above when its turn comes
                };
                *last_sent =
                    Box::pin(replay(state, session, behind, *last_sent, subs, None)).await?;
            }
        }
    }
}
