//! `HISTORY_RETENTION`: every pass (at least every 10 s) deletes the messages older than the retention
//! from Postgres, a bounded batch per transaction, until none is left or the persister stops.

use std::sync::Arc;
use std::time::Duration;

use store::PgPool;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Rows one transaction deletes at most: short enough that no pass holds a long lock.
pub const DELETE_BATCH: i64 = 5_000;
/// The longest time between two passes.
const PASS_EVERY: Duration = Duration::from_secs(10);

/// Runs passes until `stop`; a failed pass (Postgres away) is logged and tried again at the next one.
pub async fn run(retention: Duration, db: PgPool, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PASS_EVERY.min(retention.max(Duration::from_secs(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        loop {
            let db = db.clone();
            let pass = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
                let mut conn = db.get()?;
                Ok(store::retention::delete_older_than(
                    &mut conn,
                    retention,
                    DELETE_BATCH,
                )?)
            })
            .await;
            match pass {
                Ok(Ok(n)) => {
                    metrics.history_deleted.inc_by(n as u64);
                    if n > 0 {
                        log::debug!(
                            "HISTORY_RETENTION deleted {n} messages older than {retention:?}"
                        );
                    }
                    if (n as i64) < DELETE_BATCH || stop.is_cancelled() {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    log::warn!("HISTORY_RETENTION pass failed (retried in {PASS_EVERY:?}): {e:#}");
                    break;
                }
                Err(e) => {
                    log::warn!("HISTORY_RETENTION task failed: {e}");
                    break;
                }
            }
        }
    }
}
