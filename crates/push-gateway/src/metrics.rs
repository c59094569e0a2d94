//! The Prometheus metrics of one push-gateway instance (HTTP request metrics come from `service::http`).

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, Registry};
use service::metrics::{counter, counter_vec, gauge, histogram, prometheus, LATENCY_BUCKETS};

pub struct Metrics {
    pub registry: Registry,
    pub connections: IntGauge,
    /// Channel patterns subscribed to, over every socket (`*` counts one).
    pub subscriptions: IntGauge,
    pub entries_read: IntCounter,
    /// Frames written to clients, by kind: `live`, `replay`, `gap`.
    pub frames: IntCounterVec,
    pub slow_clients: IntCounter,
    pub catch_ups: IntCounter,
    pub refused: IntCounter,
    /// From a message's `received_at` to its frame written to a client.
    pub delivery_delay: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let r = service::metrics::registry();
        Self {
            connections: gauge(&r, "relay_gateway_connections", "Open WebSocket clients"),
            subscriptions: gauge(
                &r,
                "relay_gateway_subscriptions",
                "Channel patterns subscribed to, over every WebSocket",
            ),
            entries_read: counter(
                &r,
                "relay_gateway_entries_read_total",
                "Stream entries read",
            ),
            frames: counter_vec(
                &r,
                "relay_gateway_frames_total",
                "Frames written to clients, by kind",
                &["kind"],
            ),
            slow_clients: counter(
                &r,
                "relay_gateway_slow_clients_total",
                "Clients closed with 1013 for falling behind",
            ),
            catch_ups: counter(
                &r,
                "relay_gateway_catch_ups_total",
                "Times a client's queue filled and it caught up from recent frames or the stream",
            ),
            refused: counter(
                &r,
                "relay_gateway_refused_total",
                "Connections refused at MAX_CONNECTIONS",
            ),
            delivery_delay: histogram(
                &r,
                "relay_gateway_delivery_delay_seconds",
                "From a message's received_at to its frame written to a client (live: once per burst of frames, for its newest)",
                LATENCY_BUCKETS,
            ),
            registry: r,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
