//! Backpressure: how far the persister group is behind, refreshed in the background so a `POST` pays
//! nothing for it. Over `MAX_BACKLOG`, posts get 503 instead of letting the stream grow without bound
//! (the stream is never capped with `XADD MAXLEN`, which would drop unstored entries).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
            match model::redis_stream::group_stats(&mut redis, &stream_key).await {
                Ok(stats) => self.0.store(stats.backlog(), Ordering::Relaxed),
                Err(e) => log::debug!("cannot read the persister's lag: {e}"),
            }
        }
    }
}
