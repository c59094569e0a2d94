//! The Prometheus metrics of one persister instance.

use prometheus::{Histogram, IntCounter, IntGauge, Registry};
use service::metrics::{counter, gauge, histogram, prometheus};

pub struct Metrics {
    pub registry: Registry,
    /// Rows written (new rows only; redelivered entries that were already stored do not count).
    pub rows: IntCounter,
    /// Entries acknowledged to the group.
    pub acked: IntCounter,
    /// Entries delivered again: this replica's own pending entries re-read after a restart, and claims.
    pub redeliveries: IntCounter,
    /// Entries moved to the dead-letter stream.
    pub dead_letters: IntCounter,
    /// Entries claimed from consumers that left them pending.
    pub claimed: IntCounter,
    /// Failed attempts to store a batch (each is retried).
    pub store_errors: IntCounter,
    /// Rows deleted by `HISTORY_RETENTION`.
    pub history_deleted: IntCounter,
    /// The largest reply of one read or claim since start, bytes (bounded by `PERSISTER_READ_BYTES`).
    pub largest_read_bytes: IntGauge,
    /// Time to store one batch, seconds.
    pub batch_seconds: Histogram,
    /// Entries in the stream, sampled.
    pub stream_length: IntGauge,
    /// Entries the `persister` group has not been delivered yet, sampled.
    pub stream_lag: IntGauge,
    /// Entries delivered to the group and not yet acknowledged, sampled.
    pub stream_pending: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let r = service::metrics::registry();
        Self {
            rows: counter(&r, "relay_persister_rows_total", "Rows written to Postgres"),
            acked: counter(&r, "relay_persister_acked_total", "Entries acknowledged"),
            redeliveries: counter(
                &r,
                "relay_persister_redeliveries_total",
                "Entries delivered more than once (re-read after a restart, or claimed)",
            ),
            dead_letters: counter(
                &r,
                "relay_persister_dead_letters_total",
                "Entries moved to the dead-letter stream",
            ),
            claimed: counter(
                &r,
                "relay_persister_claimed_total",
                "Entries claimed from other consumers",
            ),
            store_errors: counter(
                &r,
                "relay_persister_store_errors_total",
                "Failed attempts to store a batch",
            ),
            history_deleted: counter(
                &r,
                "relay_persister_history_deleted_total",
                "Rows deleted from Postgres by HISTORY_RETENTION",
            ),
            largest_read_bytes: gauge(
                &r,
                "relay_persister_largest_read_bytes",
                "The largest reply of one stream read or claim since start, bytes",
            ),
            batch_seconds: histogram(
                &r,
                "relay_persister_batch_seconds",
                "Time to store one batch",
                &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0],
            ),
            stream_length: gauge(&r, "relay_stream_length", "Entries in the stream"),
            stream_lag: gauge(
                &r,
                "relay_stream_lag",
                "Entries not yet delivered to the persister group",
            ),
            stream_pending: gauge(
                &r,
                "relay_stream_pending",
                "Entries delivered to the persister group and not yet acknowledged",
            ),
            registry: r,
        }
    }
}

impl Metrics {
    /// Records the size of one read or claim reply.
    /// Returns the largest entry's bytes (0 for an empty reply).
    pub fn observe_read(&self, entries: &[crate::group::Delivered]) -> usize {
        let (total, largest) = entries
            .iter()
            .map(crate::group::entry_bytes)
            .fold((0, 0), |(total, largest), b| (total + b, largest.max(b)));
        let total = i64::try_from(total).unwrap_or(i64::MAX);
        if total > self.largest_read_bytes.get() {
            self.largest_read_bytes.set(total);
        }
        largest
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// How often the stream gauges are sampled.
pub const SAMPLE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Samples `relay_stream_length`, `relay_stream_lag` and `relay_stream_pending` until `stop`: on a
/// timer, not per request, so scraping costs Redis nothing. A failed sample keeps the last values.
pub async fn sample_stream(
    redis: service::redis::Conn,
    stream_key: String,
    metrics: std::sync::Arc<Metrics>,
    stop: tokio_util::sync::CancellationToken,
) {
    let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    service::redis::group::sample(
        redis,
        stream_key,
        SAMPLE_INTERVAL,
        stop.cancelled(),
        |stats| {
            metrics.stream_length.set(gauge(stats.length));
            metrics.stream_lag.set(gauge(stats.lag));
            metrics.stream_pending.set(gauge(stats.pending));
        },
    )
    .await;
}
