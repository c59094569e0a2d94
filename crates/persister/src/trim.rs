//! Trimming the stream below what the group has acknowledged: never past an entry the persister has not
//! stored (no `XADD MAXLEN`), keeping `STREAM_RETENTION` entries for replay, fewer when they would take
//! more than their share of `MAX_STREAM_BYTES`.

use model::PERSISTER_GROUP;
use redis::aio::ConnectionLike;

/// Bytes of entries one trim call walks at most: the walk copies each entry into the script, so this
/// bounds both the script's memory and how long it holds Redis, whatever the entries' sizes.
pub const TRIM_SLICE_BYTES: u64 = 64 * 1024 * 1024;

/// Trims the stream below what the group has acknowledged, keeping `retention` entries for gateway
/// replay, or fewer when the stream takes more than `keep_bytes` of Redis memory; at most `max_step`
/// entries and about [`TRIM_SLICE_BYTES`] per call. Never trims an entry that is pending or not yet
/// delivered. Returns how many entries were removed.
///
/// It is one Lua script, so the boundary it computes cannot go stale before the trim (a claim or a read
/// in between would otherwise race it), and the only reply is a number: the entries it looks at never
/// cross the network, whatever their size, so the pass fits in `REDIS_TIMEOUT_MS` after an outage too.
/// (Redis has no "id of the n-th entry" command, and the group's `entries-read` counter is only valid at
/// the stream's ends; walking the ids server-side costs the same order as the `XTRIM` itself.)
///
/// - the acknowledged point: everything below the oldest pending entry, or (none pending) up to the
///   group's last-delivered id;
/// - the stream's memory is `MEMORY USAGE … SAMPLES 0`, exact (the default samples five nodes, the
///   oldest, and undercounts a stream whose recent entries are larger);
/// - the removable prefix is the oldest entries until both `length - retention` entries and the bytes
///   over `keep_bytes` (counted from the entries' fields as they are walked) are removed, cut short at
///   the acknowledged point and at the call's bounds. It is walked in pages sized to about 4 MiB
///   (bounded script memory) and removed with `XTRIM MAXLEN = length - walked`, which removes exactly
///   that prefix. An entry's memory is not its field bytes, so a call removes fields worth three
///   quarters of the excess bytes (never below `keep_bytes`); the caller calls again while entries are
///   removed, and each call measures afresh, so the excess shrinks fourfold a call.
pub async fn trim_acknowledged(
    conn: &mut impl ConnectionLike,
    stream_key: &str,
    retention: u64,
    keep_bytes: u64,
    max_step: u64,
) -> redis::RedisResult<u64> {
    let script = redis::Script::new(
        r"
local key, group = KEYS[1], ARGV[1]
local retention, max_step = tonumber(ARGV[2]), tonumber(ARGV[3])
local keep_bytes, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[5])
local len = redis.call('XLEN', key)
if len == 0 then return 0 end
local bytes = redis.call('MEMORY', 'USAGE', key, 'SAMPLES', '0') or 0
local excess, over = len - retention, bytes - keep_bytes
if excess <= 0 and over <= 0 then return 0 end
-- An entry takes more memory than its fields' bytes (allocator size classes, up to a quarter more), so
-- a call frees fields worth three quarters of the excess: it never trims below keep_bytes, and the
-- next call, measuring again, removes most of what is left.
over = math.ceil(over * 3 / 4)
local last_delivered = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  if f['name'] == group then last_delivered = f['last-delivered-id'] end
end
if not last_delivered then return 0 end -- no persister yet: nothing is acknowledged
local pending = redis.call('XPENDING', key, group)
local stop = last_delivered
if pending[1] > 0 then stop = '(' .. pending[2] end
local page_size = math.max(1, math.min(100, math.floor(4194304 * len / math.max(bytes, 1))))
local start, walked, freed = '-', 0, 0
local function wanted()
  return walked < max_step and freed < max_bytes and (walked < excess or freed < over)
end
while wanted() do
  local page = redis.call('XRANGE', key, start, stop, 'COUNT', page_size)
  for _, entry in ipairs(page) do
    if not wanted() then break end
    local size = #entry[1]
    for _, field in ipairs(entry[2]) do size = size + #field end
    walked, freed, start = walked + 1, freed + size, '(' .. entry[1]
  end
  if #page < page_size then break end
end
if walked == 0 then return 0 end
return redis.call('XTRIM', key, 'MAXLEN', '=', len - walked)
",
    );
    script
        .key(stream_key)
        .arg(PERSISTER_GROUP)
        .arg(retention)
        .arg(max_step)
        .arg(keep_bytes)
        .arg(TRIM_SLICE_BYTES)
        .invoke_async(conn)
        .await
}
