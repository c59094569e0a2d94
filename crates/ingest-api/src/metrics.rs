//! The Prometheus metrics of one ingest-api instance (HTTP request metrics come from `service::http`).

use prometheus::{Histogram, IntCounterVec, Registry};
use service::metrics::{counter_vec, histogram, prometheus, LATENCY_BUCKETS};

pub struct Metrics {
    pub registry: Registry,
    /// Messages posted, by outcome: `accepted`, or the reason they were refused.
    pub messages: IntCounterVec,
    /// Time from request to 202, seconds.
    pub publish_seconds: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = service::metrics::registry();
        Self {
            messages: counter_vec(
                &registry,
                "relay_ingest_messages_total",
                "Messages posted, by outcome (accepted, or the reason they were refused)",
                &["outcome"],
            ),
            publish_seconds: histogram(
                &registry,
                "relay_ingest_publish_seconds",
                "POST /messages: time to the 202",
                LATENCY_BUCKETS,
            ),
            registry,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
