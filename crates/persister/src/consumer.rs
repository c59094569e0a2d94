//! The consumer loop of one persister replica: read a batch, store it, acknowledge it, repeat.
//!
//! Nothing is acknowledged that is not committed. When Postgres fails, the same batch is retried with
//! backoff until it commits or the service is stopped; a stop leaves the batch pending in the group, and
//! the next start of this replica (same `CONSUMER_NAME`) reads its pending entries before anything new.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use diesel::{Connection, PgConnection};
use model::redis_stream::deadpool_redis::Pool;
use model::redis_stream::redis::aio::ConnectionManager;
use model::{DecodeError, Settings};
use store::NewMessage;
use tokio_util::sync::CancellationToken;

use crate::group::{self, Cursor, Delivered};
use crate::metrics::Metrics;

pub struct Consumer {
    settings: Settings,
    /// Connections for `XREADGROUP BLOCK`, which must not share the multiplexed connection.
    reads: Pool,
    /// Acks and dead letters.
    redis: ConnectionManager,
    /// This replica's one Postgres connection, taken while a batch is being stored on the blocking pool
    /// and dropped after an error so that the next attempt reconnects.
    pg: Option<PgConnection>,
    metrics: Arc<Metrics>,
}

/// Exponential backoff between retries, capped.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Self(Self::FIRST)
    }

    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }

    /// Sleeps for the current delay (or until `stop`) and doubles it. Returns false when stopped.
    async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let delay = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        tokio::select! {
            () = stop.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

impl Consumer {
    pub fn new(
        settings: Settings,
        reads: Pool,
        redis: ConnectionManager,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            settings,
            reads,
            redis,
            pg: None,
            metrics,
        }
    }

    /// Runs until `stop` is cancelled; the batch in hand is finished (or left pending) before returning.
    pub async fn run(mut self, stop: CancellationToken) {
        let key = self.settings.stream_key.clone();
        let mut backoff = Backoff::new();
        while let Err(e) = group::ensure_group(&mut self.redis, &key).await {
            log::warn!("cannot create consumer group on `{key}` (retrying): {e}");
            if !backoff.wait(&stop).await {
                return;
            }
        }
        log::info!(
            "consumer `{}` reading `{key}` in group `{}`",
            self.settings.consumer_name,
            model::PERSISTER_GROUP
        );
        let mut cursor = Cursor::Pending("0-0".into());
        while !stop.is_cancelled() {
            let batch = tokio::select! {
                () = stop.cancelled() => break,
                read = self.read(&cursor) => read,
            };
            let batch = match batch {
                Ok(batch) => {
                    backoff.reset();
                    batch
                }
                Err(e) => {
                    log::warn!("reading `{key}` failed (retrying): {e:#}");
                    if !backoff.wait(&stop).await {
                        break;
                    }
                    continue;
                }
            };
            if let Cursor::Pending(_) = cursor {
                match batch.last() {
                    Some(last) => cursor = Cursor::Pending(last.raw_id.clone()),
                    None => {
                        log::info!("own pending entries drained; reading new entries");
                        cursor = Cursor::New;
                        continue;
                    }
                }
            }
            if !batch.is_empty() {
                self.handle(batch, &stop).await;
            }
        }
        log::info!("consumer `{}` stopped", self.settings.consumer_name);
    }

    async fn read(&mut self, cursor: &Cursor) -> anyhow::Result<Vec<Delivered>> {
        let mut conn = self
            .reads
            .get()
            .await
            .context("getting a Redis connection")?;
        let s = &self.settings;
        Ok(group::read(
            &mut conn,
            &s.stream_key,
            &s.consumer_name,
            cursor,
            s.persister_batch_size,
            s.persister_block_ms,
        )
        .await?)
    }

    /// Stores what can be stored, dead-letters what never can, then acknowledges both.
    async fn handle(&mut self, batch: Vec<Delivered>, stop: &CancellationToken) {
        let mut rows = Vec::with_capacity(batch.len());
        let mut done: Vec<String> = Vec::with_capacity(batch.len());
        let mut poison = Vec::new();
        for delivered in batch {
            match (delivered.stream_id, delivered.entry) {
                (Ok(stream_id), Ok(entry)) => {
                    rows.push(NewMessage::from_entry(stream_id, entry));
                    done.push(delivered.raw_id);
                }
                // A newer service wrote it: leave it pending for an upgraded replica to claim.
                (_, Err(e @ DecodeError::UnsupportedVersion(_))) => {
                    log::warn!("entry {} left pending: {e}", delivered.raw_id);
                }
                (Err(e), _) | (_, Err(e)) => {
                    poison.push((delivered.raw_id, delivered.fields, e.to_string()))
                }
            }
        }
        if !self.store(rows, stop).await {
            return; // Stopped before the commit: nothing is acknowledged, the batch stays pending.
        }
        let key = self.settings.stream_key.clone();
        for (raw_id, fields, reason) in poison {
            match group::dead_letter(&mut self.redis, &key, &raw_id, &fields, &reason).await {
                Ok(()) => {
                    log::warn!("entry {raw_id} moved to the dead-letter stream: {reason}");
                    self.metrics.dead_lettered.inc();
                    done.push(raw_id);
                }
                Err(e) => log::warn!("cannot dead-letter entry {raw_id} (it stays pending): {e}"),
            }
        }
        let ids: Vec<&str> = done.iter().map(String::as_str).collect();
        match group::ack(&mut self.redis, &key, &ids).await {
            Ok(n) => self.metrics.acked.inc_by(n as u64),
            // The rows are committed; the entries will be delivered again and stored as no-ops.
            Err(e) => log::warn!(
                "XACK of {} entries failed (they will be redelivered): {e}",
                ids.len()
            ),
        }
    }

    /// Commits `rows`, retrying with backoff. False when stopped before a commit.
    async fn store(&mut self, rows: Vec<NewMessage>, stop: &CancellationToken) -> bool {
        if rows.is_empty() {
            return true;
        }
        let rows = Arc::new(rows);
        let mut backoff = Backoff::new();
        loop {
            let started = std::time::Instant::now();
            let conn = self.pg.take();
            let url = self.settings.database_url.clone();
            let batch = Arc::clone(&rows);
            let outcome = tokio::task::spawn_blocking(move || {
                let mut conn = match conn {
                    Some(conn) => conn,
                    None => PgConnection::establish(&url).context("connecting to Postgres")?,
                };
                let stored =
                    store::write::store_batch(&mut conn, &batch).context("storing a batch");
                stored.map(|n| (n, conn))
            })
            .await;
            match outcome {
                Ok(Ok((new_rows, conn))) => {
                    self.pg = Some(conn);
                    self.metrics.stored.inc_by(new_rows as u64);
                    self.metrics
                        .batch_seconds
                        .observe(started.elapsed().as_secs_f64());
                    return true;
                }
                Ok(Err(e)) => log::warn!("{} entries not stored yet (retrying): {e:#}", rows.len()),
                Err(e) => log::error!("storing task failed (retrying): {e}"),
            }
            self.metrics.store_errors.inc();
            if !backoff.wait(stop).await {
                return false;
            }
        }
    }
}
