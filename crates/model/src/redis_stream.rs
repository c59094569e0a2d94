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
use redis::streams::StreamId as RedisStreamEntry;
use redis::{AsyncConnectionConfig, Value};

use crate::{DecodeError, Settings, StreamEntry, StreamId};

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

/// Decodes one entry of an `XREAD`/`XREADGROUP`/`XRANGE` reply.
pub fn decode_entry(
    entry: &RedisStreamEntry,
) -> (
    Result<StreamId, DecodeError>,
    Result<StreamEntry, DecodeError>,
) {
    let fields = entry.map.iter().filter_map(|(name, value)| match value {
        Value::BulkString(bytes) => Some((name.as_str(), bytes.as_slice())),
        Value::SimpleString(s) => Some((name.as_str(), s.as_bytes())),
        _ => None,
    });
    (parse_reply_id(&entry.id), StreamEntry::decode(fields))
}
