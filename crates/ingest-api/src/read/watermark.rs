//! The committed watermark of `GET /messages`: the stream position below which every entry is either
//! stored or dead-lettered for good, so that a page of rows below it can never gain a row later.
//!
//! Rows do not commit in stream order: replica B may commit entries 200–299 before replica A commits
//! 100–199, and a claimed batch commits after newer ones. A client tailing with `after=<last id seen>`
//! that was shown 200–299 first would skip 100–199 for good. The persister acknowledges an entry only
//! after its row is committed (or it is dead-lettered), so the consumer group already knows the point
//! below which nothing can change: everything below the oldest *pending* entry is acknowledged, and with
//! nothing pending, everything up to the group's last-delivered id. Entries not yet delivered are above
//! that id. Reads are cut at that point, which the group reports in one atomic script (no second record
//! to keep in step in Postgres). When there is no persister group, nothing is written through the stream
//! and there is no watermark.

use std::sync::LazyLock;

use model::StreamId;
use redis::aio::ConnectionLike;

/// One round trip, one consistent answer; hashed once per process, not per request.
static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
if groups['err'] then return false end -- no stream: no persister has started
local last_delivered = nil
for _, g in ipairs(groups) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  if f['name'] == ARGV[1] then last_delivered = f['last-delivered-id'] end
end
if not last_delivered then return false end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
if pending[1] > 0 then return '<' .. pending[2] end
return '=' .. last_delivered
",
    )
});

/// The exclusive upper bound of what reads may return, or `None` when there is no persister group.
pub async fn committed_below(
    conn: &mut impl ConnectionLike,
    stream_key: &str,
) -> redis::RedisResult<Option<StreamId>> {
    let reply: Option<String> = SCRIPT
        .key(stream_key)
        .arg(model::PERSISTER_GROUP)
        .invoke_async(conn)
        .await?;
    Ok(reply.and_then(|r| {
        let (kind, id) = r.split_at(1);
        let id: StreamId = id.parse().ok()?;
        Some(match kind {
            // Below the oldest pending entry.
            "<" => id,
            // Up to and including the last delivered one.
            _ => StreamId::new(id.ms, id.seq.saturating_add(1)),
        })
    }))
}
