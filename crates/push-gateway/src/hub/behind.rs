//! A client that fell behind: when its queue overflowed, and a signal its session waits on.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// The moment a client's queue overflowed. Shared by the hub and the session.
#[derive(Debug, Default)]
pub struct Behind {
    since: OnceLock<Instant>,
    signal: CancellationToken,
}

impl Behind {
    pub(super) fn mark(&self) {
        let _ = self.since.set(Instant::now());
        self.signal.cancel();
    }

    /// Whether the client's queue overflowed.
    #[cfg(test)]
    pub fn is_behind(&self) -> bool {
        self.signal.is_cancelled()
    }

    /// How long the client has been behind (zero while it is not).
    pub fn elapsed(&self) -> Duration {
        self.since.get().map_or(Duration::ZERO, Instant::elapsed)
    }

    /// Resolves once the client has been behind for `window`; never while it keeps up.
    pub async fn longer_than(&self, window: Duration) {
        self.signal.cancelled().await;
        let since = self.since.get().copied().unwrap_or_else(Instant::now);
        tokio::time::sleep_until((since + window).into()).await;
    }
}
