//! The read side of a persister replica: batches from the consumer group, ahead of storing.

use std::sync::Arc;

use anyhow::Context;
use service::redis::raw::StreamReads;
use service::redis::Conn;
use service::{Backoff, Settings};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::claim;
use crate::group::{self, Cursor, Delivered, ReplyBudget};
use crate::metrics::Metrics;
use model::StreamId;

/// Reads of new entries at the same time, each on its own connection of the blocking pool: Redis builds
/// one reply while the previous one is parsed here, which alone took as long as storing it (a drain's
/// profile: most of the persister's CPU in the reply parser). Own pending entries are read one after
/// the other, since each read starts after the last id of the one before.
pub const NEW_READS: usize = 2;

/// How the raw connections for new entries show in Redis' `CLIENT LIST`.
pub const RAW_READS_NAME: &str = "relay-persister-reads";

/// Reads batches for this consumer: first its own pending entries, then new ones; re-creates the group if
/// Redis lost it. Ends when `stop` is cancelled or the storing loop is gone. New entries come from
/// [`NEW_READS`] reads at once, so batches may reach the storing loop out of stream order, as they do
/// across replicas.
pub async fn read_ahead(
    settings: Settings,
    reads: StreamReads,
    mut redis: Conn,
    batches: tokio::sync::mpsc::Sender<Vec<Delivered>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let settings = Arc::new(settings);
    let key = &settings.stream_key;
    let mut backoff = Backoff::new();
    let mut at = ReadCursor::new(ReplyBudget::from_settings(&settings));
    // Reads of new entries in flight. Dropped (aborted) on a stop: what a read was given stays pending on
    // this consumer, and the next start reads it first.
    let mut new_reads = JoinSet::new();
    while !stop.is_cancelled() {
        let Some(entries) = next_read(&at, &settings, &reads, &mut new_reads, &stop).await else {
            break;
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
                at.failed();
                // Redis lost the group (restarted without persistence, or the key was deleted): create it
                // again and start over from this consumer's pending entries — including whatever a read
                // still in flight is given before it is aborted here.
                if service::redis::raw::error_code(&e) == Some("NOGROUP") {
                    new_reads.shutdown().await;
                    match group::ensure_group(&mut redis, key).await {
                        Ok(()) => {
                            log::warn!("consumer group on `{key}` was gone; created it again")
                        }
                        Err(e) => log::warn!("cannot re-create the consumer group: {e}"),
                    }
                    at.cursor = Cursor::Pending("0-0".into());
                }
                continue;
            }
        };
        if at.cursor != Cursor::New {
            // This consumer's own pending entries: delivered before, to a run of it that stopped.
            metrics.redeliveries.inc_by(entries.len() as u64);
        }
        at.read(&entries, metrics.observe_read(&entries));
        if !entries.is_empty() && batches.send(entries).await.is_err() {
            break;
        }
    }
}

/// The next read's entries, or `None` once `stop` is cancelled: own pending entries one read at a time
/// (each starts after the last id of the one before), new entries from [`NEW_READS`] reads in flight.
async fn next_read(
    at: &ReadCursor,
    settings: &Arc<Settings>,
    reads: &StreamReads,
    new_reads: &mut JoinSet<anyhow::Result<Vec<Delivered>>>,
    stop: &CancellationToken,
) -> Option<anyhow::Result<Vec<Delivered>>> {
    match &at.cursor {
        Cursor::Pending(_) => {
            let read = read_once(
                Arc::clone(settings),
                reads.clone(),
                at.cursor.clone(),
                at.budget,
            );
            tokio::select! {
                () = stop.cancelled() => None,
                read = read => Some(read),
            }
        }
        Cursor::New => {
            while new_reads.len() < NEW_READS {
                new_reads.spawn(read_once(
                    Arc::clone(settings),
                    reads.clone(),
                    Cursor::New,
                    at.budget_for_new(),
                ));
            }
            tokio::select! {
                () = stop.cancelled() => None,
                Some(read) = new_reads.join_next() => {
                    Some(read.unwrap_or_else(|e| Err(anyhow::Error::new(e).context("read task"))))
                }
            }
        }
    }
}

/// Where the next read starts, what it expects, and what has been handed to the storing loop.
struct ReadCursor {
    cursor: Cursor,
    /// The newest entry handed to the storing loop: a read that failed may still have been delivered to
    /// this consumer by Redis (a timeout after `XREADGROUP` ran), and those entries are pending here with
    /// ids above it. (With two reads in flight, a failed read's entries can lie below a later read's that
    /// succeeded: those are left to the claim pass after `CLAIM_IDLE_MS`, never lost.)
    handed: StreamId,
    budget: ReplyBudget,
    /// The largest entry the next read of new entries expects: the largest `MAX_BODY_BYTES` allows at
    /// first and after a failed read, then the largest just read, or half the previous expectation when
    /// that is larger — so the `COUNT` grows back over a few reads after large entries, and a sudden
    /// growth of the entries is the only way past the budget (see `group::read`).
    expected: usize,
}

impl ReadCursor {
    fn new(budget: ReplyBudget) -> Self {
        Self {
            cursor: Cursor::Pending("0-0".into()),
            handed: StreamId::new(0, 0),
            budget,
            expected: budget.entry_bytes,
        }
    }

    /// The budget of the next read of new entries.
    fn budget_for_new(&self) -> ReplyBudget {
        self.budget.expecting(self.expected)
    }

    /// After a failed read. It may have changed the group before its reply was lost (a timeout): the
    /// entries it delivered are pending on this consumer after the newest one handed over. They are read
    /// pending-first rather than left to a claim after `CLAIM_IDLE_MS`.
    fn failed(&mut self) {
        self.expected = self.budget.entry_bytes;
        if self.cursor == Cursor::New {
            self.cursor = Cursor::Pending(self.handed.to_string());
        }
    }

    /// After `entries` were read, the largest of them `largest` bytes.
    fn read(&mut self, entries: &[Delivered], largest: usize) {
        // (An empty read says nothing about the entries' size: the expectation stays.)
        if largest > 0 {
            self.expected = largest.max(self.expected / 2);
        }
        // Parallel reads can hand batches out of order: the newest id handed so far. (A foreign id
        // outside the API's range does not parse; a re-read from below it reads it again, harmlessly.)
        if let Some(newest) = entries
            .iter()
            .filter_map(|d| d.stream_id.as_ref().ok())
            .max()
        {
            self.handed = self.handed.max(*newest);
        }
        if self.cursor != Cursor::New {
            match entries.last() {
                Some(last) => self.cursor = Cursor::Pending(last.raw_id.clone()),
                None => {
                    log::info!("own pending entries drained; reading new entries");
                    self.cursor = Cursor::New;
                }
            }
        }
    }
}

/// One `XREADGROUP` from `cursor`; own pending entries come with their delivery counts.
async fn read_once(
    settings: Arc<Settings>,
    reads: StreamReads,
    cursor: Cursor,
    budget: ReplyBudget,
) -> anyhow::Result<Vec<Delivered>> {
    let s = &settings;
    if let (Cursor::New, Some(raw)) = (&cursor, &reads.raw) {
        let mut conn = raw
            .get()
            .await
            .map_err(|e| anyhow::anyhow!("getting a Redis connection: {e}"))?;
        return Ok(group::read_new_raw(
            &mut conn,
            &s.stream_key,
            &s.consumer_name,
            s.persister_batch_size,
            s.persister_block_ms,
            budget,
            reads.timeout,
        )
        .await?);
    }
    let mut conn = reads
        .blocking
        .get()
        .await
        .context("getting a Redis connection")?;
    let mut entries = group::read(
        &mut conn,
        &s.stream_key,
        &s.consumer_name,
        &cursor,
        s.persister_batch_size,
        s.persister_block_ms,
        budget,
    )
    .await?;
    // Own pending entries are redeliveries: a crash loop on one of them shows in its count.
    if matches!(cursor, Cursor::Pending(_)) {
        claim::with_delivery_counts(&mut conn, &s.stream_key, &s.consumer_name, &mut entries)
            .await?;
    }
    Ok(entries)
}
