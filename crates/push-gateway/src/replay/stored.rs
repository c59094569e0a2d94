//! The part of a replay that the stream no longer holds, from Postgres: page after page of stored
//! messages, retried for [`HISTORY_WAIT`] while Postgres is away, then an `error` frame (503) and 1013,
//! never a `gap` for messages that exist.

use std::time::{Duration, Instant};

use actix_ws::CloseCode;
use model::StreamId;

use crate::ending::{close, End};
use crate::frames;
use crate::hub::Subscription;
use crate::outlet::{send, Out, Outlet};
use crate::routing::Subs;
use crate::state::AppState;
use crate::test_hooks::Seam;

/// Why a replay from Postgres stopped.
enum Stored {
    /// Postgres could not be read: tried again until [`HISTORY_WAIT`] has passed.
    Unavailable(anyhow::Error),
    /// Sending to the client ended the session.
    Sending(End),
}

/// How long a replay waits for Postgres to answer, in all, before it tells the client the history is
/// unavailable. Each try waits up to [`history::POOL_WAIT`](crate::history::POOL_WAIT) for a connection.
pub(crate) const HISTORY_WAIT: Duration = Duration::from_secs(6);
/// The pause between two tries.
const HISTORY_RETRY: Duration = Duration::from_millis(500);

/// Sends the stored messages after `since` and before `until` (the stream's oldest entry) that the
/// socket subscribed to; returns the last position read, if any.
///
/// A Postgres that is away is tried again, from the last message sent, for [`HISTORY_WAIT`]. Past that
/// the client gets an `error` frame (503) and the socket closes with 1013: the messages are not gone,
/// so a `gap` would be a lie, and going on without them would skip them. The client reconnects with
/// `since` (relay.js does, with its backoff) and resumes where it stopped.
pub(super) async fn replay_stored(
    state: &AppState,
    session: &mut Outlet,
    sub: &Subscription,
    subs: &Subs,
    since: StreamId,
    until: StreamId,
) -> Result<Option<StreamId>, End> {
    let mut read = Read {
        cursor: since,
        last: None,
    };
    // The wait starts at a failure, and starts over once a retry has sent something: a long replay that
    // meets a short outage late gets its HISTORY_WAIT too.
    let mut waiting: Option<(Instant, Option<StreamId>)> = None;
    loop {
        match stored_pages(state, session, sub, subs, &mut read, until).await {
            Ok(()) => return Ok(read.last),
            Err(Stored::Sending(end)) => return Err(end),
            Err(Stored::Unavailable(e)) if within_wait(&mut waiting, read.last) => {
                log::warn!("replaying from Postgres failed, trying again: {e:#}");
                tokio::time::sleep(HISTORY_RETRY).await;
            }
            Err(Stored::Unavailable(e)) => {
                log::warn!("replaying from Postgres failed for {HISTORY_WAIT:?}, closing: {e:#}");
                let title = format!(
                    "history unavailable: the store did not answer within {} s; reconnect with since",
                    HISTORY_WAIT.as_secs()
                );
                let label = subs.label.as_ref().map(ToString::to_string);
                let frame = frames::error(label.as_deref(), 503, title);
                send(state, session, sub, Out::Text(frame)).await?;
                return Err(close(
                    CloseCode::Again,
                    "history unavailable; reconnect with since",
                ));
            }
        }
    }
}

/// Whether a replay that just failed may try again: within [`HISTORY_WAIT`] of the first failure since
/// it last sent something (`last`, the position it had reached).
fn within_wait(waiting: &mut Option<(Instant, Option<StreamId>)>, last: Option<StreamId>) -> bool {
    let since = match *waiting {
        Some((since, at)) if at == last => since,
        _ => Instant::now(),
    };
    *waiting = Some((since, last));
    Instant::now() + HISTORY_RETRY < since + HISTORY_WAIT
}

/// How far a replay from Postgres got: where the next page starts, and the last position read.
struct Read {
    cursor: StreamId,
    last: Option<StreamId>,
}

/// The pages of [`replay_stored`] from `read.cursor` on, advancing `read` as they are sent. When
/// `HISTORY_RETENTION` has deleted messages after the cursor, a `gap` frame says so first, naming the
/// oldest message still held.
async fn stored_pages(
    state: &AppState,
    session: &mut Outlet,
    sub: &Subscription,
    subs: &Subs,
    read: &mut Read,
    until: StreamId,
) -> Result<(), Stored> {
    let horizon = crate::history::horizon(&state.db)
        .await
        .map_err(Stored::Unavailable)?;
    state.seams.pass(Seam::BeforeHistoryPage).await;
    // Deleted history after the cursor: the pages start at the horizon, and `read` moves there only once
    // the gap frame is sent, so a retry after a failure before it computes the gap again.
    let mut gap = horizon
        .filter(|h| read.cursor < *h)
        .map(|h| (read.cursor, h));
    // The next page is read while this one is sent: read, then send, one after the other, left the
    // machine idle 40% of a 1M-message resume (perf: Postgres and the gateway taking turns).
    let fetch = |after: StreamId, rows: i64| {
        let (db, filter) = (state.db.clone(), subs.filter.clone());
        // Aborted with the replay (a session that ends mid-page leaves no read behind it).
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            crate::history::page(&db, &filter, after, until, rows).await
        }))
    };
    let replayed = state.metrics.frames.with_label_values(&["replay"]);
    let mut pending = fetch(
        gap.map_or(read.cursor, |(_, h)| h),
        crate::history::FIRST_PAGE_ROWS,
    );
    loop {
        let page = pending
            .await
            .map_err(|e| Stored::Unavailable(e.into()))?
            .map_err(Stored::Unavailable)?;
        if let Some((gap_since, horizon)) = gap.take() {
            // The oldest message held after the deleted ones: this page's first, or the stream's.
            let oldest = page.frames.first().map_or(until, |f| f.stream_id);
            let gap = frames::gap(gap_since, oldest, subs.label.as_ref());
            send(state, session, sub, Out::Text(gap))
                .await
                .map_err(Stored::Sending)?;
            state.metrics.frames.with_label_values(&["gap"]).inc();
            read.cursor = horizon;
            read.last = Some(horizon);
        }
        let next = page
            .more
            .then(|| fetch(page.last.unwrap_or(read.cursor), page.next_rows));
        for frame in page.frames {
            if !subs.accepts(&frame.channel, frame.stream_id) {
                continue;
            }
            let at = frame.stream_id;
            send(state, session, sub, Out::Text(frame.text))
                .await
                .map_err(Stored::Sending)?;
            replayed.inc();
            // A retry after a failure mid-page starts after the last message sent.
            read.cursor = at;
            read.last = Some(at);
        }
        if let Some(last) = page.last {
            read.cursor = last;
            read.last = Some(last);
        }
        match next {
            Some(next) => pending = next,
            None => return Ok(()),
        }
    }
}
