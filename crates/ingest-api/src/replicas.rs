//! Durable acknowledgement (`REDIS_ACK_REPLICAS`): a 202 only once that many replicas hold the entry.
//!
//! Redis replicates asynchronously: a primary answers `XADD` before any replica has the entry, and a
//! failover right then promotes a replica without it — a 202'd message lost. `WAIT n timeout`, sent on the
//! connection that wrote, returns how many replicas have confirmed everything that connection wrote so
//! far; with fewer than `n` the answer is 503 with `Retry-After`. The entry may still exist (on the
//! primary, and perhaps on a replica later): the client retries with its `Idempotency-Key` and gets the
//! first answer, not a duplicate.
//!
//! The connection is multiplexed, so one `WAIT` covers every write sent before it, and requests queued
//! behind it wait with it: the cost is about one replication round trip per batch of concurrent posts,
//! not per post. With `REDIS_ACK_REPLICAS=0` (the default) nothing is sent.

use std::time::Duration;

use service::redis::Conn;
use service::Settings;

use crate::problem::ApiError;

/// Waits until `REDIS_ACK_REPLICAS` replicas confirmed this connection's writes, or answers why not.
pub async fn confirm(settings: &Settings, redis: &mut Conn) -> Result<(), ApiError> {
    let wanted = settings.redis_ack_replicas;
    if wanted == 0 {
        return Ok(());
    }
    let wait = Duration::from_millis(settings.redis_ack_timeout_ms);
    // WAIT answers by itself after `wait`; the outer bound only covers a Redis that stopped answering.
    let limit = wait + Duration::from_millis(settings.redis_timeout_ms);
    let acked = tokio::time::timeout(
        limit,
        redis.wait_for_replicas(&settings.stream_key, wanted, wait),
    )
    .await;
    match acked {
        Ok(Ok(acked)) if acked >= wanted => Ok(()),
        Ok(Ok(acked)) => Err(ApiError::StreamUnavailable(anyhow::anyhow!(
            "{acked} of REDIS_ACK_REPLICAS={wanted} replicas confirmed the entry within {wait:?}"
        ))),
        Ok(Err(e)) => Err(ApiError::StreamUnavailable(
            anyhow::Error::new(e).context("WAIT for replicas"),
        )),
        Err(_) => Err(ApiError::StreamUnavailable(anyhow::anyhow!(
            "no answer to WAIT within {limit:?}"
        ))),
    }
}
