//! What every cluster test starts from: its settings on a cluster of its own, a runtime for its WebSocket
//! clients, and a blocking HTTP client with a deadline.

use std::time::Duration;

use testkit::procs::{OwnCluster, Service};
use testkit::Cleanup;

/// A test's settings on `cluster`: its own database, and its own stream key in a hash tag (the cluster
/// needs every key of the stream in one slot).
pub fn cluster_settings(cluster: &OwnCluster) -> (service::Settings, Cleanup) {
    let mut settings = testkit::test_settings();
    settings.redis_url = cluster.url();
    settings.stream_key = format!("{{{}}}", settings.stream_key);
    (settings.clone(), Cleanup(settings))
}

/// A runtime for the WebSocket clients of a test that is otherwise blocking.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A blocking HTTP client whose every request has a deadline of 10 s.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `POST /messages` of `body`, with an `Idempotency-Key` when given: the status and the JSON answer.
pub fn post(ingest: &Service, body: &str, key: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = client()
        .post(format!("{}/messages", ingest.url()))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let res = req.send().unwrap();
    let status = res.status().as_u16();
    (status, res.json().unwrap_or_default())
}
