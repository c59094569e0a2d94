//! Starting a real persister in-process and feeding its stream directly.

use std::time::{Duration, Instant};

use model::redis_stream::xadd_cmd;
use model::{now_micros, StreamEntry};
use serde_json::value::RawValue;
use service::Settings;
use testkit::Cleanup;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub struct RunningPersister {
    pub port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningPersister {
    pub async fn start(settings: Settings) -> Self {
        let app = persister::Application::build(settings).await.unwrap();
        let port = app.port();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move { rx.await.unwrap_or(()) }));
        Self {
            port,
            stop: Some(tx),
            task,
        }
    }

    /// A clean stop: the batch in hand finishes first.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

impl Drop for RunningPersister {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A test's settings and the clean-up of its database and stream.
pub fn setup() -> (Settings, Cleanup) {
    let settings = testkit::test_settings();
    (settings.clone(), Cleanup(settings))
}

pub fn entry(payload: &str) -> StreamEntry {
    StreamEntry {
        id: Uuid::now_v7(),
        received_at: now_micros(),
        payload: RawValue::from_string(payload.into()).unwrap(),
    }
}

/// Appends entries the way ingest-api does; returns their stream ids.
pub fn xadd(settings: &Settings, entries: &[StreamEntry]) -> Vec<String> {
    let mut conn = testkit::redis(settings);
    entries
        .iter()
        .map(|e| xadd_cmd(&settings.stream_key, e).query(&mut conn).unwrap())
        .collect()
}

/// Polls the row count until it reaches `n` or 20 s pass; returns the last count.
pub async fn wait_for_rows(settings: &Settings, n: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = settings.database_url.clone();
        let count = tokio::task::spawn_blocking(move || testkit::count_rows(&url))
            .await
            .unwrap();
        if count >= n || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Entries pending in the persister group (delivered, not acknowledged).
pub fn pending(settings: &Settings) -> usize {
    let mut conn = testkit::redis(settings);
    let reply: (usize, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(&settings.stream_key)
        .arg(model::PERSISTER_GROUP)
        .query(&mut conn)
        .unwrap();
    reply.0
}

/// The entries of the test's dead-letter stream, once it holds `n` (or after 5 s).
pub async fn dead_letters(settings: &Settings, n: usize) -> Vec<redis::streams::StreamId> {
    let mut conn = testkit::redis(settings);
    let dead_key = model::dead_letter_key(&settings.stream_key);
    for _ in 0..100 {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&dead_key)
            .arg("-")
            .arg("+")
            .query(&mut conn)
            .unwrap();
        if reply.ids.len() >= n {
            return reply.ids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Vec::new()
}
