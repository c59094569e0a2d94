//! Replay from Postgres: what a resuming client missed that the stream no longer holds. The persister
//! trims only what it has stored, so every entry trimmed from the stream is in Postgres (unless
//! `HISTORY_RETENTION` deleted it since): a replay reads the rows after the client's position and before
//! the stream's oldest entry, then goes on with the stream, then live — one sequence, no gap.
//!
//! The gateway's pool is small (two connections) and its statements time out, so a replay of years
//! holds no more than two pages at a time (the one being sent and the next); a Postgres that is away is waited for, briefly, and then the
//! client is told so and closed (`replay::stored::HISTORY_WAIT`), never sent a `gap` for messages that exist.

use std::time::Duration;

use bytestring::ByteString;
use model::StreamId;
use store::read::Window;
use store::PgPool;

use crate::hub::Frame;
use crate::routing::Filter;

/// Rows read per page, at most. Each page costs a query (parsed and planned), a pool checkout (its
/// `SELECT 1`) and a trip to the blocking pool: a 1M-message resume took 2.32–2.57 s at 500 rows a page,
/// 1.60–1.73 s at 2,000 (10,000 measured no faster: small messages then fill `PAGE_BYTES` first).
const PAGE_ROWS: i64 = 2000;
/// Rows the first page of a replay asks for, before the size of a row is known.
pub const FIRST_PAGE_ROWS: i64 = 100;
/// A page ends after the row that takes its frames past this size (the same bound as a stream page).
const PAGE_BYTES: usize = 1024 * 1024;
/// A message frame's bytes besides its payload and channel (`type`, `id`, `stream_id`, `received_at`
/// and the keys: 169 with a 13-digit time and a 1-digit sequence), rounded up so the frame's buffer
/// is allocated once.
const ENVELOPE_BYTES: usize = 200;
/// Postgres connections of one gateway, for replays only.
pub const POOL_SIZE: u32 = 2;
/// How long a replay waits for one of them.
pub const POOL_WAIT: Duration = Duration::from_secs(2);

/// One page of stored messages after `after` and before `until`.
pub struct Page {
    /// Each message of the channels the filter takes, as a frame.
    pub frames: Vec<Frame>,
    /// The last row read (other channels' included), where the next page starts.
    pub last: Option<StreamId>,
    /// Whether rows may remain before `until`.
    pub more: bool,
    /// Rows the next page asks for: as many as fit [`PAGE_BYTES`] at this page's size per row, and one
    /// more, so that a page that stops at the bound leaves few rows unread (row by row, stopping a query
    /// early still drains its rows from libpq).
    pub next_rows: i64,
}

pub async fn page(
    db: &PgPool,
    filter: &Filter,
    after: StreamId,
    until: StreamId,
    rows: i64,
) -> anyhow::Result<Page> {
    let db = db.clone();
    let filter = filter.clone();
    tokio::task::spawn_blocking(move || {
        let mut conn = db.get()?;
        // One exact channel reads through its index; anything else reads the stream order and filters.
        let channel = match filter.patterns() {
            [model::ChannelPattern::Exact(name)] => Some(name.as_str().to_owned()),
            _ => None,
        };
        let window = Window {
            channel: channel.as_deref(),
            after: Some(after),
            below: Some(until),
        };
        let (mut frames, mut bytes, mut read, mut read_bytes, mut last) =
            (Vec::new(), 0, 0, 0, None);
        // Rows of one channel come in runs: each frame of a run shares its channel's name.
        let mut run: Option<std::sync::Arc<str>> = None;
        store::read::for_each(&mut conn, &window, rows, |row| {
            read += 1;
            read_bytes += row.payload.0.len() + row.channel.len() + ENVELOPE_BYTES;
            last = Some(row.stream_id());
            if filter.matches(&row.channel) {
                let mut text =
                    Vec::with_capacity(row.payload.0.len() + row.channel.len() + ENVELOPE_BYTES);
                text.extend_from_slice(b"{\"type\":\"message\",\"data\":");
                row.write_json(&mut text);
                text.push(b'}');
                bytes += text.len();
                // The row's JSON is built from checked UTF-8 (the payload column holds valid JSON).
                let text = String::from_utf8(text).unwrap_or_default();
                let channel = match &run {
                    Some(name) if **name == *row.channel => name.clone(),
                    _ => run
                        .insert(std::sync::Arc::from(row.channel.as_str()))
                        .clone(),
                };
                frames.push(Frame {
                    stream_id: row.stream_id(),
                    channel,
                    received_at_us: row.received_at.timestamp_micros(),
                    text: ByteString::from(text),
                });
            }
            bytes < PAGE_BYTES
        })?;
        Ok(Page {
            frames,
            last,
            more: read >= rows || bytes >= PAGE_BYTES,
            next_rows: store::read::rows_that_fit(read, read_bytes, PAGE_BYTES, PAGE_ROWS),
        })
    })
    .await?
}

/// The newest position `HISTORY_RETENTION` deleted, if any (see `store::retention::horizon`).
pub async fn horizon(db: &PgPool) -> anyhow::Result<Option<StreamId>> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut conn = db.get()?;
        Ok(store::retention::horizon(&mut conn)?)
    })
    .await?
}
