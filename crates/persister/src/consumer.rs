//! The consumer loop of one persister replica: read a batch, store it, acknowledge it, repeat; and, on
//! the side, claim what dead replicas left pending and trim what everyone has stored.
//!
//! Nothing is acknowledged that is not committed. When Postgres is unreachable, the same batch is retried
//! with backoff until it commits or the service is stopped; a stop leaves the batch pending in the group,
//! and the next start of this replica (same `CONSUMER_NAME`) reads its own pending entries before anything
//! new. When Postgres is reachable but rejects the batch, the batch is split and stored row by row, so one
//! bad entry goes to the dead-letter stream and does not hold back its neighbours.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use diesel::{Connection, PgConnection, RunQueryDsl};
use model::redis_stream::deadpool_redis::Pool;
use model::redis_stream::redis::aio::ConnectionManager;
use model::{DecodeError, Settings};
use store::NewMessage;
use tokio_util::sync::CancellationToken;

use crate::group::{self, Cursor, Delivered};
use crate::metrics::Metrics;

/// How often the stream is trimmed below the acknowledged point.
const TRIM_INTERVAL: Duration = Duration::from_secs(5);
/// At most this many entries are trimmed per pass.
const TRIM_STEP: u64 = 50_000;
/// A consumer with nothing pending that has been silent this long is a replica that was scaled away.
const CONSUMER_GONE_MS: u64 = 3_600_000;

pub struct Consumer {
    settings: Settings,
    /// Connections for `XREADGROUP BLOCK`, which must not share the multiplexed connection.
    reads: Pool,
    /// Acks, claims, trims and dead letters.
    redis: ConnectionManager,
    /// This replica's one Postgres connection, taken while a batch is being stored on the blocking pool
    /// and dropped after an error so that the next attempt reconnects.
    pg: Option<PgConnection>,
    metrics: Arc<Metrics>,
    claim_cursor: String,
    next_claim: Instant,
    next_trim: Instant,
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

/// The result of storing a batch.
enum Stored {
    /// Every row is committed except these (index in the batch, Postgres' reason).
    Committed { rejected: Vec<(usize, String)> },
    /// Stopped before anything was committed.
    Stopped,
}

impl Consumer {
    pub fn new(
        settings: Settings,
        reads: Pool,
        redis: ConnectionManager,
        metrics: Arc<Metrics>,
    ) -> Self {
        let now = Instant::now();
        Self {
            settings,
            reads,
            redis,
            pg: None,
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
            stop.clone(),
        ));
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                batch = next.recv() => match batch {
                    Some(entries) => self.handle(entries, &stop).await,
                    None => break,
                },
                _ = tick.tick() => {}
            }
            self.maintain(&stop).await;
        }
        drop(next);
        let _ = reader.await;
        log::info!("consumer `{}` stopped", self.settings.consumer_name);
    }

    /// Claims entries other consumers left pending too long, and trims the stream; each when due.
    async fn maintain(&mut self, stop: &CancellationToken) {
        let now = Instant::now();
        if now >= self.next_claim {
            self.next_claim =
                now + Duration::from_millis((self.settings.claim_idle_ms / 2).max(500));
            self.claim(stop).await;
        }
        if now >= self.next_trim {
            self.next_trim = now + TRIM_INTERVAL;
            let key = self.settings.stream_key.clone();
            match group::trim_acknowledged(
                &mut self.redis,
                &key,
                self.settings.stream_retention,
                TRIM_STEP,
            )
            .await
            {
                Ok(0) => {}
                Ok(n) => log::debug!("trimmed {n} acknowledged entries from `{key}`"),
                Err(e) => log::warn!("trimming `{key}` failed: {e}"),
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
        let claimed =
            group::autoclaim(&mut self.redis, &key, &me, idle, &self.claim_cursor, count).await;
        let (batch, next) = match claimed {
            Ok(claimed) => claimed,
            Err(e) => {
                log::warn!("XAUTOCLAIM on `{key}` failed: {e}");
                return;
            }
        };
        self.claim_cursor = next;
        if batch.is_empty() {
            return;
        }
        log::info!(
            "claimed {} entries left pending by other consumers",
            batch.len()
        );
        self.metrics.claimed.inc_by(batch.len() as u64);
        self.handle(batch, stop).await;
    }

    /// Stores what can be stored, dead-letters what never can, then acknowledges both.
    async fn handle(&mut self, batch: Vec<Delivered>, stop: &CancellationToken) {
        let key = self.settings.stream_key.clone();
        let mut rows = Vec::with_capacity(batch.len());
        let mut row_entries = Vec::with_capacity(batch.len());
        let mut poison = Vec::new();
        for delivered in batch {
            match (delivered.stream_id, delivered.entry) {
                (Ok(stream_id), Ok(entry)) => {
                    rows.push(NewMessage::from_entry(stream_id, entry));
                    row_entries.push((delivered.raw_id, delivered.fields));
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
        let rejected = match self.store(rows, stop).await {
            Stored::Committed { rejected } => rejected,
            Stored::Stopped => return, // nothing acknowledged: the batch stays pending
        };
        let mut done: Vec<String> = Vec::with_capacity(row_entries.len() + poison.len());
        let mut rejected = rejected.into_iter().peekable();
        for (i, (raw_id, fields)) in row_entries.into_iter().enumerate() {
            match rejected.next_if(|(at, _)| *at == i) {
                Some((_, reason)) => {
                    poison.push((raw_id, fields, format!("rejected by Postgres: {reason}")))
                }
                None => done.push(raw_id),
            }
        }
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

    /// Commits `rows`, retrying with backoff while Postgres is unreachable.
    async fn store(&mut self, rows: Vec<NewMessage>, stop: &CancellationToken) -> Stored {
        if rows.is_empty() {
            return Stored::Committed {
                rejected: Vec::new(),
            };
        }
        let rows = Arc::new(rows);
        let mut backoff = Backoff::new();
        loop {
            let started = Instant::now();
            let conn = self.pg.take();
            let url = store::with_timeouts(&self.settings.database_url, 5);
            let batch = Arc::clone(&rows);
            let tries = self.settings.max_deliveries;
            let outcome =
                tokio::task::spawn_blocking(move || store_blocking(conn, &url, &batch, tries))
                    .await;
            match outcome {
                Ok((conn, Ok((new_rows, rejected)))) => {
                    self.pg = conn;
                    self.metrics.stored.inc_by(new_rows as u64);
                    self.metrics
                        .batch_seconds
                        .observe(started.elapsed().as_secs_f64());
                    return Stored::Committed { rejected };
                }
                Ok((conn, Err(e))) => {
                    self.pg = conn;
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
}

/// On the blocking pool: store the batch in one transaction; if Postgres is fine but refuses it, store
/// row by row and report the rows it refuses. Returns the connection when it is still usable.
#[allow(clippy::type_complexity)]
fn store_blocking(
    conn: Option<PgConnection>,
    url: &str,
    rows: &[NewMessage],
    tries: u64,
) -> (
    Option<PgConnection>,
    anyhow::Result<(usize, Vec<(usize, String)>)>,
) {
    let mut conn = match conn {
        Some(conn) => conn,
        None => match PgConnection::establish(url).context("connecting to Postgres") {
            Ok(conn) => conn,
            Err(e) => return (None, Err(e)),
        },
    };
    let whole = match store::write::store_batch(&mut conn, rows) {
        Ok(n) => return (Some(conn), Ok((n, Vec::new()))),
        Err(e) => e,
    };
    // Only an error about the data itself splits the batch; anything else (connection lost, disk full,
    // read-only after a failover, a timeout) is retried whole, with backoff, and nothing is acknowledged.
    if !refuses_data(&whole) {
        let usable = diesel::sql_query("SELECT 1").execute(&mut conn).is_ok();
        return (
            usable.then_some(conn),
            Err(anyhow::Error::new(whole).context("storing a batch")),
        );
    }
    log::warn!(
        "Postgres refused a batch of {} ({whole}); storing it row by row",
        rows.len()
    );
    let (mut new_rows, mut rejected) = (0, Vec::new());
    for (i, row) in rows.iter().enumerate() {
        // Each row gets `MAX_DELIVERIES` tries before it is declared unstorable.
        let mut last_error = None;
        for _ in 0..tries.max(1) {
            match store::write::store_batch(&mut conn, std::slice::from_ref(row)) {
                Ok(n) => {
                    new_rows += n;
                    last_error = None;
                    break;
                }
                Err(e) if refuses_data(&e) => last_error = Some(e),
                Err(e) => {
                    // Not the row's fault after all: what was committed is idempotent; retry everything.
                    let usable = diesel::sql_query("SELECT 1").execute(&mut conn).is_ok();
                    return (
                        usable.then_some(conn),
                        Err(anyhow::Error::new(e).context("storing a batch row by row")),
                    );
                }
            }
        }
        if let Some(e) = last_error {
            rejected.push((i, e.to_string()));
        }
    }
    (Some(conn), Ok((new_rows, rejected)))
}

/// Whether Postgres refused the rows themselves (a constraint, or a value its types reject) rather than
/// failing for a reason that retrying can cure.
fn refuses_data(e: &diesel::result::Error) -> bool {
    use diesel::result::DatabaseErrorKind as Kind;
    match e {
        diesel::result::Error::DatabaseError(kind, info) => match kind {
            Kind::CheckViolation
            | Kind::NotNullViolation
            | Kind::ForeignKeyViolation
            | Kind::ExclusionViolation => true,
            // SQLSTATE class 22 (data exception) arrives as `Unknown`: recognise it by its wording.
            Kind::Unknown => {
                let m = info.message();
                m.starts_with("invalid input syntax")
                    || m.starts_with("invalid byte sequence")
                    || m.contains("out of range")
                    || m.starts_with("unsupported Unicode escape")
            }
            _ => false,
        },
        _ => false,
    }
}

/// Reads batches for this consumer: first its own pending entries, then new ones; re-creates the group if
/// Redis lost it. Ends when `stop` is cancelled or the storing loop is gone.
async fn read_ahead(
    settings: Settings,
    reads: Pool,
    mut redis: ConnectionManager,
    batches: tokio::sync::mpsc::Sender<Vec<Delivered>>,
    stop: CancellationToken,
) {
    let key = &settings.stream_key;
    let mut backoff = Backoff::new();
    let mut cursor = Cursor::Pending("0-0".into());
    while !stop.is_cancelled() {
        let read = async {
            let mut conn = reads.get().await.context("getting a Redis connection")?;
            let s = &settings;
            let entries = group::read(
                &mut conn,
                key,
                &s.consumer_name,
                &cursor,
                s.persister_batch_size,
                s.persister_block_ms,
            )
            .await?;
            anyhow::Ok(entries)
        };
        let entries = tokio::select! {
            () = stop.cancelled() => break,
            read = read => read,
        };
        let entries = match entries {
            Ok(entries) => {
                backoff.reset();
                entries
            }
            Err(e) => {
                log::warn!("reading `{key}` failed (retrying): {e:#}");
                if !backoff.wait(&stop).await {
                    break;
                }
                // Redis lost the group (restarted without persistence, or the key was deleted): create it
                // again and start over from this consumer's pending entries.
                if format!("{e:#}").contains("NOGROUP") {
                    match group::ensure_group(&mut redis, key).await {
                        Ok(()) => {
                            log::warn!("consumer group on `{key}` was gone; created it again")
                        }
                        Err(e) => log::warn!("cannot re-create the consumer group: {e}"),
                    }
                    cursor = Cursor::Pending("0-0".into());
                }
                continue;
            }
        };
        if cursor != Cursor::New {
            match entries.last() {
                Some(last) => cursor = Cursor::Pending(last.raw_id.clone()),
                None => {
                    log::info!("own pending entries drained; reading new entries");
                    cursor = Cursor::New;
                }
            }
        }
        if !entries.is_empty() && batches.send(entries).await.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use diesel::result::{DatabaseErrorKind as Kind, Error};

    fn db(kind: Kind, message: &str) -> Error {
        Error::DatabaseError(kind, Box::new(message.to_owned()))
    }

    #[test]
    fn only_errors_about_the_rows_themselves_split_a_batch() {
        assert!(super::refuses_data(&db(
            Kind::CheckViolation,
            "new row violates check constraint"
        )));
        assert!(super::refuses_data(&db(
            Kind::Unknown,
            "invalid input syntax for type json"
        )));
        // Retried whole, never dead-lettered: they are about the server, not the data.
        assert!(!super::refuses_data(&db(
            Kind::ReadOnlyTransaction,
            "cannot execute COPY in a read-only transaction"
        )));
        assert!(!super::refuses_data(&db(
            Kind::Unknown,
            "could not extend file: No space left on device"
        )));
        assert!(!super::refuses_data(&db(
            Kind::Unknown,
            "canceling statement due to statement timeout"
        )));
        assert!(!super::refuses_data(&db(
            Kind::ClosedConnection,
            "server closed the connection"
        )));
        assert!(!super::refuses_data(&Error::NotFound));
    }
}
