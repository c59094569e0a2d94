//! The one stream reader of a gateway process: plain `XREAD BLOCK` (no consumer group, so every gateway
//! replica sees every entry), each entry encoded once and handed to the hub.
//!
//! It starts at the stream's newest entry: what came before is history, which a client asks for with
//! `?since=`. After a Redis outage it resumes after the last entry it saw, so live clients miss nothing
//! that reached the stream.

use std::sync::Arc;
use std::time::Duration;

use model::redis_stream::{parse_reply_id, read_reply, RawEntry};
use model::StreamId;
use redis::Value;
use service::redis::raw::{PooledRawConn, StreamReads};
use service::redis::BlockingConn;
use service::Backoff;
use tokio_util::sync::CancellationToken;

use crate::frames;
use crate::hub::{Frame, Hub};
use crate::metrics::Metrics;

/// Entries read per `XREAD` at most. With entries up to `MAX_BODY_BYTES` (1 MiB by default) a fixed
/// `COUNT 1000` could bring a gigabyte back in one reply, so the count adapts to what the stream holds.
const READ_COUNT_MAX: usize = 128;
/// The bytes one `XREAD` reply aims at: the next `COUNT` is this over the largest frame of the last read.
/// (The largest so far, not the average: one large entry among small ones is what would blow a budget.)
const READ_BUDGET_BYTES: usize = 4 << 20;
/// How long one `XREAD` blocks; also how quickly the reader notices a stop.
pub const READ_BLOCK: Duration = Duration::from_millis(1000);

/// How the reader's raw connection shows in Redis' `CLIENT LIST`.
pub const RAW_READS_NAME: &str = "relay-gateway-reads";

pub async fn run(
    stream_key: String,
    reads: StreamReads,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new();
    let mut last = loop {
        match newest_id(&reads.blocking, &stream_key).await {
            Ok(id) => break id,
            Err(e) => {
                log::warn!("cannot read `{stream_key}` yet (retrying): {e}");
                if !backoff.wait(&stop).await {
                    return;
                }
            }
        }
    };
    log::info!("reading `{stream_key}` live after {last}");
    // The reader keeps its connection between reads: taking it from the pool each time would add the
    // pool's health-check round trip between an entry's arrival and the next XREAD.
    let mut conn = None;
    let mut count = READ_COUNT_MAX;
    hub.start_at(reply_id(&last).unwrap_or(StreamId::new(0, 0)));
    loop {
        let read = tokio::select! {
            () = stop.cancelled() => return,
            read = read_after(&reads, &mut conn, &stream_key, &last, count) => read,
        };
        let (frames, newest) = match read {
            Ok(read) => read,
            Err(e) => {
                conn = None; // a fresh one from the pool next time
                log::warn!("XREAD on `{stream_key}` failed (retrying): {e}");
                if !backoff.wait(&stop).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        // Advance past every entry read, including ones that did not decode (else they are read again).
        if let Some(newest) = newest {
            last = newest;
        }
        count = next_count(&frames);
        if !frames.is_empty() {
            metrics.entries_read.inc_by(frames.len() as u64);
            let fell_behind = hub.publish(&frames);
            metrics.catch_ups.inc_by(fell_behind as u64);
        }
    }
}

/// How many entries the next `XREAD` asks for, so its reply stays near [`READ_BUDGET_BYTES`].
fn next_count(frames: &[Arc<Frame>]) -> usize {
    let largest = frames.iter().map(|f| f.text.len()).max().unwrap_or(0);
    (READ_BUDGET_BYTES / largest.max(1)).clamp(1, READ_COUNT_MAX)
}

/// The id of the newest entry, or `0-0` for an empty (or missing) stream.
async fn newest_id(reads: &service::redis::BlockingPool, key: &str) -> anyhow::Result<String> {
    let mut conn = reads.get().await?;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await?;
    Ok(reply
        .ids
        .first()
        .map_or_else(|| "0-0".to_owned(), |e| e.id.clone()))
}

/// The reader's connection, kept between reads: a raw one, its reply read by `model::resp` (one task
/// hop less between the reply and the hub than redis-rs' connection driver), or, on a cluster or over
/// TLS, a pooled one.
enum Held {
    Raw(PooledRawConn),
    Pooled(BlockingConn),
}

/// The frames of the entries after `after`, and the id of the newest entry read.
async fn read_after(
    reads: &StreamReads,
    held: &mut Option<Held>,
    key: &str,
    after: &str,
    count: usize,
) -> anyhow::Result<(Vec<Arc<Frame>>, Option<String>)> {
    let conn = match held {
        Some(conn) => conn,
        None => held.insert(match &reads.raw {
            Some(raw) => Held::Raw(raw.get().await.map_err(|e| anyhow::anyhow!("{e}"))?),
            None => Held::Pooled(reads.blocking.get().await?),
        }),
    };
    let mut xread = redis::cmd("XREAD");
    xread
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(READ_BLOCK.as_millis() as u64)
        .arg("STREAMS")
        .arg(key)
        .arg(after);
    let entries = match conn {
        Held::Raw(conn) => model::resp::read_reply(conn.request(&xread, reads.timeout).await?)?,
        Held::Pooled(conn) => read_reply(xread.query_async::<Value>(conn).await?),
    };
    let newest = entries.last().map(|e| e.id.clone());
    Ok((
        to_frames(&entries).into_iter().map(Arc::new).collect(),
        newest,
    ))
}

/// Frames for entries of an `XREAD`/`XRANGE` reply. An entry that does not decode is skipped here (the
/// persister dead-letters it).
pub fn to_frames(entries: &[RawEntry]) -> Vec<Frame> {
    let mut frames = Vec::with_capacity(entries.len());
    for e in entries {
        match e.decode() {
            (Ok(stream_id), Ok(entry)) => {
                log::debug!(
                    "pushing message {} at {stream_id} request_id={}",
                    entry.id,
                    entry.request_id.as_deref().unwrap_or("-")
                );
                frames.push(frames::message(stream_id, entry))
            }
            (_, Err(err)) | (Err(err), _) => log::warn!("entry {} not pushed: {err}", e.id),
        }
    }
    frames
}

/// The stream id of a reply entry (Redis only returns well-formed ones).
pub fn reply_id(id: &str) -> Option<StreamId> {
    parse_reply_id(id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: usize) -> Arc<Frame> {
        Arc::new(Frame {
            channel: Arc::from("default"),
            stream_id: StreamId::new(1, 0),
            received_at_us: 0,
            text: "x".repeat(bytes).into(),
        })
    }

    #[test]
    fn the_read_count_shrinks_with_the_largest_entry_and_recovers_when_they_are_small() {
        assert_eq!(next_count(&[]), READ_COUNT_MAX);
        assert_eq!(next_count(&[frame(200), frame(100)]), READ_COUNT_MAX);
        assert_eq!(next_count(&[frame(200), frame(1 << 20)]), 4);
        assert_eq!(next_count(&[frame(16 << 20)]), 1);
    }
}
