//! What the publish path keeps between requests, process-wide: the persister's backlog as last measured,
//! the budget of body bytes held at once, and `PUBLISH_RATE`'s table of recent publishers. Kept apart
//! from the shared [`AppState`](crate::state::AppState), so that the state knows nothing of the publish
//! path and every import points one way.

use std::sync::Arc;
use std::time::Duration;

use service::Settings;

use super::backlog::Backlog;
use super::inflight::InflightBytes;
use super::rate::PublishRate;

pub struct Limits {
    /// The persister group's lag and the stream's memory, refreshed in the background.
    pub(super) backlog: Backlog,
    /// Request body bytes held by this process (`MAX_INFLIGHT_BYTES`).
    pub(super) inflight: Arc<InflightBytes>,
    /// `PUBLISH_RATE`; `None` when unlimited.
    pub(super) rate: Option<PublishRate>,
}

impl Limits {
    pub fn new(settings: &Settings) -> Self {
        Self {
            backlog: Backlog::default(),
            inflight: InflightBytes::new(settings.max_inflight_bytes),
            rate: PublishRate::new(settings.publish_rate),
        }
    }

    /// Keeps the backlog measured and the rate table small, until the task running it is aborted.
    pub async fn watch(&self, redis: impl redis::aio::ConnectionLike + Clone, stream_key: String) {
        let watch = self.backlog.watch(redis, stream_key);
        // The rate limiter's table keeps one entry per recent publisher; idle ones are dropped each
        // second so a scan from many addresses cannot grow it without bound.
        let forget = async {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Some(rate) = &self.rate {
                    rate.forget_idle();
                }
            }
        };
        tokio::join!(watch, forget);
    }
}
