//! The Redis side of the persister: the consumer group, reading, acknowledging and dead-lettering.
//!
//! The protocol, in order of what can go wrong:
//! - The group is created at stream position `0`, not `$`: entries accepted before the first persister ever
//!   started are stored too (a 202 is a promise). `BUSYGROUP` means another replica created it: success.
//! - `XREADGROUP … <id>` (a concrete id) re-reads this consumer's own pending entries after `id`: what a
//!   previous run of this replica read but did not acknowledge (it died between commit and `XACK`, or
//!   before commit). A consumer first drains those, then switches to `>` (entries never delivered).
//! - `XACK` is sent only after the rows are committed. An entry that is stored but not acknowledged is
//!   delivered again; the store ignores rows it already has, so the result is still one row.

use std::collections::HashMap;

use model::redis_stream::decode_entry;
use model::redis_stream::redis::streams::StreamReadReply;
use model::redis_stream::redis::{self, aio::ConnectionLike, Value};
use model::{dead_letter_key, DecodeError, StreamEntry, StreamId, PERSISTER_GROUP};

/// One entry as the group delivered it.
#[derive(Debug)]
pub struct Delivered {
    /// The entry's id as Redis spelled it (what `XACK` takes).
    pub raw_id: String,
    pub stream_id: Result<StreamId, DecodeError>,
    pub entry: Result<StreamEntry, DecodeError>,
    /// The entry's fields, kept for the dead-letter stream.
    pub fields: HashMap<String, Value>,
}

/// Where a read starts: this consumer's pending entries after an id, or new entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// `XREADGROUP … <id>`: own pending entries after `id` (start with `0-0`).
    Pending(String),
    /// `XREADGROUP … >`: entries not yet delivered to any consumer.
    New,
}

pub async fn ensure_group(
    conn: &mut impl ConnectionLike,
    stream_key: &str,
) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream_key)
        .arg(PERSISTER_GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Reads up to `count` entries for `consumer`, waiting up to `block_ms` when there are none.
pub async fn read(
    conn: &mut impl ConnectionLike,
    stream_key: &str,
    consumer: &str,
    cursor: &Cursor,
    count: usize,
    block_ms: u64,
) -> redis::RedisResult<Vec<Delivered>> {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(PERSISTER_GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(count);
    let start = match cursor {
        Cursor::Pending(after) => after.as_str(),
        Cursor::New => {
            cmd.arg("BLOCK").arg(block_ms);
            ">"
        }
    };
    cmd.arg("STREAMS").arg(stream_key).arg(start);
    let reply: Option<StreamReadReply> = cmd.query_async(conn).await?;
    let entries = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
    Ok(entries
        .map(|e| {
            let (stream_id, entry) = decode_entry(&e);
            Delivered {
                raw_id: e.id,
                stream_id,
                entry,
                fields: e.map,
            }
        })
        .collect())
}

pub async fn ack(
    conn: &mut impl ConnectionLike,
    stream_key: &str,
    ids: &[&str],
) -> redis::RedisResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    redis::cmd("XACK")
        .arg(stream_key)
        .arg(PERSISTER_GROUP)
        .arg(ids)
        .query_async(conn)
        .await
}

/// Copies an entry that cannot be stored to `<stream>:dead` with the reason. The caller acknowledges it
/// afterwards, so a crash in between leaves it pending and it is dead-lettered again (at least once).
pub async fn dead_letter(
    conn: &mut impl ConnectionLike,
    stream_key: &str,
    raw_id: &str,
    fields: &HashMap<String, Value>,
    reason: &str,
) -> redis::RedisResult<()> {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(dead_letter_key(stream_key))
        .arg("*")
        .arg("source_id")
        .arg(raw_id)
        .arg("reason")
        .arg(reason);
    for (field, value) in fields {
        if let Value::BulkString(bytes) = value {
            cmd.arg(format!("entry.{field}")).arg(bytes.as_slice());
        }
    }
    cmd.query_async(conn).await
}
