//! Talking to the stream: connections with bounded waits, appending entries, and turning `XREAD` /
//! `XREADGROUP` / `XRANGE` replies back into [`StreamEntry`]s.
//!
//! Two kinds of connection, on purpose:
//! - [`shared_connection`]: one multiplexed, self-reconnecting connection that pipelines the short commands
//!   of every concurrent request (`XADD`, `XACK`, `XINFO`). Its response timeout bounds how long any caller
//!   waits while Redis is away.
//! - [`blocking_pool`]: connections for `XREAD BLOCK` / `XREADGROUP BLOCK`. A blocked command holds its
//!   connection until it answers, so it must never sit on the shared one.

use std::time::Duration;

use deadpool_redis::{Manager, Pool};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, Value};

use crate::{DecodeError, EntryParts, Settings, StreamEntry, StreamId};

pub use deadpool_redis;
pub use redis;

/// The shared multiplexed connection. It connects lazily, so a service starts while Redis is down; each
/// command then fails after `redis_timeout_ms` and the next one reconnects.
pub fn shared_connection(settings: &Settings) -> redis::RedisResult<ConnectionManager> {
    let timeout = Duration::from_millis(settings.redis_timeout_ms);
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(
        redis::Client::open(settings.redis_url.as_str())?,
        config,
    )
}

/// A pool for blocking reads of up to `block`: the response timeout leaves room for the block itself.
pub fn blocking_pool(
    settings: &Settings,
    block: Duration,
    size: usize,
) -> Result<Pool, Box<dyn std::error::Error + Send + Sync>> {
    let timeout = Duration::from_millis(settings.redis_timeout_ms);
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(block + timeout));
    let manager = Manager::new_with_config(settings.redis_url.as_str(), config)?;
    Ok(Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()?)
}

/// Readiness: whether Redis answers a `PING` within `timeout`; the error says why not.
pub async fn ping(
    conn: &mut impl redis::aio::ConnectionLike,
    timeout: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(conn)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// The `XADD` command for one entry (`*`: Redis assigns the stream id). Never with `MAXLEN`: trimming is
/// the persister's job, below what it has stored.
pub fn xadd_cmd(stream_key: &str, entry: &StreamEntry) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream_key).arg("*");
    for (field, value) in entry.to_fields() {
        cmd.arg(field).arg(value);
    }
    cmd
}

/// A stream id as Redis returned it; Redis only ever returns well-formed ones.
pub fn parse_reply_id(id: &str) -> Result<StreamId, DecodeError> {
    id.parse()
        .map_err(|e: crate::StreamIdError| DecodeError::Malformed {
            field: "stream id",
            reason: e.to_string(),
        })
}

/// One entry of a stream reply as Redis sent it, its bytes moved out of the reply (no per-entry map).
#[derive(Debug, Clone, Default)]
pub struct RawEntry {
    pub id: String,
    pub fields: Vec<(String, Vec<u8>)>,
}

impl RawEntry {
    fn pairs(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The entry with its payload checked as JSON.
    pub fn decode(
        &self,
    ) -> (
        Result<StreamId, DecodeError>,
        Result<StreamEntry, DecodeError>,
    ) {
        (parse_reply_id(&self.id), StreamEntry::decode(self.pairs()))
    }

    /// The entry with its payload as unchecked text.
    pub fn decode_parts(
        &self,
    ) -> (
        Result<StreamId, DecodeError>,
        Result<EntryParts, DecodeError>,
    ) {
        (parse_reply_id(&self.id), EntryParts::decode(self.pairs()))
    }
}

fn into_items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        // RESP3 maps (XREAD's key → entries) flatten to key, value, key, value…
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

fn into_string(v: Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8(b).unwrap_or_default(),
        Value::SimpleString(s) => s,
        _ => String::new(),
    }
}

/// A list of entries (`XRANGE`, the claimed part of `XAUTOCLAIM`): `[[id, [field, value, …]], …]`. An
/// entry deleted while pending comes back as `[id, nil]` and has no fields.
pub fn entry_list(list: Value) -> Vec<RawEntry> {
    into_items(list)
        .into_iter()
        .map(|entry| {
            let mut parts = into_items(entry).into_iter();
            let id = parts.next().map(into_string).unwrap_or_default();
            let mut flat = parts.next().map(into_items).unwrap_or_default().into_iter();
            let mut fields = Vec::with_capacity(4);
            while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                let v = match v {
                    Value::BulkString(b) => b,
                    Value::SimpleString(s) => s.into_bytes(),
                    _ => Vec::new(),
                };
                fields.push((into_string(k), v));
            }
            RawEntry { id, fields }
        })
        .collect()
}

/// The entries of an `XREAD`/`XREADGROUP` reply on one stream (`[[key, entries]]`; nil when none).
pub fn read_reply(reply: Value) -> Vec<RawEntry> {
    let mut items = into_items(reply).into_iter();
    let mut out = Vec::new();
    while let Some(item) = items.next() {
        // RESP2: each item is [key, entries]; RESP3 (flattened map): key, entries.
        let entries = match item {
            Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
            _ => items.next(),
        };
        out.extend(entries.map(entry_list).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn replies_are_walked_without_maps_and_deleted_entries_have_no_fields() {
        let entry = |id: &str, f: Value| Value::Array(vec![bulk(id), f]);
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("key"),
            Value::Array(vec![
                entry(
                    "1-0",
                    Value::Array(vec![bulk("v"), bulk("1"), bulk("payload"), bulk("[1]")]),
                ),
                entry("2-0", Value::Nil),
            ]),
        ])]);
        let entries = read_reply(reply);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(
            entries[0].fields,
            vec![
                ("v".into(), b"1".to_vec()),
                ("payload".into(), b"[1]".to_vec())
            ]
        );
        assert!(entries[1].fields.is_empty());
        assert!(read_reply(Value::Nil).is_empty());
    }
}
