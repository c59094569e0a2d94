//! The metrics registry of one service instance. Each instance has its own [`Registry`], so several
//! instances in one test process keep separate counts; the process collector (CPU, memory, open files)
//! is registered in every one.

use prometheus::core::Collector;
use prometheus::{Encoder, Registry, TextEncoder};

pub use prometheus;

/// A registry with the process metrics in it.
pub fn registry() -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    {
        // Registering the one process collector in a fresh registry cannot collide.
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
    }
    registry
}

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

/// A counter registered in `registry`.
pub fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::IntCounter {
    register(registry, prometheus::IntCounter::new(name, help))
}

/// A counter with labels registered in `registry`.
pub fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::IntCounterVec {
    register(
        registry,
        prometheus::IntCounterVec::new(prometheus::Opts::new(name, help), labels),
    )
}

/// A gauge registered in `registry`.
pub fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::IntGauge {
    register(registry, prometheus::IntGauge::new(name, help))
}

/// A histogram (seconds) registered in `registry`.
pub fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
) -> prometheus::Histogram {
    register(
        registry,
        prometheus::Histogram::with_opts(seconds(name, help, buckets)),
    )
}

/// A histogram (seconds) with labels registered in `registry`.
pub fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> prometheus::HistogramVec {
    register(
        registry,
        prometheus::HistogramVec::new(seconds(name, help, buckets), labels),
    )
}

/// The options of a histogram in seconds with `buckets`.
fn seconds(name: &str, help: &str, buckets: &[f64]) -> prometheus::HistogramOpts {
    prometheus::HistogramOpts::new(name, help).buckets(buckets.to_vec())
}

/// Buckets for request and delivery latencies, from 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
