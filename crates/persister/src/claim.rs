//! Taking over what other consumers left: `XAUTOCLAIM` within a byte budget, the group's delivery count
//! of each entry (what dead-lettering after `MAX_DELIVERIES` counts), and removing consumers of replicas
//! that were scaled away.

use std::sync::LazyLock;

use model::redis_stream::RawEntry;
use model::PERSISTER_GROUP;
use redis::streams::StreamAutoClaimReply;
use redis::{aio::ConnectionLike, Value};

use crate::budget::{ReplyBudget, BUDGET_LUA};
use crate::group::Delivered;

/// `XAUTOCLAIM` in chunks within the budget, as long as each chunk comes back full (one scan of the
/// pending list per pass, as a single `XAUTOCLAIM` would). KEYS: the stream; ARGV: group, consumer, min
/// idle, cursor, count, budget, entry bytes. The reply has `XAUTOCLAIM`'s shape.
static CLAIM_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r"{BUDGET_LUA}
local key, cursor, deleted = KEYS[1], ARGV[4], {{}}
while true do
  local n = chunk()
  if n == 0 then break end
  local reply = redis.call('XAUTOCLAIM', key, ARGV[1], ARGV[2], ARGV[3], cursor, 'COUNT', n)
  cursor = reply[1]
  for _, e in ipairs(reply[2]) do add(e) end
  for _, id in ipairs(reply[3] or {{}}) do deleted[#deleted + 1] = id end
  if cursor == '0-0' or #reply[2] < n then break end
end
return {{ cursor, out, deleted }}
"
    ))
});

/// `XAUTOCLAIM`: takes over up to `count` entries, at most `budget` bytes of them, that have been pending
/// on any consumer for at least `min_idle_ms` (their consumer died, or is stuck). Returns the claimed
/// entries and the cursor to continue from (`0-0` once the whole pending list was scanned).
pub async fn autoclaim(
    conn: &mut impl ConnectionLike,
    stream_key: &str,
    consumer: &str,
    min_idle_ms: u64,
    cursor: &str,
    count: usize,
    budget: ReplyBudget,
) -> redis::RedisResult<(Vec<Delivered>, String)> {
    let reply: StreamAutoClaimReply = CLAIM_SCRIPT
        .key(stream_key)
        .arg(PERSISTER_GROUP)
        .arg(consumer)
        .arg(min_idle_ms)
        .arg(cursor)
        .arg(count)
        .arg(budget.bytes)
        .arg(budget.entry_bytes)
        .invoke_async(conn)
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
                    (model::redis_stream::field_name(field.as_bytes()), bytes)
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

/// Reads the group's delivery count of each entry in `batch` (one `XPENDING` with the extended form, over
/// the batch's id range on this consumer).
///
/// An entry missing from a reply that is not full is no longer pending on this consumer: another batch
/// of it acknowledged the entry meanwhile (a claim and a pending-first re-read can both bring it here),
/// or another consumer claimed it. Its count becomes `0`: nothing to do (storing it again would be a
/// no-op, but dead-lettering it again would not). Missing from a full reply, it keeps its count.
pub async fn with_delivery_counts(
    conn: &mut impl ConnectionLike,
    stream_key: &str,
    consumer: &str,
    batch: &mut [Delivered],
) -> redis::RedisResult<()> {
    let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
        return Ok(());
    };
    let reply: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(stream_key)
        .arg(PERSISTER_GROUP)
        .arg(&first.raw_id)
        .arg(&last.raw_id)
        // The range can hold entries of this consumer that are not in the batch, never more than it.
        .arg(batch.len())
        .arg(consumer)
        .query_async(conn)
        .await?;
    let counts: std::collections::HashMap<&str, usize> = reply
        .ids
        .iter()
        .map(|p| (p.id.as_str(), p.times_delivered))
        .collect();
    let full = reply.ids.len() >= batch.len();
    for d in batch.iter_mut() {
        match counts.get(d.raw_id.as_str()) {
            Some(&n) => d.deliveries = n as u64,
            None if !full => d.deliveries = 0,
            None => {}
        }
    }
    Ok(())
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
