//! The test's Redis stream: appending entries the way ingest-api does, and reading what the persister left
//! (pending entries, dead letters).

use std::time::Duration;

use model::redis_stream::xadd_cmd;
use model::{now_micros, StreamEntry};
use serde_json::value::RawValue;
use service::Settings;
use uuid::Uuid;

/// A stream entry of `payload` (JSON text), received now.
pub fn entry(payload: &str) -> StreamEntry {
    StreamEntry {
        id: Uuid::now_v7(),
        channel: model::ChannelName::default(),
        received_at: now_micros(),
        payload: RawValue::from_string(payload.into()).unwrap(),
        request_id: None,
    }
}

/// Appends entries the way ingest-api does; returns their stream ids.
pub fn xadd(settings: &Settings, entries: &[StreamEntry]) -> Vec<String> {
    let mut conn = crate::redis(settings);
    entries
        .iter()
        .map(|e| xadd_cmd(&settings.stream_key, e).query(&mut conn).unwrap())
        .collect()
}

/// `XADD key id field value …` straight to Redis, fields as given (what another version, a foreign
/// writer or a corruption leaves in the stream); returns the entry's id. `conn` may be a cluster's.
pub fn xadd_fields<K: redis::ToRedisArgs, V: redis::ToRedisArgs>(
    conn: &mut impl redis::ConnectionLike,
    key: &str,
    id: &str,
    fields: impl IntoIterator<Item = (K, V)>,
) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key).arg(id);
    for (field, value) in fields {
        cmd.arg(field).arg(value);
    }
    cmd.query(conn).unwrap()
}

/// Every entry of stream `key`, now (`XRANGE key - +`).
pub fn range(conn: &mut impl redis::ConnectionLike, key: &str) -> Vec<redis::streams::StreamId> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(conn)
        .unwrap();
    reply.ids
}

/// Entries in the test's stream.
pub fn stream_len(settings: &Settings) -> usize {
    redis::cmd("XLEN")
        .arg(&settings.stream_key)
        .query(&mut crate::redis(settings))
        .unwrap()
}

/// The test's stream's memory in Redis, exactly (`MEMORY USAGE … SAMPLES 0`); 0 when it does not exist.
pub fn memory_usage(settings: &Settings) -> u64 {
    let bytes: Option<u64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&settings.stream_key)
        .arg("SAMPLES")
        .arg(0)
        .query(&mut crate::redis(settings))
        .unwrap();
    bytes.unwrap_or(0)
}

/// `XTRIM <stream> <strategy> <threshold>` (`MINID <id>`, `MAXLEN <n>`): what the persister's retention
/// does once entries are stored; returns how many were removed.
pub fn trim(settings: &Settings, strategy: &str, threshold: impl redis::ToRedisArgs) -> usize {
    redis::cmd("XTRIM")
        .arg(&settings.stream_key)
        .arg(strategy)
        .arg(threshold)
        .query(&mut crate::redis(settings))
        .unwrap()
}

/// Entries pending in the persister group (delivered, not acknowledged).
pub fn pending(settings: &Settings) -> usize {
    let reply: (usize, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(&settings.stream_key)
        .arg(model::PERSISTER_GROUP)
        .query(&mut crate::redis(settings))
        .unwrap();
    reply.0
}

/// The entries of the test's dead-letter stream, once it holds `n` (or what it holds after 5 s).
pub async fn dead_letters(settings: &Settings, n: usize) -> Vec<redis::streams::StreamId> {
    let mut conn = crate::redis(settings);
    let dead_key = model::dead_letter_key(&settings.stream_key);
    crate::poll_until(
        Duration::from_secs(5),
        || std::future::ready(range(&mut conn, &dead_key)),
        |ids| ids.len() >= n,
    )
    .await
}
