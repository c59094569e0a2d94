//! One batch on its own task: sorted into rows and entries that never can be stored, the rows committed
//! (retried while Postgres is away), the rest dead-lettered, and everything settled acknowledged.

use std::sync::Arc;
use std::time::Instant;

use diesel::PgConnection;
use model::redis_stream::FieldName;
use model::DecodeError;
use service::redis::Conn;
use service::{Backoff, Settings};
use store::NewMessage;
use tokio_util::sync::CancellationToken;

use crate::group::{self, Delivered};
use crate::metrics::Metrics;
use crate::storing::{store_blocking, Outcome};
use crate::test_hooks::{Armed, Seam};

/// What a batch needs to be stored, dead-lettered and acknowledged on its own task.
pub(crate) struct Batches {
    pub(crate) settings: Settings,
    /// The session's URL: every statement bounded (`store::url::with_session_timeouts`).
    pub(crate) url: String,
    pub(crate) redis: Conn,
    pub(crate) metrics: Arc<Metrics>,
    /// Idle Postgres connections, at most one per batch in flight. A batch takes one while it is being
    /// stored on the blocking pool; one is dropped after an error so that the next attempt reconnects.
    pub(crate) idle_pg: std::sync::Mutex<Vec<PgConnection>>,
    /// The test-only hold point (`test_hooks.rs`); disarmed in production.
    pub(crate) seam: Armed,
}

/// The result of storing a batch.
enum Stored {
    /// Every row is committed except these.
    Committed(Outcome),
    /// Stopped before anything was committed.
    Stopped,
}

impl Batches {
    /// Stores what can be stored, dead-letters what never can, then acknowledges both.
    pub(crate) async fn handle(self: Arc<Self>, batch: Vec<Delivered>, stop: CancellationToken) {
        let Sorted {
            rows,
            row_entries,
            mut poison,
        } = self.classify(batch);
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
        let done = settle(outcome, row_entries, &mut poison);
        let mut redis = self.redis.clone();
        self.dead_letter(&mut redis, poison).await;
        self.acknowledge(&mut redis, &done).await;
    }

    /// Sorts a batch: rows to store, and entries that never can be (dead-lettered). An entry another
    /// batch handled is skipped; one of a newer format stays pending for an upgraded replica.
    fn classify(&self, batch: Vec<Delivered>) -> Sorted {
        let mut sorted = Sorted {
            rows: Vec::with_capacity(batch.len()),
            row_entries: Vec::with_capacity(batch.len()),
            poison: Vec::new(),
        };
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
                _ if deliveries > max => sorted.poison.push((
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
                    sorted.rows.push(NewMessage::from_entry(stream_id, entry));
                    sorted.row_entries.push((delivered.raw_id, delivered.fields));
                }
                // A newer service wrote it. It stays pending for an upgraded replica to claim — but only
                // for `MAX_DELIVERIES` claims (about MAX_DELIVERIES × CLAIM_IDLE_MS): a pending entry
                // holds the trim below it, so one v2 entry after a rollback would otherwise grow the
                // stream until Redis is full. The dead letter keeps every field for a replay.
                (_, Err(e @ DecodeError::UnsupportedVersion(_))) if deliveries >= max => sorted.poison.push((
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
                    sorted
                        .poison
                        .push((delivered.raw_id, delivered.fields, e.to_string()))
                }
            }
        }
        sorted
    }

    /// Moves each entry that never can be stored to the dead-letter stream (which acknowledges it).
    async fn dead_letter(&self, redis: &mut Conn, poison: Vec<Poison>) {
        let key = &self.settings.stream_key;
        for (raw_id, fields, reason) in poison {
            match group::dead_letter(redis, key, &raw_id, &fields, &reason).await {
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
    }

    /// Acknowledges the entries whose rows are committed.
    async fn acknowledge(&self, redis: &mut Conn, done: &[String]) {
        let ids: Vec<&str> = done.iter().map(String::as_str).collect();
        match group::ack(redis, &self.settings.stream_key, &ids).await {
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

/// An entry as the dead-letter stream and `XACK` need it: its id and fields.
type Entry = (String, Vec<(FieldName, Vec<u8>)>);
/// An entry that never can be stored, and why.
type Poison = (String, Vec<(FieldName, Vec<u8>)>, String);

/// A batch sorted by [`Batches::classify`].
struct Sorted {
    rows: Vec<NewMessage>,
    /// The entry of each row, in the same order.
    row_entries: Vec<Entry>,
    poison: Vec<Poison>,
}

/// What a committed batch leaves to do: the entries to acknowledge; those the store found it can never
/// hold join `poison`; those the schema refuses for now stay pending (the next claim brings them back, and
/// their delivery count bounds the retries).
fn settle(outcome: Outcome, row_entries: Vec<Entry>, poison: &mut Vec<Poison>) -> Vec<String> {
    let mut done = Vec::with_capacity(row_entries.len());
    let mut dead = outcome.dead.into_iter().peekable();
    let mut held = outcome.held.into_iter().peekable();
    for (i, (raw_id, fields)) in row_entries.into_iter().enumerate() {
        if let Some((_, reason)) = dead.next_if(|(at, _)| *at == i) {
            poison.push((raw_id, fields, reason));
        } else if let Some((_, reason)) = held.next_if(|(at, _)| *at == i) {
            log::warn!("entry {raw_id} left pending, the schema refuses it for now: {reason}");
        } else {
            done.push(raw_id);
        }
    }
    done
}
