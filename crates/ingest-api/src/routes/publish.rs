//! `POST /messages`: one JSON value (`application/json`) or a batch (`application/x-ndjson`).
//!
//! The whole body is read (up to its limit) and validated before anything is written, so a bad request
//! leaves the stream untouched. A batch is appended in one `MULTI`/`EXEC`: all of its lines or none.
//!
//! Reading the body is where a hostile client can hold memory, so it is bounded three ways: by size (the
//! limit of its kind), by time (the whole body within `CLIENT_TIMEOUT_MS` plus a second per
//! `MIN_CLIENT_RATE` bytes, else 408 and the connection is closed), and by the process's total of
//! allocated body buffers (`MAX_INFLIGHT_BYTES`, else 503).

use std::time::{Duration, Instant};

use crate::inflight::Reservation;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::BytesMut;
use futures_util::StreamExt;
use model::redis_stream::{parse_reply_id, xadd_cmd};
use model::{now_micros, Accepted, ChannelName, StreamEntry};
use serde_json::value::RawValue;
use service::settings::Scope;
use uuid::Uuid;

use crate::group_commit::GroupCommit;
use crate::idempotency;
use crate::problem::ApiError;
use crate::rate::Publisher;
use crate::state::{AppState, WorkerRedis};
use crate::validate::{self, BodyKind};

pub async fn publish(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    worker_redis: web::Data<WorkerRedis>,
    group: web::Data<GroupCommit>,
    channel: ChannelName,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let result = accept(&req, body, &state, &worker_redis, &group, channel).await;
    match &result {
        Ok((_, accepted)) => {
            state
                .metrics
                .messages
                .with_label_values(&["accepted"])
                .inc_by(accepted.len() as u64);
            state
                .metrics
                .publish_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        Err(e) => state.metrics.messages.with_label_values(&[e.slug()]).inc(),
    }
    let (kind, accepted) = result?;
    let mut res = HttpResponse::Accepted();
    match (kind, accepted.as_slice()) {
        (BodyKind::Single, [one]) => {
            res.insert_header((header::LOCATION, format!("/messages/{}", one.id)));
            Ok(res.json(one))
        }
        _ => Ok(res.json(accepted)),
    }
}

async fn accept(
    req: &HttpRequest,
    body: web::Payload,
    state: &AppState,
    worker_redis: &WorkerRedis,
    group: &GroupCommit,
    channel: ChannelName,
) -> Result<(BodyKind, Vec<Accepted>), ApiError> {
    let settings = &state.settings;
    let caller = crate::auth::require_on(
        req,
        settings,
        Scope::Publish,
        &model::ChannelPattern::Exact(channel.clone()),
    )?;
    let kind = validate::body_kind(req)?;
    let limit = match kind {
        BodyKind::Single => settings.max_body_bytes,
        BodyKind::Batch => settings.max_batch_bytes,
    };
    // Held until the answer: the body's bytes count against MAX_INFLIGHT_BYTES while they are in memory.
    let (body, _reservation) = read_limited(req, body, limit, state).await?;
    let text = validate::utf8(&body)?;
    // The rate is checked from the line count, before any line is parsed: a client over its rate
    // costs a scan for newlines, not the parse of a 16 MiB batch.
    if let Some(rate) = &state.rate {
        let lines = match kind {
            BodyKind::Single => 1,
            BodyKind::Batch => validate::count_lines(text),
        };
        let who = match caller.id.clone() {
            Some(key) => Publisher::Key(key),
            None => settings
                .trusted_proxies
                .client_addr(req)
                .map_or(Publisher::Unknown, Publisher::Addr),
        };
        // A batch over MAX_BATCH_LINES is the parser's 413, whatever the rate.
        if lines <= settings.max_batch_lines {
            rate.check(&who, lines)
                .map_err(|wait| ApiError::RateLimited {
                    rate: rate.burst(),
                    wait,
                })?;
        }
    }
    let payloads = match kind {
        BodyKind::Single => vec![validate::json_value(text)?],
        BodyKind::Batch => {
            validate::ndjson_lines(text, settings.max_batch_lines, settings.max_body_bytes)?
        }
    };
    let idempotency = match req.headers().get("idempotency-key") {
        Some(key) => {
            let key = idempotency::parse_key(key.as_bytes())?;
            let kind_tag = if kind == BodyKind::Batch {
                "ndjson"
            } else {
                "json"
            };
            // A key belongs to the API key that sent it: another caller's same key is another record.
            let caller = caller.id.as_deref();
            Some(idempotency::Record {
                key: model::idempotency_key(&settings.stream_key, caller, key),
                fingerprint: idempotency::fingerprint(kind_tag, channel.as_str(), &body),
                ledger: model::idempotency_ledger_keys(&settings.stream_key, caller),
                budget: settings.max_idempotency_bytes,
            })
        }
        None => None,
    };
    let backlog = state.backlog.current();
    if backlog > settings.max_backlog {
        return Err(ApiError::Backlog { backlog });
    }
    let bytes = state.backlog.stream_bytes();
    if bytes > settings.max_stream_bytes {
        return Err(ApiError::StreamFull { bytes });
    }
    let accepted = append(
        state,
        worker_redis,
        group,
        &channel,
        payloads,
        idempotency,
        service::http::RequestId::of(req).0,
    )
    .await?;
    // On the connection that wrote: WAIT counts that connection's writes.
    let last = accepted.last().map(|a| a.stream_id);
    crate::replicas::confirm(settings, &mut worker_redis.0.clone(), last).await?;
    Ok((kind, accepted))
}

/// The body, or 413 as soon as it is known to be over `limit` (from `Content-Length`, or while reading), 408
/// when the client sends nothing for `CLIENT_TIMEOUT_MS`, 503 when the process holds `MAX_INFLIGHT_BYTES`.
/// The buffer grows with what arrives: a `Content-Length` promising 16 MiB reserves nothing until the
/// bytes are here.
async fn read_limited(
    req: &HttpRequest,
    mut body: web::Payload,
    limit: usize,
    state: &AppState,
) -> Result<(BytesMut, Reservation), ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    // Each chunk within CLIENT_TIMEOUT_MS of the last, and the whole body within CLIENT_TIMEOUT_MS
    // plus a second for every MIN_CLIENT_RATE bytes received so far: a per-chunk deadline alone never
    // runs out for a byte every few seconds.
    let timeout = Duration::from_millis(state.settings.client_timeout_ms);
    let started = tokio::time::Instant::now();
    let whole = |received: usize| {
        started
            + timeout
            + Duration::from_secs(received as u64 / service::connection::MIN_CLIENT_RATE)
    };
    let mut reservation = state.inflight.reservation();
    let mut buf = BytesMut::new();
    loop {
        let deadline = whole(buf.len()).min(tokio::time::Instant::now() + timeout);
        let next = tokio::time::timeout_at(deadline, body.next()).await;
        let chunk = match next {
            Ok(Some(chunk)) => chunk
                .map_err(|e| ApiError::MalformedJson(format!("the body could not be read: {e}")))?,
            Ok(None) => break,
            Err(_) => return Err(ApiError::BodyTimeout(state.settings.client_timeout_ms)),
        };
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge { limit });
        }
        // What is allocated is what counts against MAX_INFLIGHT_BYTES, not only what was received:
        // the buffer starts at FIRST_BUFFER (or the declared length, if smaller) and doubles.
        if buf.capacity() - buf.len() < chunk.len() {
            let wanted = (buf.len() + chunk.len())
                .max(buf.capacity() * 2)
                .max(declared.unwrap_or(0).min(FIRST_BUFFER))
                .min(limit);
            if !reservation.grow_to(wanted) {
                return Err(ApiError::Busy);
            }
            buf.reserve(wanted - buf.len());
            // `reserve` may round up; what it took is what counts.
            if !reservation.grow_to(buf.capacity()) {
                return Err(ApiError::Busy);
            }
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf, reservation))
}

/// The buffer a body starts with; larger ones grow as their bytes arrive.
const FIRST_BUFFER: usize = 64 * 1024;

/// Appends the entries and answers what each became. Waits on Redis at most `REDIS_TIMEOUT_MS`, queueing
/// for the worker's next pipeline included.
///
/// A single entry goes through the worker's [`GroupCommit`], in one pipeline with the other requests'
/// entries; a batch stays one `MULTI`/`EXEC` of its own (all of its lines or none), and an idempotent
/// append stays one Lua call: neither may be split or interleaved.
async fn append(
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
