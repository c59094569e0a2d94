//! `spawn_app()`: the real ingest-api (and, for round trips, a real persister) on port 0, with a fresh
//! database and stream key that are dropped when the test ends.

use std::time::{Duration, Instant};

use service::Settings;
use tokio::task::JoinHandle;

pub struct TestApp {
    pub address: String,
    pub settings: Settings,
    pub client: reqwest::Client,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

pub use testkit::{cleanup, test_settings};

/// ingest-api alone, on a migrated database (for tests that write rows themselves).
pub async fn spawn_app() -> TestApp {
    spawn_with(test_settings(), false).await
}

/// ingest-api and a persister: the whole write path.
pub async fn spawn_pipeline() -> TestApp {
    spawn_with(test_settings(), true).await
}

pub async fn spawn_with(settings: Settings, with_persister: bool) -> TestApp {
    let url = settings.database_url.clone();
    tokio::task::spawn_blocking(move || store::prepare_database(&url))
        .await
        .unwrap()
        .unwrap();
    let mut app = TestApp {
        address: String::new(),
        settings: settings.clone(),
        client: reqwest::Client::new(),
        stop: Vec::new(),
        tasks: Vec::new(),
    };
    let ingest = ingest_api::Application::build(settings.clone())
        .await
        .unwrap();
    app.address = format!("http://127.0.0.1:{}", ingest.port());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    app.stop.push(tx);
    app.tasks.push(tokio::spawn(async move {
        ingest
            .run_until_stopped(async move { rx.await.unwrap_or(()) })
            .await
            .unwrap();
    }));
    if with_persister {
        app.start_persister(settings).await;
    }
    app
}

impl TestApp {
    pub async fn start_persister(&mut self, settings: Settings) {
        let persister = persister::Application::build(settings).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.stop.push(tx);
        self.tasks.push(tokio::spawn(async move {
            persister
                .run_until_stopped(async move { rx.await.unwrap_or(()) })
                .await
                .unwrap();
        }));
    }

    pub async fn post_json(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(format!("{}/messages", self.address))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path_and_query: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path_and_query}", self.address))
            .send()
            .await
            .unwrap()
    }

    /// Every persisted message, through the API.
    pub async fn all_messages(&self) -> Vec<serde_json::Value> {
        let res = self.get("/messages").await;
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    /// Polls `GET /messages` until it holds `n` messages (or fails after 20 s).
    pub async fn wait_for_messages(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let all = self.all_messages().await;
            if all.len() >= n || Instant::now() > deadline {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Entries in this test's stream.
    pub async fn stream_len(&self) -> usize {
        let client = redis::Client::open(self.settings.redis_url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("XLEN")
            .arg(&self.settings.stream_key)
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// Rows in this test's database, counted by SQL.
    pub fn row_count(&self) -> i64 {
        testkit::count_rows(&self.settings.database_url)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        for tx in self.stop.drain(..) {
            let _ = tx.send(());
        }
        for task in self.tasks.drain(..) {
            task.abort();
        }
        cleanup(&self.settings);
    }
}
