//! The Prometheus metrics of one push-gateway instance.

use model::metrics::{prometheus, register};
use prometheus::{IntCounter, IntGauge, Registry};

pub struct Metrics {
    pub registry: Registry,
    pub connections: IntGauge,
    pub entries_read: IntCounter,
    pub frames_sent: IntCounter,
    pub slow_clients: IntCounter,
    pub refused: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        Self {
            connections: register(
                &registry,
                IntGauge::new("relay_gateway_connections", "Open WebSocket clients"),
            ),
            entries_read: register(
                &registry,
                IntCounter::new("relay_gateway_entries_read_total", "Stream entries read"),
            ),
            frames_sent: register(
                &registry,
                IntCounter::new("relay_gateway_frames_sent_total", "Frames sent to clients"),
            ),
            slow_clients: register(
                &registry,
                IntCounter::new(
                    "relay_gateway_slow_clients_total",
                    "Clients closed with 1013 for falling behind",
                ),
            ),
            refused: register(
                &registry,
                IntCounter::new(
                    "relay_gateway_refused_total",
                    "Connections refused at MAX_CONNECTIONS",
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
