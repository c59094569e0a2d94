//! The Prometheus metrics of one ingest-api instance.

use model::metrics::{prometheus, register};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    /// Messages accepted into the stream.
    pub accepted: IntCounter,
    /// `POST /messages` answered with an error, by status code.
    pub rejected: IntCounterVec,
    /// Time from request to 202, seconds.
    pub publish_seconds: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        Self {
            accepted: register(
                &registry,
                IntCounter::new(
                    "relay_ingest_accepted_total",
                    "Messages accepted into the stream",
                ),
            ),
            rejected: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "relay_ingest_rejected_total",
                        "POST /messages answered with an error, by status",
                    ),
                    &["status"],
                ),
            ),
            publish_seconds: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "relay_ingest_publish_seconds",
                        "POST /messages: time to the 202",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0,
                    ]),
                ),
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
