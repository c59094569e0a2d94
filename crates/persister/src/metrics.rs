//! The Prometheus metrics of one persister instance.

use model::metrics::{prometheus, register};
use prometheus::{Histogram, HistogramOpts, IntCounter, Registry};

pub struct Metrics {
    pub registry: Registry,
    /// Rows written (new rows only; redelivered entries that were already stored do not count).
    pub stored: IntCounter,
    /// Entries acknowledged to the group.
    pub acked: IntCounter,
    /// Entries moved to the dead-letter stream.
    pub dead_lettered: IntCounter,
    /// Entries claimed from consumers that left them pending.
    pub claimed: IntCounter,
    /// Failed attempts to store a batch (each is retried).
    pub store_errors: IntCounter,
    /// Time to store one batch, seconds.
    pub batch_seconds: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        Self {
            stored: register(
                &registry,
                IntCounter::new("relay_persister_stored_total", "Rows written to Postgres"),
            ),
            acked: register(
                &registry,
                IntCounter::new("relay_persister_acked_total", "Entries acknowledged"),
            ),
            dead_lettered: register(
                &registry,
                IntCounter::new(
                    "relay_persister_dead_lettered_total",
                    "Entries moved to the dead-letter stream",
                ),
            ),
            claimed: register(
                &registry,
                IntCounter::new(
                    "relay_persister_claimed_total",
                    "Entries claimed from other consumers",
                ),
            ),
            store_errors: register(
                &registry,
                IntCounter::new(
                    "relay_persister_store_errors_total",
                    "Failed attempts to store a batch",
                ),
            ),
            batch_seconds: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new("relay_persister_batch_seconds", "Time to store one batch")
                        .buckets(vec![
                            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
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
