//! Replaying what a client missed: the stream's history after its position, in pages bounded in
//! entries and bytes, and what the stream no longer holds from Postgres (see `history`), with a `gap`
//! frame only for messages that are gone.

use std::collections::HashMap;

use actix_ws::CloseCode;
use model::redis_stream::{entry_list, RawEntry};
use model::StreamId;
use redis::Value;

use crate::ending::{close, End};
use crate::frames;
use crate::hub::Subscription;
use crate::outlet::{delivered, send, Out, Outlet};
use crate::reader::{reply_id, to_frames};
use crate::routing::Subs;
use crate::state::AppState;

mod stored;

use stored::replay_stored;

/// Entries per page while replaying, at most.
const REPLAY_PAGE: usize = 500;
/// A replay page ends after the entry that takes its fields past this many bytes, if it has not ended at
/// [`REPLAY_PAGE`] entries before: with entries of 1 MiB a page of 500 would be half a gibibyte per
/// replay, each held twice (the reply and its frames) while it is sent.
const REPLAY_PAGE_BYTES: usize = 1024 * 1024;
/// One replay page, read inside Redis so that it can end at a byte bound (`XRANGE` counts entries
/// only), with the stream's `XINFO STREAM` taken in the same step: `{info, cut, entries}`, `entries`
/// shaped as `XRANGE`'s reply, `cut` 1 when the byte bound ended it; nil when there is no stream
/// (`EXISTS` asks, rather than matching `XINFO`'s "no such key" text).
/// Sub-pages start at one entry and grow (to 16) only as far as the entries seen so far fit the bytes
/// left, so the script never copies much more than the page itself: 16 entries of 1 MiB at a time,
/// times 16 replays, kept Redis busy past `REDIS_TIMEOUT_MS`.
const REPLAY_PAGE_SCRIPT: &str = r"
local key, start = KEYS[1], ARGV[1]
if redis.call('EXISTS', key) == 0 then return false end
local info = redis.call('XINFO', 'STREAM', key)
local max_count, max_bytes = tonumber(ARGV[2]), tonumber(ARGV[3])
local out, bytes, want = {}, 0, 1
while #out < max_count do
  local page = redis.call('XRANGE', key, start, '+', 'COUNT', want)
  for _, entry in ipairs(page) do
    out[#out + 1] = entry
    start = '(' .. entry[1]
    for _, field in ipairs(entry[2]) do bytes = bytes + #field end
    if bytes >= max_bytes then return {info, 1, out} end
  end
  if #page < want then break end
  -- The next sub-page: as many entries as fit the bytes left at the size seen so far (1 to 16).
  local fit = math.floor((max_bytes - bytes) * #out / math.max(bytes, 1))
  want = math.max(1, math.min(16, fit, max_count - #out))
end
return {info, 0, out}
";

/// Replays the history after `since`, with a `gap` frame wherever part of it was trimmed first. Returns
/// the position live frames continue after.
///
/// Each page is read in one script with an `XINFO STREAM`, so the trim check and the page see the same
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
pub(crate) async fn replay(
    state: &AppState,
    session: &mut Outlet,
    sub: &Subscription,
    since: StreamId,
    subs: &Subs,
    until: Option<StreamId>,
) -> Result<StreamId, End> {
    // `(id` for XRANGE, and the last position the client has (for gap frames).
    let mut start = format!("({since}");
    let mut position = since;
    let mut first_page = true;
    loop {
        let Some((info, cut, page)) = read_page(state, &start).await? else {
            // No stream (yet): `since` is after the newest entry there is; the client starts live from
            // the beginning, told so.
            let newest = if first_page {
                StreamId::new(0, 0)
            } else {
                position
            };
            send(state, session, sub, Out::Text(frames::hello(newest))).await?;
            return Ok(newest);
        };
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
        let oldest = info.oldest();
        if info.trimmed_past(position, since) {
            // What the stream no longer holds is in Postgres: sent from there, up to the stream's
            // oldest entry. Only when Postgres cannot say is the client told of a gap.
            // A subscription's replay stops at its subscription's position: the rest is live.
            let stored_until = match until {
                Some(u) if u < oldest => StreamId::new(u.ms, u.seq.saturating_add(1)),
                _ => oldest,
            };
            let stored = Box::pin(replay_stored(
                state,
                session,
                sub,
                subs,
                position,
                stored_until,
            ))
            .await?;
            if let Some(last) = stored {
                position = last;
            }
        }
        let count = page.len();
        if let Some(newest) = page.last() {
            start = format!("({}", newest.id);
        }
        let past_until;
        (position, past_until) =
            send_page(state, session, sub, subs, &page, until, position).await?;
        if past_until {
            return Ok(position); // the subscription's live frames go on from here
        }
        if count < REPLAY_PAGE && cut == 0 {
            return Ok(position);
        }
    }
}

/// One page of the stream after `start` with the stream's state, from [`REPLAY_PAGE_SCRIPT`]: `None`
/// when there is no stream; the page's `cut` is 1 when its byte bound ended it.
async fn read_page(
    state: &AppState,
    start: &str,
) -> Result<Option<(StreamInfo, u8, Vec<RawEntry>)>, End> {
    let mut redis = state.replay_redis.clone();
    let page: Option<(HashMap<String, Value>, u8, Value)> = redis::cmd("EVAL")
        .arg(REPLAY_PAGE_SCRIPT)
        .arg(1)
        .arg(&state.settings.stream_key)
        .arg(start)
        .arg(REPLAY_PAGE)
        .arg(REPLAY_PAGE_BYTES)
        .query_async(&mut redis)
        .await
        .map_err(|e| {
            log::warn!("replay for a client failed: {e}");
            close(CloseCode::Again, "stream unavailable; reconnect with since")
        })?;
    Ok(page.map(|(info, cut, page)| (stream_info(&info), cut, entry_list(page))))
}

/// Sends the entries of `page` this socket subscribes to, from `position` on. Returns the position the
/// replay has reached, and whether it stopped at an entry past `until` (the subscription's live frames
/// go on from there).
async fn send_page(
    state: &AppState,
    session: &mut Outlet,
    sub: &Subscription,
    subs: &Subs,
    page: &[RawEntry],
    until: Option<StreamId>,
    mut position: StreamId,
) -> Result<(StreamId, bool), End> {
    for frame in to_frames(page) {
        if until.is_some_and(|u| frame.stream_id > u) {
            return Ok((position, true));
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
    Ok((position, false))
}

struct StreamInfo {
    first: Option<StreamId>,
    last: Option<StreamId>,
    last_generated: StreamId,
    length: u64,
    entries_added: u64,
}

impl StreamInfo {
    /// The oldest entry the stream holds, or just past the newest ever written when it is empty.
    fn oldest(&self) -> StreamId {
        self.first.unwrap_or(StreamId::new(
            self.last_generated.ms,
            self.last_generated.seq.saturating_add(1),
        ))
    }

    /// Whether a trim took entries after `position` that the client has not had (see [`replay`]): on
    /// the first page (`position` is still `since`, which need not be an entry) only if anything was
    /// ever removed and `since` is below the oldest entry held and the newest ever written; later, if
    /// the oldest entry is above the last one sent.
    fn trimmed_past(&self, position: StreamId, since: StreamId) -> bool {
        let oldest = self.oldest();
        if position == since {
            self.entries_added > self.length && since < oldest && since < self.last_generated
        } else {
            position < oldest
        }
    }
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
