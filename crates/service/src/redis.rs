//! Connections to Redis with bounded waits, and the readiness ping.
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
use redis::AsyncConnectionConfig;

use crate::Settings;

pub use deadpool_redis;
pub use redis;

/// The shared multiplexed connection. It connects lazily, so a service starts while Redis is down; each
/// command then fails after `REDIS_TIMEOUT_MS` and the next one reconnects.
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
pub fn blocking_pool(settings: &Settings, block: Duration, size: usize) -> anyhow::Result<Pool> {
    let timeout = Duration::from_millis(settings.redis_timeout_ms);
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(block + timeout));
    let manager = Manager::new_with_config(settings.redis_url.as_str(), config)
        .map_err(|e| anyhow::anyhow!("REDIS_URL: {e}"))?;
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()
        .map_err(|e| anyhow::anyhow!("REDIS_URL: {e}"))
}

/// Whether Redis answers a `PING` within `timeout`; the error says why not (for the log, not a client).
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
