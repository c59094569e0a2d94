//! The read side of a persister replica: batches from the consumer group, one ahead of storing.

use std::sync::Arc;

use anyhow::Context;
use service::redis::{BlockingPool, Conn};
use service::{Backoff, Settings};
use tokio_util::sync::CancellationToken;

use crate::group::{self, Cursor, Delivered, ReplyBudget};
use crate::metrics::Metrics;

/// Reads batches for this consumer: first its own pending entries, then new ones; re-creates the group if
/// Redis lost it. Ends when `stop` is cancelled or the storing loop is gone.
pub async fn read_ahead(
    settings: Settings,
    reads: BlockingPool,
    mut redis: Conn,
    batches: tokio::sync::mpsc::Sender<Vec<Delivered>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let key = &settings.stream_key;
    let mut backoff = Backoff::new();
    let mut cursor = Cursor::Pending("0-0".into());
    // The last entry handed to the storing loop: a read that failed may still have been delivered to
    // this consumer by Redis (a timeout after `XREADGROUP` ran), and those entries are pending here with
    // ids above it.
    let mut handed = "0-0".to_owned();
    let budget = ReplyBudget::from_settings(&settings);
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
                budget,
            )
            .await?;
            let mut entries = entries;
            // Own pending entries are redeliveries: a crash loop on one of them shows in its count.
            if matches!(cursor, Cursor::Pending(_)) {
                group::with_delivery_counts(&mut conn, key, &s.consumer_name, &mut entries).await?;
            }
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
                // The failed read may have changed the group before its reply was lost (a timeout): the
                // entries it delivered are pending on this consumer after the last one handed over. Read
                // them pending-first rather than leave them to a claim after CLAIM_IDLE_MS.
                if cursor == Cursor::New {
                    cursor = Cursor::Pending(handed.clone());
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
        metrics.observe_read(&entries);
        // Each read's ids are above the previous one's: own pending entries in order, then `>`.
        if let Some(last) = entries.last() {
            handed.clone_from(&last.raw_id);
        }
        if cursor != Cursor::New {
            // This consumer's own pending entries: delivered before, to a run of it that stopped.
            metrics.redeliveries.inc_by(entries.len() as u64);
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
