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

use diesel::PgConnection;
use model::DecodeError;
use service::redis::Conn;
use service::{Backoff, Settings};
use store::NewMessage;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::group::{self, Delivered};
use crate::metrics::Metrics;
use crate::reading::read_ahead;
use crate::storing::{store_blocking, Outcome};
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

/// What a batch needs to be stored, dead-lettered and acknowledged on its own task.
struct Batches {
    settings: Settings,
    /// The session's URL: every statement bounded (`store::url::with_session_timeouts`).
    url: String,
    redis: Conn,
    metrics: Arc<Metrics>,
    /// Idle Postgres connections, at most one per batch in flight. A batch takes one while it is being
    /// stored on the blocking pool; one is dropped after an error so that the next attempt reconnects.
    idle_pg: std::sync::Mutex<Vec<PgConnection>>,
    /// The test-only hold point (`test_hooks.rs`); disarmed in production.
    seam: Armed,
}

/// The result of storing a batch.
enum Stored {
    /// Every row is committed except these.
    Committed(Outcome),
    /// Stopped before anything was committed.
    Stopped,
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
            match group::remove_idle_consumers(&mut self.redis, &key, &me, CONSUMER_GONE_MS).await {
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
        let claimed = group::autoclaim(
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
        if let Err(e) = group::with_delivery_counts(&mut self.redis, &key, &me, &mut batch).await {
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

impl Batches {
    /// Stores what can be stored, dead-letters what never can, then acknowledges both.
    async fn handle(self: Arc<Self>, batch: Vec<Delivered>, stop: CancellationToken) {
        let key = self.settings.stream_key.clone();
        let mut rows = Vec::with_capacity(batch.len());
        let mut row_entries = Vec::with_capacity(batch.len());
        let mut poison = Vec::new();
        let max = self.settings.max_deliveries.max(1);
        for delivered in batch {
            let deliveries = delivered.deliveries;
            if deliveries == 0 {
                log::debug!("entry {} was handled by another batch", delivered.raw_id);
                continue;
            }
            match (delivered.stream_id, delivered.entry) {
                // Delivered more often than it may be: whatever it is, storing it failed every time
                // (most likely it crashed the replica that held it, which no error path can catch).
                // Dead-lettered, or it would be claimed forever and pin the trim below it.
                _ if deliveries > max => poison.push((
                    delivered.raw_id,
                    delivered.fields,
                    format!("delivered {deliveries} times without being stored (MAX_DELIVERIES is {max})"),
                )),
                (Ok(stream_id), Ok(entry)) => {
                    log::debug!(
                        "storing message {} at {stream_id} request_id={}",
                        entry.id,
                        entry.request_id.as_deref().unwrap_or("-")
                    );
                    rows.push(NewMessage::from_entry(stream_id, entry));
                    row_entries.push((delivered.raw_id, delivered.fields));
                }
                // A newer service wrote it. It stays pending for an upgraded replica to claim — but only
                // for `MAX_DELIVERIES` claims (about MAX_DELIVERIES × CLAIM_IDLE_MS): a pending entry
                // holds the trim below it, so one v2 entry after a rollback would otherwise grow the
                // stream until Redis is full. The dead letter keeps every field for a replay.
                (_, Err(e @ DecodeError::UnsupportedVersion(_))) if deliveries >= max => poison.push((
                    delivered.raw_id,
                    delivered.fields,
                    format!("{e}; no replica could read it in {deliveries} deliveries"),
                )),
                (_, Err(e @ DecodeError::UnsupportedVersion(_))) => {
                    log::warn!(
                        "entry {} left pending for an upgraded replica (delivery {deliveries} of {max}): {e}",
                        delivered.raw_id
                    );
                }
                (Err(e), _) | (_, Err(e)) => {
                    poison.push((delivered.raw_id, delivered.fields, e.to_string()))
                }
            }
        }
        if !rows.is_empty() && self.seam.pass(Seam::BeforeCommit, rows.len(), &stop).await {
            return;
        }
        let stored = rows.len();
        let outcome = match self.store(rows, &stop).await {
            Stored::Committed(outcome) => outcome,
            Stored::Stopped => return, // nothing acknowledged: the batch stays pending
        };
        if stored > 0 && self.seam.pass(Seam::AfterCommit, stored, &stop).await {
            return; // committed and not acknowledged: what a crash right here leaves
        }
        let mut done: Vec<String> = Vec::with_capacity(row_entries.len());
        let mut dead = outcome.dead.into_iter().peekable();
        let mut held = outcome.held.into_iter().peekable();
        for (i, (raw_id, fields)) in row_entries.into_iter().enumerate() {
            if let Some((_, reason)) = dead.next_if(|(at, _)| *at == i) {
                poison.push((raw_id, fields, reason));
            } else if let Some((_, reason)) = held.next_if(|(at, _)| *at == i) {
                // Not acknowledged: the next claim brings it back, and its delivery count bounds the
                // retries (dead-lettered above MAX_DELIVERIES).
                log::warn!("entry {raw_id} left pending, the schema refuses it for now: {reason}");
            } else {
                done.push(raw_id);
            }
        }
        let mut redis = self.redis.clone();
        for (raw_id, fields, reason) in poison {
            match group::dead_letter(&mut redis, &key, &raw_id, &fields, &reason).await {
                Ok(true) => {
                    log::warn!("entry {raw_id} moved to the dead-letter stream: {reason}");
                    self.metrics.dead_letters.inc();
                    self.metrics.acked.inc();
                }
                Ok(false) => {
                    log::debug!("entry {raw_id} was already dead-lettered or acknowledged")
                }
                Err(e) => log::warn!("cannot dead-letter entry {raw_id} (it stays pending): {e}"),
            }
        }
        let ids: Vec<&str> = done.iter().map(String::as_str).collect();
        match group::ack(&mut redis, &key, &ids).await {
            Ok(n) => self.metrics.acked.inc_by(n as u64),
            // The rows are committed; the entries will be delivered again and stored as no-ops.
            Err(e) => log::warn!(
                "XACK of {} entries failed (they will be redelivered): {e}",
                ids.len()
            ),
        }
    }

    /// Commits `rows`, retrying with backoff while Postgres is unreachable.
    async fn store(self: &Arc<Self>, rows: Vec<NewMessage>, stop: &CancellationToken) -> Stored {
        if rows.is_empty() {
            return Stored::Committed(Outcome::default());
        }
        let rows = Arc::new(rows);
        let mut backoff = Backoff::new();
        loop {
            let started = Instant::now();
            let this = Arc::clone(self);
            let batch = Arc::clone(&rows);
            let outcome = tokio::task::spawn_blocking(move || {
                let conn = this.take_pg();
                let (conn, outcome) = store_blocking(conn, &this.url, &batch);
                this.put_pg(conn);
                outcome
            })
            .await;
            match outcome {
                Ok(Ok(outcome)) => {
                    self.metrics.rows.inc_by(outcome.new_rows as u64);
                    self.metrics
                        .batch_seconds
                        .observe(started.elapsed().as_secs_f64());
                    return Stored::Committed(outcome);
                }
                Ok(Err(e)) => {
                    log::warn!("{} entries not stored yet (retrying): {e:#}", rows.len());
                }
                Err(e) => log::error!("storing task failed (retrying): {e}"),
            }
            self.metrics.store_errors.inc();
            if !backoff.wait(stop).await {
                return Stored::Stopped;
            }
        }
    }

    fn take_pg(&self) -> Option<PgConnection> {
        // The lock is held for a push or a pop, never across a statement; a poisoned one still holds
        // plain connections.
        self.idle_pg
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }

    fn put_pg(&self, conn: Option<PgConnection>) {
        if let Some(conn) = conn {
            self.idle_pg
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(conn);
        }
    }
}
