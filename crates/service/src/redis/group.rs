//! How far the `persister` group is behind on the stream: read from Redis on a timer by [`sample`], the
//! one loop every user runs (the ingest's backlog bound, the persister's stream gauges), so no request
//! and no scrape ever waits on Redis for it.

use std::time::Duration;

use model::PERSISTER_GROUP;
use redis::aio::ConnectionLike;

/// How far the `persister` group is behind on a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Entries in the stream.
    pub length: u64,
    /// Entries not yet delivered to the group (every entry while there is no group).
    pub lag: u64,
    /// Entries delivered to the group and not yet acknowledged.
    pub pending: u64,
}

impl GroupStats {
    /// Entries not yet stored: what `MAX_BACKLOG` bounds.
    pub fn backlog(&self) -> u64 {
        self.lag + self.pending
    }
}

/// [`GroupStats`] of `stream_key` from `XLEN` and `XINFO GROUPS` (a cold path: typed replies). A missing
/// stream has all zeros: `EXISTS` says so first, rather than matching `XINFO`'s "no such key" text (a
/// stream deleted between the two is an error, and the next sample reads zeros). `lag` is nil when Redis
/// cannot compute it (after deletions in the middle of the stream); pending alone is then the best lower
/// bound.
pub async fn group_stats(
    conn: &mut impl ConnectionLike,
    stream_key: &str,
) -> redis::RedisResult<GroupStats> {
    let (exists, length): (bool, u64) = redis::pipe()
        .exists(stream_key)
        .xlen(stream_key)
        .query_async(conn)
        .await?;
    if !exists {
        return Ok(GroupStats::default());
    }
    let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream_key)
        .query_async(conn)
        .await?;
    Ok(
        match groups.groups.iter().find(|g| g.name == PERSISTER_GROUP) {
            Some(g) => GroupStats {
                length,
                lag: g.lag.unwrap_or(0) as u64,
                pending: g.pending as u64,
            },
            None => GroupStats {
                length,
                lag: length,
                pending: 0,
            },
        },
    )
}

/// Reads [`GroupStats`] of `stream_key` every `every` until `stop` completes (or the task is dropped),
/// handing each to `on_sample`. A failed
/// read is logged (debug: Redis being away is told by the requests themselves) and skipped, so the last
/// values stand; a late tick is not made up for.
pub async fn sample(
    mut conn: impl ConnectionLike,
    stream_key: String,
    every: Duration,
    stop: impl std::future::Future<Output = ()>,
    mut on_sample: impl FnMut(GroupStats),
) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        match group_stats(&mut conn, &stream_key).await {
            Ok(stats) => on_sample(stats),
            Err(e) => log::debug!("cannot read the persister group's lag on `{stream_key}`: {e}"),
        }
    }
}
