//! The write itself: the entries of a request appended to the stream, through the worker's group commit,
//! one `MULTI`/`EXEC` or the idempotency script, within `REDIS_TIMEOUT_MS`.

use std::time::Duration;

use model::redis_stream::{parse_reply_id, xadd_cmd};
use model::{now_micros, Accepted, ChannelName, StreamEntry};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::group_commit::GroupCommit;
use super::idempotency;
use crate::problem::ApiError;
use crate::state::{AppState, WorkerRedis};

/// Appends the entries and answers what each became. Waits on Redis at most `REDIS_TIMEOUT_MS`, queueing
/// for the worker's next pipeline included.
///
/// A single entry goes through the worker's [`GroupCommit`], in one pipeline with the other requests'
/// entries; a batch stays one `MULTI`/`EXEC` of its own (all of its lines or none), and an idempotent
/// append stays one Lua call: neither may be split or interleaved.
pub(super) async fn append(
    state: &AppState,
    worker_redis: &WorkerRedis,
    group: &GroupCommit,
    channel: &ChannelName,
    payloads: Vec<Box<RawValue>>,
    idempotency: Option<idempotency::Record>,
    request_id: String,
) -> Result<Vec<Accepted>, ApiError> {
    let received_at = now_micros();
    let entries: Vec<StreamEntry> = payloads
        .into_iter()
        .map(|payload| StreamEntry {
            id: Uuid::now_v7(),
            channel: channel.clone(),
            received_at,
            payload,
            request_id: Some(request_id.clone()),
        })
        .collect();
    let key = &state.settings.stream_key;
    let mut redis = worker_redis.0.clone();
    let timeout = Duration::from_millis(state.settings.redis_timeout_ms);
    if let Some(record) = idempotency {
        let once = idempotency::append_once(&mut redis, key, &record, &entries);
        return bounded(timeout, once).await?;
    }
    let ids: Vec<String> = if let [entry] = entries.as_slice() {
        let id = bounded(timeout, group.xadd(xadd_cmd(key, entry))).await?;
        vec![id]
    } else {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for entry in &entries {
            pipe.add_command(xadd_cmd(key, entry));
        }
        bounded(timeout, pipe.query_async(&mut redis)).await?
    };
    entries
        .iter()
        .zip(ids)
        .map(|(entry, stream_id)| {
            let stream_id = parse_reply_id(&stream_id).map_err(|e| ApiError::Internal(e.into()))?;
            Ok(Accepted {
                id: entry.id,
                channel: entry.channel.clone(),
                stream_id,
                received_at,
            })
        })
        .collect()
}

async fn bounded<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError::StreamUnavailable(e.into())),
        Err(_) => Err(ApiError::StreamUnavailable(anyhow::anyhow!(
            "no answer from Redis within {timeout:?}"
        ))),
    }
}
