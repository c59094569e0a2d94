//! The three services in this test's process, each on port 0: one at a time ([`spawn_ingest`],
//! [`spawn_persister`], [`spawn_gateway`]) or together on one test's stream and database ([`Relay`]), with
//! a client for each endpoint.

use std::future::Future;
use std::time::Duration;

use push_gateway::test_hooks::{Gate, Seam};
use service::Settings;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::ws::Ws;
use crate::Cleanup;

/// One service running in this process. Dropping it sends the stop signal; [`Running::stop`] also waits
/// until the service has finished.
pub struct Running {
    pub port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    fn run<F, E>(port: u16, run: impl FnOnce(oneshot::Receiver<()>) -> F) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<anyhow::Error>,
    {
        let (tx, rx) = oneshot::channel();
        let service = run(rx);
        Self {
            port,
            stop: Some(tx),
            task: Some(tokio::spawn(
                async move { service.await.map_err(Into::into) },
            )),
        }
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A clean stop: in-flight work finishes first. Fails the test if that takes over 10 s or the service
    /// ends with an error.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task.take().unwrap())
            .await
            .expect("the service stopped within 10 s")
            .unwrap()
            .unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The stop signal as the services take it: resolves when sent, or when the sender is gone.
async fn stopped(rx: oneshot::Receiver<()>) {
    rx.await.unwrap_or(())
}

/// ingest-api on `settings` (which must name a migrated database for reads).
pub async fn spawn_ingest(settings: Settings) -> Running {
    let app = ingest_api::Application::build(settings).await.unwrap();
    Running::run(app.port(), |rx| app.run_until_stopped(stopped(rx)))
}

/// A persister on `settings`; it creates and migrates its database itself.
pub async fn spawn_persister(settings: Settings) -> Running {
    let app = persister::Application::build(settings).await.unwrap();
    Running::run(app.port(), |rx| app.run_until_stopped(stopped(rx)))
}

/// A push-gateway on `settings`, once its reader has taken its position.
pub async fn spawn_gateway(settings: Settings) -> Running {
    spawn_gateway_held(settings, None).await.0
}

/// [`spawn_gateway`] holding every resuming session at `seam` (see `push_gateway::test_hooks`).
pub async fn spawn_gateway_held(
    settings: Settings,
    seam: Option<Seam>,
) -> (Running, Option<Arc<Gate>>) {
    let app = push_gateway::Application::build(settings).await.unwrap();
    let gate = seam.map(|seam| app.gate(seam));
    let gateway = Running::run(app.port(), |rx| app.run_until_stopped(stopped(rx)));
    // The reader starts at the stream's newest entry: the gateway is ready once it has that position.
    let ready = format!("{}/readyz", gateway.url());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // Each poll has a deadline of its own: a gateway that accepts but never answers fails the test.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    while !client
        .get(&ready)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway was not ready within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (gateway, gate)
}

/// ingest-api, a persister and a push-gateway on one test's stream and freshly migrated database.
pub async fn spawn_relay(settings: Settings) -> Relay {
    Relay::start(settings, true, true).await
}

/// Relay's services on one test's stream and database, which are removed when it is dropped. ingest-api
/// always runs; the persister and the gateway where the test needs them.
pub struct Relay {
    pub settings: Settings,
    pub client: reqwest::Client,
    ingest: Running,
    persister: Option<Running>,
    gateway: Option<Running>,
    _cleanup: Cleanup,
}

impl Relay {
    /// ingest-api alone, on a migrated database (for tests that write rows themselves).
    pub async fn ingest_only(settings: Settings) -> Self {
        Self::start(settings, false, false).await
    }

    /// ingest-api and a persister: the whole write path.
    pub async fn pipeline(settings: Settings) -> Self {
        Self::start(settings, true, false).await
    }

    /// ingest-api and a push-gateway: live delivery, nothing stored.
    pub async fn live(settings: Settings) -> Self {
        Self::start(settings, false, true).await
    }

    async fn start(mut settings: Settings, persister: bool, gateway: bool) -> Self {
        let cleanup = Cleanup(settings.clone());
        crate::db::prepare_database(&settings).await;
        let ingest = spawn_ingest(settings.clone()).await;
        // The live page posts to this ingest-api.
        settings.ingest_public_url = ingest.url();
        let mut relay = Self {
            settings,
            client: reqwest::Client::new(),
            ingest,
            persister: None,
            gateway: None,
            _cleanup: cleanup,
        };
        if persister {
            relay.start_persister().await;
        }
        if gateway {
            relay.start_gateway(None).await;
        }
        relay
    }

    pub async fn start_persister(&mut self) {
        self.persister = Some(spawn_persister(self.settings.clone()).await);
    }

    /// Starts the gateway (again), on `port` if given.
    pub async fn start_gateway(&mut self, port: Option<u16>) {
        let mut settings = self.settings.clone();
        if let Some(port) = port {
            settings.gateway_addr = format!("127.0.0.1:{port}").parse().unwrap();
        }
        self.gateway = Some(spawn_gateway(settings).await);
    }

    /// Starts the gateway holding every resuming session at `seam`; the gate lets each one go on.
    pub async fn start_gateway_held(&mut self, seam: Seam) -> Arc<Gate> {
        let (gateway, gate) = spawn_gateway_held(self.settings.clone(), Some(seam)).await;
        self.gateway = Some(gateway);
        gate.expect("a gate was taken")
    }

    /// Stops the gateway cleanly and waits until it has gone.
    pub async fn stop_gateway(&mut self) {
        self.gateway.take().expect("a gateway").stop().await;
    }

    /// `http://127.0.0.1:<port>` of ingest-api.
    pub fn ingest_url(&self) -> String {
        self.ingest.url()
    }

    /// `http://127.0.0.1:<port>` of the persister (health and metrics).
    pub fn persister_url(&self) -> String {
        self.persister.as_ref().expect("a persister").url()
    }

    /// `http://127.0.0.1:<port>` of the gateway.
    pub fn gateway_url(&self) -> String {
        self.gateway.as_ref().expect("a gateway").url()
    }

    pub fn gateway_port(&self) -> u16 {
        self.gateway.as_ref().expect("a gateway").port
    }

    /// `127.0.0.1:<port>` of the gateway.
    pub fn gateway_addr(&self) -> String {
        format!("127.0.0.1:{}", self.gateway_port())
    }

    /// `POST /messages`, to add headers and a body to.
    pub fn post(&self) -> reqwest::RequestBuilder {
        self.client.post(format!("{}/messages", self.ingest_url()))
    }

    pub async fn post_json(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.post_as("application/json", body).await
    }

    pub async fn post_ndjson(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.post_as("application/x-ndjson", body).await
    }

    /// `POST /messages` of `body` as `content_type`, with API key `key`.
    pub async fn post_with_key(
        &self,
        key: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.post()
            .bearer_auth(key)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// `POST /messages` of `body` as `content_type`.
    pub async fn post_as(
        &self,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.post()
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Posts one JSON message, asserts the 202, and returns its body.
    pub async fn publish(&self, body: String) -> serde_json::Value {
        let res = self.post_json(body).await;
        assert_eq!(res.status(), 202);
        res.json().await.unwrap()
    }

    /// `POST /channels/{channel}/messages` of `body` as `content_type`.
    pub async fn post_to(
        &self,
        channel: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .post(format!("{}/channels/{channel}/messages", self.ingest_url()))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Posts one JSON message to `channel`, asserts the 202, and returns its body.
    pub async fn publish_to(&self, channel: &str, body: String) -> serde_json::Value {
        let res = self.post_to(channel, "application/json", body).await;
        assert_eq!(res.status(), 202);
        res.json().await.unwrap()
    }

    /// Posts `lines` as one NDJSON batch, asserts the 202, and returns the accepted ids in order.
    pub async fn publish_batch(&self, lines: &[String]) -> Vec<serde_json::Value> {
        let res = self.post_ndjson(lines.join("\n")).await;
        assert_eq!(res.status(), 202);
        res.json().await.unwrap()
    }

    /// Publishes the messages `0`, `1`, … up to `n - 1` as one NDJSON batch; returns the accepted ids.
    pub async fn publish_numbers(&self, n: usize) -> Vec<serde_json::Value> {
        self.publish_batch(&(0..n).map(|i| i.to_string()).collect::<Vec<_>>())
            .await
    }

    /// `GET` a path (and query) of ingest-api.
    pub async fn get(&self, path_and_query: &str) -> reqwest::Response {
        self.get_url(format!("{}{path_and_query}", self.ingest_url()))
            .await
    }

    /// `GET` any URL (another service, another instance) with the test's client.
    pub async fn get_url(&self, url: impl reqwest::IntoUrl) -> reqwest::Response {
        self.client.get(url).send().await.unwrap()
    }

    /// `GET` a path (and query) of ingest-api that answers a JSON array, such as a page of `/messages`.
    pub async fn get_page(&self, path_and_query: &str) -> Vec<serde_json::Value> {
        self.get(path_and_query).await.json().await.unwrap()
    }

    /// Every persisted message, through `GET /messages`.
    pub async fn get_messages(&self) -> Vec<serde_json::Value> {
        let res = self.get("/messages").await;
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    /// Polls `GET /messages` until it holds `n` messages (or what it holds after 20 s).
    pub async fn wait_for_messages(&self, n: usize) -> Vec<serde_json::Value> {
        crate::poll_until(
            Duration::from_secs(20),
            || self.get_messages(),
            |all| all.len() >= n,
        )
        .await
    }

    /// A WebSocket client on the gateway's `/ws{query}`.
    pub async fn ws_connect(&self, query: &str) -> Ws {
        Ws(crate::ws::connect(&self.gateway_addr(), query)
            .await
            .unwrap())
    }

    /// Entries in this test's stream.
    pub async fn stream_len(&self) -> usize {
        crate::stream_len(&self.settings)
    }

    /// Rows in this test's database, counted by SQL.
    pub fn row_count(&self) -> i64 {
        crate::count_rows(&self.settings.database_url)
    }
}
