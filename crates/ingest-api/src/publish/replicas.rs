//! Durable acknowledgement (`REDIS_ACK_REPLICAS`): a 202 only once that many replicas hold the entry.
//!
//! Redis replicates asynchronously: a primary answers `XADD` before any replica has the entry, and a
//! failover right then promotes a replica without it — a 202'd message lost. `WAIT n timeout`, sent on the
//! connection that wrote, returns how many replicas have confirmed everything that connection wrote so
//! far; with fewer than `n` the answer is 503 with `Retry-After`. The entry may still exist (on the
//! primary, and perhaps on a replica later): the client retries with its `Idempotency-Key` and gets the
//! first answer, not a duplicate.
//!
//! `WAIT` counts the writes of the connection it is sent on, to the node it reaches. After a failover it
//! can reach the new primary, which never saw this connection's `XADD` (the old one took it and died
//! before replicating): it then confirms nothing about the entry. So once `WAIT` is satisfied, the entry
//! is also looked up (`XRANGE id id`) where the stream now lives; an entry that is not there was lost in
//! the failover, and the answer is 503, never a 202.
//!
//! The connection is multiplexed, so one `WAIT` covers every write sent before it, and requests queued
//! behind it wait with it: the cost is about one replication round trip per batch of concurrent posts,
//! not per post. With `REDIS_ACK_REPLICAS=0` (the default) nothing is sent.

use std::time::Duration;

use service::redis::Conn;
use service::Settings;

use crate::problem::ApiError;

/// Waits until `REDIS_ACK_REPLICAS` replicas confirmed this connection's writes and the stream still
/// holds `last` (the newest entry this request wrote), or answers why not.
pub async fn confirm(
    settings: &Settings,
    redis: &mut Conn,
    last: Option<model::StreamId>,
) -> Result<(), ApiError> {
    let wanted = settings.redis_ack_replicas;
    if wanted == 0 {
        return Ok(());
    }
    let wait = Duration::from_millis(settings.redis_ack_timeout_ms);
    // WAIT answers by itself after `wait`; the outer bound only covers a Redis that stopped answering.
    let limit = wait + Duration::from_millis(settings.redis_timeout_ms);
    let acked = answer(
        limit,
        "WAIT",
        "WAIT for replicas",
        redis.wait_for_replicas(&settings.stream_key, wanted, wait),
    )
    .await?;
    if acked < wanted {
        return Err(ApiError::StreamUnavailable(anyhow::anyhow!(
            "{acked} of REDIS_ACK_REPLICAS={wanted} replicas confirmed the entry within {wait:?}"
        )));
    }
    match last {
        Some(id) => still_there(settings, redis, id).await,
        None => Ok(()),
    }
}

/// Whether the stream, where it lives now, holds entry `id`.
async fn still_there(
    settings: &Settings,
    redis: &mut Conn,
    id: model::StreamId,
) -> Result<(), ApiError> {
    let id = id.to_string();
    let found = answer(
        Duration::from_millis(settings.redis_timeout_ms),
        "XRANGE",
        "looking the entry up after WAIT",
        redis::cmd("XRANGE")
            .arg(&settings.stream_key)
            .arg(&id)
            .arg(&id)
            .query_async::<redis::streams::StreamRangeReply>(redis),
    )
    .await?;
    if found.ids.is_empty() {
        return Err(ApiError::StreamUnavailable(anyhow::anyhow!(
            "entry {id} is gone from the stream after WAIT (lost in a failover)"
        )));
    }
    Ok(())
}

/// The reply to `command` within `limit`; a Redis error (with `context`) or no answer is 503.
async fn answer<T>(
    limit: Duration,
    command: &str,
    context: &'static str,
    reply: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(limit, reply).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(ApiError::StreamUnavailable(
            anyhow::Error::new(e).context(context),
        )),
        Err(_) => Err(ApiError::StreamUnavailable(anyhow::anyhow!(
            "no answer to {command} within {limit:?}"
        ))),
    }
}
