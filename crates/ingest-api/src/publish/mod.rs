//! The publish path: `POST /messages` and `POST /channels/{channel}/messages`, one JSON value
//! (`application/json`) or a batch (`application/x-ndjson`).
//!
//! The whole body is read (up to its limit) and validated before anything is written, so a bad request
//! leaves the stream untouched. A batch is appended in one `MULTI`/`EXEC`: all of its lines or none.
//!
//! Reading the body is where a hostile client can hold memory, so it is bounded three ways: by size (the
//! limit of its kind), by time (the whole body within `CLIENT_TIMEOUT_MS` plus a second per
//! `MIN_CLIENT_RATE` bytes, else 408 and the connection is closed), and by the process's total of
//! allocated body buffers (`MAX_INFLIGHT_BYTES`, else 503).
//!
//! [`accept`] takes a request through its steps in order, each in its own module: the credential
//! (`crate::auth`), the content type ([`validate`]), the body ([`body`], [`inflight`]), UTF-8, the rate
//! from the line count ([`rate`]), the parse ([`validate`]), the `Idempotency-Key` ([`idempotency`]), the
//! backlog ([`backlog`]), the append ([`append`], [`group_commit`]) and the replicas ([`replicas`]).

mod append;
mod backlog;
mod body;
mod group_commit;
mod idempotency;
mod inflight;
mod limits;
mod rate;
mod replicas;
mod validate;

pub use backlog::REFRESH as BACKLOG_REFRESH;
pub use group_commit::GroupCommit;
pub use inflight::InflightBytes;
pub use limits::Limits;

use std::time::Instant;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use model::{Accepted, ChannelName};
use serde_json::value::RawValue;
use service::settings::{Caller, Scope};
use service::Settings;

use crate::problem::ApiError;
use crate::state::{AppState, WorkerRedis};
use backlog::Backlog;
use rate::{PublishRate, Publisher};
use validate::BodyKind;

/// A publish to `channel`, answered with 202 and the metrics counted. Its parameters are the app data of
/// the two `POST` routes in `routes.rs`, which actix hands each handler by type: each route lists them.
pub async fn publish(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    limits: web::Data<Limits>,
    worker_redis: web::Data<WorkerRedis>,
    group: web::Data<GroupCommit>,
    channel: ChannelName,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let result = accept(&req, body, &state, &limits, &worker_redis, &group, channel).await;
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

/// A publish, step by step; nothing is written until every check before the append has passed.
async fn accept(
    req: &HttpRequest,
    body: web::Payload,
    state: &AppState,
    limits: &Limits,
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
    let (body, _reservation) =
        body::read_limited(req, body, limit, settings, &limits.inflight).await?;
    let text = validate::utf8(&body)?;
    // The rate is checked from the line count, before any line is parsed: a client over its rate
    // costs a scan for newlines, not the parse of a 16 MiB batch.
    if let Some(rate) = &limits.rate {
        check_rate(req, settings, rate, &caller, kind, text)?;
    }
    let payloads = parse(settings, kind, text)?;
    let idempotency = match req.headers().get("idempotency-key") {
        Some(key) => Some(idempotency_record(
            settings,
            &caller,
            key.as_bytes(),
            kind,
            &channel,
            &body,
        )?),
        None => None,
    };
    check_backlog(settings, &limits.backlog)?;
    let accepted = append::append(
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
    replicas::confirm(settings, &mut worker_redis.0.clone(), last).await?;
    Ok((kind, accepted))
}

/// Takes the request's lines from its publisher's `PUBLISH_RATE` budget, or 429.
fn check_rate(
    req: &HttpRequest,
    settings: &Settings,
    rate: &PublishRate,
    caller: &Caller,
    kind: BodyKind,
    text: &str,
) -> Result<(), ApiError> {
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
    Ok(())
}

/// The body's JSON values: one, or one per NDJSON line (400 or 413 naming the first bad line).
fn parse(settings: &Settings, kind: BodyKind, text: &str) -> Result<Vec<Box<RawValue>>, ApiError> {
    Ok(match kind {
        BodyKind::Single => vec![validate::json_value(text)?],
        BodyKind::Batch => {
            validate::ndjson_lines(text, settings.max_batch_lines, settings.max_body_bytes)?
        }
    })
}

/// The record an `Idempotency-Key` header asks for (400 when the key is malformed).
fn idempotency_record(
    settings: &Settings,
    caller: &Caller,
    key: &[u8],
    kind: BodyKind,
    channel: &ChannelName,
    body: &[u8],
) -> Result<idempotency::Record, ApiError> {
    let key = idempotency::parse_key(key)?;
    let kind_tag = if kind == BodyKind::Batch {
        "ndjson"
    } else {
        "json"
    };
    // A key belongs to the API key that sent it: another caller's same key is another record.
    let caller = caller.id.as_deref();
    Ok(idempotency::Record {
        key: model::idempotency_key(&settings.stream_key, caller, key),
        fingerprint: idempotency::fingerprint(kind_tag, channel.as_str(), body),
        ledger: model::idempotency_ledger_keys(&settings.stream_key, caller),
        budget: settings.max_idempotency_bytes,
    })
}

/// 503 while the persister is more than `MAX_BACKLOG` entries behind, or the stream holds more than
/// `MAX_STREAM_BYTES` (both as last measured).
fn check_backlog(settings: &Settings, backlog: &Backlog) -> Result<(), ApiError> {
    let entries = backlog.current();
    if entries > settings.max_backlog {
        return Err(ApiError::Backlog { backlog: entries });
    }
    let bytes = backlog.stream_bytes();
    if bytes > settings.max_stream_bytes {
        return Err(ApiError::StreamFull { bytes });
    }
    Ok(())
}
