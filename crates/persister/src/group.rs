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

use model::redis_stream::{read_reply, RawEntry};
use model::{dead_letter_key, DecodeError, EntryParts, StreamId, PERSISTER_GROUP};
use redis::streams::{StreamAutoClaimReply, StreamInfoGroupsReply, StreamPendingReply};
use redis::{aio::ConnectionLike, Value};

/// One entry as the group delivered it.
#[derive(Debug)]
pub struct Delivered {
    /// The entry's id as Redis spelled it (what `XACK` takes).
    pub raw_id: String,
    pub stream_id: Result<StreamId, DecodeError>,
    /// The content; the payload is checked by Postgres' `json` type on insert, not parsed here.
    pub entry: Result<EntryParts, DecodeError>,
    /// The entry's fields, kept for the dead-letter stream.
    pub fields: Vec<(String, Vec<u8>)>,
}

impl From<RawEntry> for Delivered {
    fn from(raw: RawEntry) -> Self {
        let (stream_id, entry) = raw.decode_parts();
        Self {
            raw_id: raw.id,
            stream_id,
            entry,
            fields: raw.fields,
        }
    }
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
    let reply: Value = cmd.query_async(conn).await?;
    Ok(read_reply(reply).into_iter().map(Delivered::from).collect())
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
    fields: &[(String, Vec<u8>)],
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
        cmd.arg(format!("entry.{field}")).arg(value.as_slice());
    }
    cmd.query_async(conn).await
}

/// `XAUTOCLAIM`: takes over up to `count` entries that have been pending on any consumer for at least
/// `min_idle_ms` (their consumer died, or is stuck). Returns the claimed entries and the cursor to continue
/// from (`0-0` once the whole pending list was scanned).
pub async fn autoclaim(
    conn: &mut impl ConnectionLike,
    stream_key: &str,
    consumer: &str,
    min_idle_ms: u64,
    cursor: &str,
    count: usize,
) -> redis::RedisResult<(Vec<Delivered>, String)> {
    let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
        .arg(stream_key)
        .arg(PERSISTER_GROUP)
        .arg(consumer)
        .arg(min_idle_ms)
        .arg(cursor)
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    let claimed = reply
        .claimed
        .into_iter()
        .map(|entry| {
            let fields = entry
                .map
                .into_iter()
                .map(|(field, value)| {
                    let bytes = match value {
                        Value::BulkString(b) => b,
                        Value::SimpleString(s) => s.into_bytes(),
                        _ => Vec::new(),
                    };
                    (field, bytes)
                })
                .collect();
            Delivered::from(RawEntry {
                id: entry.id,
                fields,
            })
        })
        .collect();
    Ok((claimed, reply.next_stream_id))
}

/// Trims the stream below what the group has acknowledged, keeping at least `retention` entries for
/// gateway replay. Never trims an entry that is pending or not yet delivered:
/// - the acknowledged point is the oldest pending entry, or (none pending) just after the group's
///   last-delivered id;
/// - the retention point is the id `retention` entries back from the newest, found by reading the excess
///   from the oldest end (at most `max_step` entries per call, so one call stays cheap; the next catches up).
///
/// `XTRIM MINID` removes entries whose id is *below* the boundary, so the boundary itself is kept.
pub async fn trim_acknowledged(
    conn: &mut impl ConnectionLike,
    stream_key: &str,
    retention: u64,
    max_step: u64,
) -> redis::RedisResult<u64> {
    let length: u64 = redis::cmd("XLEN").arg(stream_key).query_async(conn).await?;
    if length <= retention {
        return Ok(0);
    }
    let excess = (length - retention).min(max_step);
    let groups: StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream_key)
        .query_async(conn)
        .await?;
    let Some(group) = groups.groups.iter().find(|g| g.name == PERSISTER_GROUP) else {
        return Ok(0); // no persister yet: nothing is acknowledged
    };
    let Ok(last_delivered) = group.last_delivered_id.parse::<StreamId>() else {
        return Ok(0);
    };
    let pending: StreamPendingReply = redis::cmd("XPENDING")
        .arg(stream_key)
        .arg(PERSISTER_GROUP)
        .query_async(conn)
        .await?;
    let acknowledged_below = match pending {
        StreamPendingReply::Data(data) => match data.start_id.parse::<StreamId>() {
            Ok(oldest_pending) => oldest_pending,
            Err(_) => return Ok(0),
        },
        // Nothing pending (the reply type is non-exhaustive: anything else reads as empty too).
        _ => StreamId::new(last_delivered.ms, last_delivered.seq.saturating_add(1)),
    };
    let oldest_excess: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream_key)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(excess)
        .query_async(conn)
        .await?;
    let Some(retention_below) = oldest_excess
        .ids
        .last()
        .and_then(|e| e.id.parse::<StreamId>().ok())
        .map(|id| StreamId::new(id.ms, id.seq.saturating_add(1)))
    else {
        return Ok(0);
    };
    let boundary = acknowledged_below.min(retention_below);
    redis::cmd("XTRIM")
        .arg(stream_key)
        .arg("MINID")
        .arg(boundary.to_string())
        .query_async(conn)
        .await
}

/// Removes consumers of the group that have nothing pending and have not been heard from for
/// `idle_ms` — replicas that were scaled away. A consumer with pending entries is never removed (its
/// entries would be lost from the group); `idle_ms` is far above any live replica's poll interval, since
/// `XGROUP DELCONSUMER` cannot be made conditional on the pending count.
pub async fn remove_idle_consumers(
    conn: &mut impl ConnectionLike,
    stream_key: &str,
    me: &str,
    idle_ms: u64,
) -> redis::RedisResult<Vec<String>> {
    // One script, so the check and the delete are one step: a consumer that reads between a check and a
    // separate DELCONSUMER would have those entries dropped from the group, never to be delivered again.
    let script = redis::Script::new(
        r"
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] ~= ARGV[2] and f['pending'] == 0 and f['idle'] >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    table.insert(removed, f['name'])
  end
end
return removed
",
    );
    script
        .key(stream_key)
        .arg(PERSISTER_GROUP)
        .arg(me)
        .arg(idle_ms)
        .invoke_async(conn)
        .await
}
