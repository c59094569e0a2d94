//! Backpressure: how far the persister group is behind, refreshed in the background so a `POST` pays
//! nothing for it. Over `MAX_BACKLOG`, posts get 503 instead of letting the stream grow without bound
//! (the stream is never capped with `XADD MAXLEN`, which would drop unstored entries).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::Value;

/// How often the lag is read.
pub const REFRESH: Duration = Duration::from_millis(250);

#[derive(Default)]
pub struct Backlog(AtomicU64);

impl Backlog {
    /// Entries the persister group has not yet stored (as last measured).
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Re-reads the lag until the task is dropped. Failures keep the last value (Redis being away is
    /// already answered by the write itself).
    pub async fn watch(&self, mut redis: impl redis::aio::ConnectionLike, stream_key: String) {
        let mut tick = tokio::time::interval(REFRESH);
        loop {
            tick.tick().await;
            match measure(&mut redis, &stream_key).await {
                Ok(lag) => self.0.store(lag, Ordering::Relaxed),
                Err(e) => log::debug!("cannot read the persister's lag: {e}"),
            }
        }
    }
}

/// The `persister` group's `lag` (entries not yet delivered) plus its pending count (delivered, not yet
/// acknowledged). Without a group (no persister ever started), every entry in the stream is unstored.
async fn measure(
    redis: &mut impl redis::aio::ConnectionLike,
    stream_key: &str,
) -> redis::RedisResult<u64> {
    let groups: redis::RedisResult<Vec<HashMap<String, Value>>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream_key)
        .query_async(redis)
        .await;
    let groups = match groups {
        Ok(groups) => groups,
        Err(e) if e.to_string().contains("no such key") => return Ok(0),
        Err(e) => return Err(e),
    };
    let group = groups.iter().find(|g| {
        matches!(g.get("name"), Some(Value::BulkString(n)) if n == model::PERSISTER_GROUP.as_bytes())
    });
    let Some(group) = group else {
        return redis::cmd("XLEN").arg(stream_key).query_async(redis).await;
    };
    let int = |k: &str| match group.get(k) {
        Some(Value::Int(n)) => Some((*n).max(0) as u64),
        _ => None,
    };
    // `lag` is nil when Redis cannot compute it (after deletions in the middle of the stream); pending
    // alone is then the best lower bound.
    Ok(int("lag").unwrap_or(0) + int("pending").unwrap_or(0))
}
