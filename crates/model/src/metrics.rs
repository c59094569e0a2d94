//! Helpers for the `/metrics` endpoint every service serves. Each service instance has its own
//! [`Registry`], so several instances in one test process keep separate counts.

use prometheus::core::Collector;
use prometheus::{Encoder, Registry, TextEncoder};

pub use prometheus;

/// Registers `metric` and hands it back. Metric definitions are static, so a failure is a programming
/// error caught by every test that builds the service.
pub fn register<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.unwrap_or_else(|e| panic!("invalid metric definition: {e}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("metric registered twice: {e}"));
    metric
}

/// The registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    // Encoding counters, gauges and histograms into a Vec does not fail.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}
