//! `Idempotency-Key`: a repeat of the same key with the same body within 24 hours answers the first 202
//! again and adds nothing; the same key with another body is a 409.
//!
//! The record and the entries are written by one Lua script, so Redis runs them as one step: no crash or
//! concurrent repeat can see the entries without the record or the record without the entries. A client
//! that got a 503 after a timeout (the entry may have reached the stream) retries with its key and gets
//! the first answer, not a duplicate.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use model::redis_stream::parse_reply_id;
use model::{Accepted, StreamEntry};
use redis::Script;
use sha2::{Digest, Sha256};

use crate::problem::ApiError;

/// How long a key is remembered.
pub const KEY_TTL_SECS: u64 = 24 * 60 * 60;

/// What one record costs beyond its fields: Redis's key, hash and ledger entries.
const RECORD_OVERHEAD: u64 = 256;

/// KEYS[1] stream, KEYS[2] record, KEYS[3] the caller's records by creation time, KEYS[4] their sizes
/// (and `total`). ARGV: body hash, ttl, ids (comma-separated), received_at, entry count, arguments per
/// entry (2 × `model::codec::FIELD_COUNT`), the caller's byte budget, the per-record overhead, then the
/// field/value arguments of each entry.
///
/// A new record is refused (`full`, with the seconds until the oldest one expires) while the caller's
/// live records would take more than the budget: each record is kept 24 hours, so without a bound one
/// credential could fill Redis with them. Expired records leave the ledger as new ones come, at most
/// 100 a call.
static SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local rec = redis.call('HMGET', KEYS[2], 'hash', 'ids', 'stream_ids', 'received_at')
if rec[1] then
  if rec[1] ~= ARGV[1] then return {'conflict'} end
  return {'replay', rec[2], rec[3], rec[4]}
end
local n = tonumber(ARGV[5])
local w = tonumber(ARGV[6])
local budget, overhead = tonumber(ARGV[7]), tonumber(ARGV[8])
local ttl = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1])
for _, old in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - ttl, 'LIMIT', 0, 100)) do
  local size = tonumber(redis.call('HGET', KEYS[4], old) or '0')
  redis.call('HINCRBY', KEYS[4], 'total', -size)
  redis.call('HDEL', KEYS[4], old)
  redis.call('ZREM', KEYS[3], old)
end
local size = overhead + #KEYS[2] + #ARGV[1] + #ARGV[3] * 2 + #ARGV[4]
local total = tonumber(redis.call('HGET', KEYS[4], 'total') or '0')
if total + size > budget then
  local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  local wait = ttl
  if oldest[2] then wait = math.max(1, tonumber(oldest[2]) + ttl - now) end
  return {'full', tostring(wait)}
end
redis.call('ZADD', KEYS[3], now, KEYS[2])
redis.call('HSET', KEYS[4], KEYS[2], size)
redis.call('HINCRBY', KEYS[4], 'total', size)
redis.call('EXPIRE', KEYS[3], ttl)
redis.call('EXPIRE', KEYS[4], ttl)
local sids = {}
for i = 0, n - 1 do
  local a = 9 + i * w
  sids[i + 1] = redis.call('XADD', KEYS[1], '*', unpack(ARGV, a, a + w - 1))
end
local joined = table.concat(sids, ',')
redis.call('HSET', KEYS[2], 'hash', ARGV[1], 'ids', ARGV[3], 'stream_ids', joined, 'received_at', ARGV[4])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
return {'new', ARGV[3], joined, ARGV[4]}
",
    )
});

/// A valid key: 1–255 printable ASCII characters.
pub fn parse_key(header: &[u8]) -> Result<&str, ApiError> {
    if header.is_empty() || header.len() > 255 || !header.iter().all(|b| (0x20..=0x7e).contains(b))
    {
        return Err(ApiError::BadQuery(
            "Idempotency-Key must be 1 to 255 printable ASCII characters".into(),
        ));
    }
    // All bytes are ASCII, so this is valid UTF-8.
    std::str::from_utf8(header)
        .map_err(|_| ApiError::BadQuery("Idempotency-Key is not ASCII".into()))
}

/// One `Idempotency-Key` as a caller sent it: its record, the body's fingerprint, and the caller's
/// ledger and byte budget (`MAX_IDEMPOTENCY_BYTES`).
pub struct Record {
    pub key: String,
    pub fingerprint: String,
    pub ledger: (String, String),
    pub budget: u64,
}

/// The request's fingerprint: its kind (single or batch), its channel and its exact body. The same
/// key and body sent to another channel is another request (409), not a repeat. (`default` adds
/// nothing, so records written before channels still match their repeats.)
pub fn fingerprint(kind: &str, channel: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update([0]);
    if channel != model::DEFAULT_CHANNEL {
        h.update(channel.as_bytes());
        h.update([0]);
    }
    h.update(body);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Appends `entries` unless the record `record_key` (see `model::idempotency_key`) exists; either way
/// answers what the first request got.
pub async fn append_once(
    redis: &mut impl redis::aio::ConnectionLike,
    stream_key: &str,
    record: &Record,
    entries: &[StreamEntry],
) -> Result<Result<Vec<Accepted>, ApiError>, redis::RedisError> {
    let received_at = entries
        .first()
        .map(|e| model::format_received_at(&e.received_at))
        .unwrap_or_default();
    let ids = entries
        .iter()
        .map(|e| e.id.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut invocation = SCRIPT.key(stream_key);
    invocation
        .key(&record.key)
        .key(&record.ledger.0)
        .key(&record.ledger.1)
        .arg(&record.fingerprint)
        .arg(KEY_TTL_SECS)
        .arg(&ids)
        .arg(&received_at)
        .arg(entries.len())
        .arg(2 * model::codec::FIELD_COUNT)
        .arg(record.budget)
        .arg(RECORD_OVERHEAD);
    for entry in entries {
        for (field, value) in entry.to_fields() {
            invocation.arg(field).arg(value);
        }
    }
    let reply: Vec<String> = invocation.invoke_async(redis).await?;
    Ok(match reply.as_slice() {
        [tag] if tag == "conflict" => Err(ApiError::IdempotencyConflict),
        [tag, wait] if tag == "full" => Err(ApiError::IdempotencyFull {
            wait: std::time::Duration::from_secs(wait.parse().unwrap_or(KEY_TTL_SECS)),
        }),
        [_, ids, stream_ids, received_at] => {
            // The fingerprint covers the channel: a record that answers is of this request's channel.
            let channel = entries
                .first()
                .map(|e| e.channel.clone())
                .unwrap_or_default();
            decode_answer(&channel, ids, stream_ids, received_at)
        }
        other => Err(ApiError::Internal(anyhow::anyhow!(
            "unexpected idempotency script reply: {other:?}"
        ))),
    })
}

fn decode_answer(
    channel: &model::ChannelName,
    ids: &str,
    stream_ids: &str,
    received_at: &str,
) -> Result<Vec<Accepted>, ApiError> {
    let bad = |e: &dyn std::fmt::Display| {
        ApiError::Internal(anyhow::anyhow!("corrupt idempotency record: {e}"))
    };
    let received_at: DateTime<Utc> = DateTime::parse_from_rfc3339(received_at)
        .map_err(|e| bad(&e))?
        .to_utc();
    ids.split(',')
        .zip(stream_ids.split(','))
        .map(|(id, sid)| {
            Ok(Accepted {
                id: id.parse().map_err(|e| bad(&e))?,
                channel: channel.clone(),
                stream_id: parse_reply_id(sid).map_err(|e| bad(&e))?,
                received_at,
            })
        })
        .collect()
}
