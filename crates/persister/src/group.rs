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
//! - Every redelivery (own pending re-read, `XAUTOCLAIM`) raises the entry's delivery count in the group.
//!   Redelivered batches read that count back ([`with_delivery_counts`](crate::claim::with_delivery_counts)) so that an entry which keeps
//!   coming back — one that crashes the persister, or one of a format version no replica understands —
//!   is dead-lettered after `MAX_DELIVERIES` instead of circling (and pinning the trim) forever.
//! - A reply is bounded in bytes, not only in entries ([`ReplyBudget`]): a read or claim changes the
//!   group's state in Redis before its reply crosses the network, so a reply too large to arrive within
//!   `REDIS_TIMEOUT_MS` would leave entries pending on a consumer that never saw them. Redis has no byte
//!   limit on `XREADGROUP` or `XAUTOCLAIM`, so a script issues them in chunks, server-side, each chunk's
//!   `COUNT` small enough that the entries read so far plus a chunk of the largest possible entries stay
//!   within the budget.

use std::sync::LazyLock;

use model::redis_stream::{read_reply, FieldName, RawEntry};
use model::{dead_letter_key, DecodeError, EntryParts, StreamId, PERSISTER_GROUP};
use redis::{aio::ConnectionLike, Value};
use service::redis::raw::{RawConn, RawError};

pub use crate::budget::ReplyBudget;
use crate::budget::BUDGET_LUA;

/// One entry as the group delivered it.
#[derive(Debug)]
pub struct Delivered {
    /// The entry's id as Redis spelled it (what `XACK` takes).
    pub raw_id: String,
    pub stream_id: Result<StreamId, DecodeError>,
    /// The content; the payload is checked by Postgres' `json` type on insert, not parsed here.
    pub entry: Result<EntryParts, DecodeError>,
    /// The entry's fields, kept for the dead-letter stream.
    pub fields: Vec<(FieldName, Vec<u8>)>,
    /// How many times the group has delivered it, this delivery included. `1` for a first delivery
    /// (`XREADGROUP >`); redelivered batches read the real count with [`with_delivery_counts`](crate::claim::with_delivery_counts), which
    /// sets `0` for an entry already handled by another batch (nothing to do).
    pub deliveries: u64,
}

/// The bytes of one entry as a reply carries it (id, field names and values).
pub fn entry_bytes(d: &Delivered) -> usize {
    d.raw_id.len()
        + d.fields
            .iter()
            .map(|(f, v)| f.len() + v.len())
            .sum::<usize>()
}

impl From<RawEntry> for Delivered {
    fn from(raw: RawEntry) -> Self {
        let (stream_id, entry) = raw.decode_parts();
        Self {
            raw_id: raw.id,
            stream_id,
            entry,
            fields: raw.fields,
            deliveries: 1,
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

/// `XREADGROUP` (without `BLOCK`: a script cannot block) in chunks within the budget. KEYS: the stream;
/// ARGV: group, consumer, start (`>` or an id), count, budget, entry bytes. The reply has `XREADGROUP`'s
/// shape.
static READ_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r"{BUDGET_LUA}
local key, start = KEYS[1], ARGV[3]
while true do
  local n = chunk()
  if n == 0 then break end
  local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', n, 'STREAMS', key, start)
  if not reply then break end
  local entries = reply[1][2]
  for _, e in ipairs(entries) do add(e) end
  if #entries < n then break end
  if start ~= '>' then start = entries[#entries][1] end
end
if #out == 0 then return false end
return {{ {{ key, out }} }}
"
    ))
});

/// Reads up to `count` entries for `consumer`, at most `budget` bytes of them (see [`ReplyBudget`]),
/// waiting up to `block_ms` for one when there are no new entries.
///
/// Own pending entries (a restart, or the re-read after a lost reply) are read by the chunking script:
/// a hard bound, whatever the entries' sizes. New entries are read with one plain blocking
/// `XREADGROUP` whose `COUNT` fits the budget for entries of `budget.entry_bytes` — the caller's
/// expectation from the entries it has read (see `reading.rs`): the script's per-entry work in Redis
/// halved the drain's rate (0.75× → 0.44× psql `\copy` in `make bench`), and only the first reply after
/// entries suddenly grow can exceed the budget. A reply that then outlasts `REDIS_TIMEOUT_MS` loses
/// nothing: its entries are re-read pending-first, through the script.
pub async fn read(
    conn: &mut impl ConnectionLike,
    stream_key: &str,
    consumer: &str,
    cursor: &Cursor,
    count: usize,
    block_ms: u64,
    budget: ReplyBudget,
) -> redis::RedisResult<Vec<Delivered>> {
    let start = match cursor {
        Cursor::Pending(after) => after.as_str(),
        Cursor::New => {
            let reply: Value = read_new_cmd(stream_key, consumer, count, block_ms, budget)
                .query_async(conn)
                .await?;
            return Ok(read_reply(reply).into_iter().map(Delivered::from).collect());
        }
    };
    let reply: Value = READ_SCRIPT
        .key(stream_key)
        .arg(PERSISTER_GROUP)
        .arg(consumer)
        .arg(start)
        .arg(count)
        .arg(budget.bytes)
        .arg(budget.entry_bytes)
        .invoke_async(conn)
        .await?;
    Ok(read_reply(reply).into_iter().map(Delivered::from).collect())
}

/// The blocking `XREADGROUP … >` of [`read`] for new entries, its `COUNT` within the budget.
fn read_new_cmd(
    stream_key: &str,
    consumer: &str,
    count: usize,
    block_ms: u64,
    budget: ReplyBudget,
) -> redis::Cmd {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(PERSISTER_GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(budget.count(count))
        .arg("BLOCK")
        .arg(block_ms)
        .arg("STREAMS")
        .arg(stream_key)
        .arg(">");
    cmd
}

/// [`read`] of new entries over a raw connection, its reply read by `model::resp` (see
/// `service::redis::raw`): the same command, the same entries. `timeout` bounds the whole exchange,
/// `block_ms` included.
pub async fn read_new_raw(
    conn: &mut RawConn,
    stream_key: &str,
    consumer: &str,
    count: usize,
    block_ms: u64,
    budget: ReplyBudget,
    timeout: std::time::Duration,
) -> Result<Vec<Delivered>, RawError> {
    let cmd = read_new_cmd(stream_key, consumer, count, block_ms, budget);
    let reply = conn.request(&cmd, timeout).await?;
    Ok(model::resp::read_reply(reply)?
        .into_iter()
        .map(Delivered::from)
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

/// When the entry is still pending: `XADD` to the dead-letter stream, then `XACK`, in one step. KEYS: the
/// stream, its dead-letter stream; ARGV: group, entry id, then the dead letter's field/value pairs. The
/// check comes first and the `XACK` last because Redis does not undo a script's earlier writes when a
/// later command fails: an `XADD` that fails (the dead-letter key is not a stream, or more fields than
/// Lua's `unpack` takes) then leaves the entry pending, not acknowledged and lost.
static DEAD_LETTER_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
",
    )
});

/// Moves an entry that cannot be stored to `<stream>:dead` with the reason, and acknowledges it, in one
/// script: exactly once, even when two batches hold the entry (a claim and a pending-first re-read can
/// both deliver it to this consumer). `false`: it was no longer pending, someone else moved it. A crash
/// before the script leaves it pending, to be dead-lettered on its next delivery.
pub async fn dead_letter(
    conn: &mut impl ConnectionLike,
    stream_key: &str,
    raw_id: &str,
    fields: &[(FieldName, Vec<u8>)],
    reason: &str,
) -> redis::RedisResult<bool> {
    let mut script = DEAD_LETTER_SCRIPT.key(stream_key);
    script
        .key(dead_letter_key(stream_key))
        .arg(PERSISTER_GROUP)
        .arg(raw_id)
        .arg("source_id")
        .arg(raw_id)
        .arg("reason")
        .arg(reason);
    for (field, value) in fields {
        script.arg(format!("entry.{field}")).arg(value.as_slice());
    }
    let moved: i64 = script.invoke_async(conn).await?;
    Ok(moved == 1)
}
