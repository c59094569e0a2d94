//! The consumer loop of one persister replica: read a batch, store it, acknowledge it, repeat; and, on
//! the side, claim what dead replicas left pending and trim what everyone has stored.
//!
//! Up to [`IN_FLIGHT`] batches are stored at once, each in its own transaction on its own Postgres
//! connection, and each is acknowledged as soon as *its* transaction has committed: while one batch waits
//! for its commit (`fdatasync`), the next one is already being copied, and its acknowledgement overlaps
//! the next batch's store. Rows therefore commit out of stream order, as they do with several replicas;
//! readers only see the prefix below the group's oldest pending entry (ingest-api's `watermark.rs`).
//!
//! Nothing is acknowledged that is not committed. When Postgres is unreachable, the same batch is retried
//! with backoff until it commits or the service is stopped; a stop leaves the batch pending in the group,
//! and the next start of this replica (same `CONSUMER_NAME`) reads its own pending entries before anything
//! new. When Postgres is reachable but rejects the batch, the batch is split and stored row by row, so one
//! bad entry goes to the dead-letter stream and does not hold back its neighbours.

use std::sync::Arc;
use std::time::{Duration, Instant};

use service::redis::Conn;
use service::{Backoff, Settings};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::batches::Batches;
use crate::claim;
use crate::group;
use crate::metrics::Metrics;
use crate::reading::read_ahead;
use crate::test_hooks::{Armed, Seam};
use service::redis::raw::StreamReads;

/// How often the stream is trimmed below the acknowledged point.
const TRIM_INTERVAL: Duration = Duration::from_secs(5);
/// At most this many entries are trimmed per pass.
const TRIM_STEP: u64 = 50_000;
/// Entries one trim script walks at most. The script walks entries inside Redis, which serves nobody
/// else meanwhile: 50,000 at once took ~140 ms during a drain (every client's commands waited behind
/// it); a pass is now slices of this many, other clients' commands served between them.
const TRIM_SLICE: u64 = 5_000;
/// The longest one statement of the persister's session may run: a batch COPY takes milliseconds.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a statement may wait for a lock before it fails and the batch is retried (and a SIGTERM
/// is noticed): a deploy's DDL, `VACUUM FULL` or a stray `LOCK TABLE` cannot hang the persister.
const LOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// A consumer with nothing pending that has been silent this long is a replica that was scaled away.
const CONSUMER_GONE_MS: u64 = 3_600_000;
/// Batches stored at the same time, each on its own Postgres connection. Two is enough to hide one
/// batch's commit behind the next one's `COPY`; more would only queue on the same disk.
const IN_FLIGHT: usize = 2;

pub struct Consumer {
    settings: Settings,
    /// Connections for `XREADGROUP BLOCK`, which must not share the multiplexed connection.
    reads: StreamReads,
    /// Acks, claims, trims and dead letters.
    redis: Conn,
    /// What every batch in flight shares.
    batches: Arc<Batches>,
    metrics: Arc<Metrics>,
    claim_cursor: String,
    next_claim: Instant,
    next_trim: Instant,
}

impl Consumer {
    pub fn new(
        settings: Settings,
        reads: StreamReads,
        redis: Conn,
        metrics: Arc<Metrics>,
        seam: Option<Seam>,
    ) -> Self {
        let now = Instant::now();
        // A COPY that waits on a lock (DDL, VACUUM FULL) fails after LOCK_TIMEOUT and is retried, with
        // backoff, where a stop is noticed — a blocking task cannot be cancelled, so it must end by itself.
        let url = store::url::with_session_timeouts(
            &store::with_timeouts(&settings.database_url, 5),
            STATEMENT_TIMEOUT,
            LOCK_TIMEOUT,
        );
        let batches = Arc::new(Batches {
            settings: settings.clone(),
            url,
            redis: redis.clone(),
            metrics: Arc::clone(&metrics),
            idle_pg: std::sync::Mutex::new(Vec::with_capacity(IN_FLIGHT)),
            seam: Armed::new(seam),
        });
        Self {
            settings,
            reads,
            redis,
            batches,
            metrics,
            claim_cursor: "0-0".into(),
            next_claim: now,
            next_trim: now,
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
        // Reading runs one batch ahead of storing, so Redis and Postgres work at the same time. A batch
        // read ahead is pending on this consumer until it is stored and acknowledged: if the process
        // stops first, the next start of this replica (or a claim) picks it up.
        let (batches, mut next) = tokio::sync::mpsc::channel(1);
        let reader = tokio::spawn(read_ahead(
            self.settings.clone(),
            self.reads.clone(),
            self.redis.clone(),
            batches,
            Arc::clone(&self.metrics),
            stop.clone(),
        ));
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut in_flight = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some(done) = in_flight.join_next() => log_failed(done),
                batch = next.recv(), if in_flight.len() < IN_FLIGHT => match batch {
                    Some(entries) => {
                        in_flight.spawn(Arc::clone(&self.batches).handle(entries, stop.clone()));
                    }
                    None => break,
                },
                _ = tick.tick() => {}
            }
            self.maintain(&mut in_flight, &stop).await;
        }
        // The batches in hand are committed and acknowledged, or (stopped) left pending.
        while let Some(done) = in_flight.join_next().await {
            log_failed(done);
        }
        drop(next);
        let _ = reader.await;
        log::info!("consumer `{}` stopped", self.settings.consumer_name);
    }

    /// Claims entries other consumers left pending too long, and trims the stream; each when due.
    async fn maintain(&mut self, in_flight: &mut JoinSet<()>, stop: &CancellationToken) {
        let now = Instant::now();
        if now >= self.next_claim {
            self.next_claim =
                now + Duration::from_millis((self.settings.claim_idle_ms / 2).max(500));
            // `XAUTOCLAIM` does not spare this consumer's own entries: a batch that has been retried
            // for longer than CLAIM_IDLE_MS (Postgres down) would be claimed back while it is in flight,
            // its delivery count raised by every pass until it is dead-lettered *and* stored. So a claim
            // pass waits for the batches in flight, as when batches were stored one at a time.
            while let Some(done) = in_flight.join_next().await {
                log_failed(done);
            }
            self.claim(stop).await;
        }
        if now >= self.next_trim {
            self.next_trim = now + TRIM_INTERVAL;
            let key = self.settings.stream_key.clone();
            // Retention yields to MAX_STREAM_BYTES: kept entries never take more than half of it, so
            // retention alone never makes ingest-api refuse a post.
            let keep_bytes = self.settings.max_stream_bytes / 2;
            let mut trimmed = 0;
            while trimmed < TRIM_STEP {
                match crate::trim::trim_acknowledged(
                    &mut self.redis,
                    &key,
                    self.settings.stream_retention,
                    keep_bytes,
                    TRIM_SLICE,
                )
                .await
                {
                    // Each call removes what it measured as over; a call that removed nothing means
                    // the stream is within both bounds, or the rest is not acknowledged yet.
                    Ok(0) => break,
                    Ok(n) => trimmed += n,
                    Err(e) => {
                        log::warn!("trimming `{key}` failed: {e}");
                        break;
                    }
                }
            }
            if trimmed > 0 {
                log::debug!("trimmed {trimmed} acknowledged entries from `{key}`");
            }
            let me = self.settings.consumer_name.clone();
            match claim::remove_idle_consumers(&mut self.redis, &key, &me, CONSUMER_GONE_MS).await {
                Ok(gone) if !gone.is_empty() => {
                    log::info!("removed idle consumers with nothing pending: {gone:?}")
                }
                Ok(_) => {}
                Err(e) => log::warn!("listing consumers failed: {e}"),
            }
        }
    }

    /// `XAUTOCLAIM` pass: entries pending on any consumer for `CLAIM_IDLE_MS` become this consumer's and are
    /// handled like a fresh batch; those already delivered `MAX_DELIVERIES` times are dead-lettered.
    async fn claim(&mut self, stop: &CancellationToken) {
        let s = &self.settings;
        let (key, me, idle, count) = (
            s.stream_key.clone(),
            s.consumer_name.clone(),
            s.claim_idle_ms,
            s.persister_batch_size,
        );
        let budget = group::ReplyBudget::from_settings(s);
        let claimed = claim::autoclaim(
            &mut self.redis,
            &key,
            &me,
            idle,
            &self.claim_cursor,
            count,
            budget,
        )
        .await;
        let (mut batch, next) = match claimed {
            Ok(claimed) => claimed,
            Err(e) => {
                log::warn!("XAUTOCLAIM on `{key}` failed: {e}");
                return;
            }
        };
        self.claim_cursor = next;
        let _ = self.metrics.observe_read(&batch);
        if batch.is_empty() {
            return;
        }
        // XAUTOCLAIM raised each entry's delivery count; read it so that an entry that keeps failing
        // (it crashed whoever held it, or no replica understands its version) is dead-lettered below
        // rather than claimed again and again. Without the counts the batch is still handled: only the
        // dead-lettering of over-delivered entries waits for the next claim.
        if let Err(e) = claim::with_delivery_counts(&mut self.redis, &key, &me, &mut batch).await {
            log::warn!("reading delivery counts of claimed entries failed: {e}");
        }
        log::info!(
            "claimed {} entries left pending by other consumers",
            batch.len()
        );
        self.metrics.claimed.inc_by(batch.len() as u64);
        self.metrics.redeliveries.inc_by(batch.len() as u64);
        Arc::clone(&self.batches).handle(batch, stop.clone()).await;
    }
}

/// A batch task that panicked: its entries stay pending (nothing was acknowledged after the panic) and
/// come back with the next claim.
fn log_failed(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        log::error!("a batch task failed (its entries stay pending): {e}");
    }
}
