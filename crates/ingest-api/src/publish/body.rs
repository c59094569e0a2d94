//! Reading a request body within its bounds: by size (the limit of its kind), by time (the whole body
//! within `CLIENT_TIMEOUT_MS` plus a second per `MIN_CLIENT_RATE` bytes, else 408 and the connection is
//! closed), and by the process's total of allocated body buffers (`MAX_INFLIGHT_BYTES`, else 503).

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use bytes::BytesMut;
use futures_util::StreamExt;

use super::inflight::{InflightBytes, Reservation};
use crate::problem::ApiError;
use service::Settings;

/// The body, or 413 as soon as it is known to be over `limit` (from `Content-Length`, or while reading), 408
/// when the client sends nothing for `CLIENT_TIMEOUT_MS`, 503 when the process holds `MAX_INFLIGHT_BYTES`.
/// The buffer grows with what arrives: a `Content-Length` promising 16 MiB reserves nothing until the
/// bytes are here.
pub(super) async fn read_limited(
    req: &HttpRequest,
    mut body: web::Payload,
    limit: usize,
    settings: &Settings,
    inflight: &Arc<InflightBytes>,
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
    let timeout = Duration::from_millis(settings.client_timeout_ms);
    let started = tokio::time::Instant::now();
    let whole = |received: usize| {
        started
            + timeout
            + Duration::from_secs(received as u64 / service::connection::MIN_CLIENT_RATE)
    };
    let mut reservation = inflight.reservation();
    let mut buf = BytesMut::new();
    loop {
        let deadline = whole(buf.len()).min(tokio::time::Instant::now() + timeout);
        let next = tokio::time::timeout_at(deadline, body.next()).await;
        let chunk = match next {
            Ok(Some(chunk)) => chunk
                .map_err(|e| ApiError::MalformedJson(format!("the body could not be read: {e}")))?,
            Ok(None) => break,
            Err(_) => return Err(ApiError::BodyTimeout(settings.client_timeout_ms)),
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
