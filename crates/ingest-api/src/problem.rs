//! Every error ingest-api answers, mapped once to an RFC 9457 `application/problem+json` response. The
//! cause chain of a 5xx goes to the log; the client gets a `detail` that says what to do, never a trace.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use service::Problem;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    MalformedJson(String),
    #[error("the body is not valid UTF-8 (at byte {0})")]
    InvalidUtf8(usize),
    #[error("the JSON nests deeper than {0} levels")]
    TooDeep(usize),
    #[error("line {line}: {reason}; nothing was written")]
    BadLine { line: usize, reason: String },
    #[error("{0}")]
    BadQuery(String),
    #[error("the body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("line {line} is larger than the limit of {limit} bytes (MAX_BODY_BYTES); nothing was written")]
    LineTooLarge { line: usize, limit: usize },
    #[error("the body made no progress for {0} ms (CLIENT_TIMEOUT_MS); nothing was written")]
    BodyTimeout(u64),
    #[error("the server holds as many request bytes as it may (MAX_INFLIGHT_BYTES); nothing was accepted, retry later")]
    Busy,
    #[error("over PUBLISH_RATE ({rate} messages per second, a batch counting each line); nothing was written, retry after {} s", retry_after_secs(*.wait))]
    RateLimited {
        rate: u32,
        wait: std::time::Duration,
    },
    #[error("the stream holds {bytes} bytes in Redis (over MAX_STREAM_BYTES); nothing was accepted, retry later")]
    StreamFull { bytes: u64 },
    #[error("the batch has more than {limit} lines")]
    TooManyLines { limit: usize },
    #[error("send `Content-Type: application/json` (one JSON value) or `application/x-ndjson` (one per line)")]
    UnsupportedMediaType,
    #[error("no message has this id")]
    NotFound,
    #[error("no such resource")]
    NoRoute,
    #[error("send `Authorization: Bearer <key>` with a configured API key")]
    Unauthenticated,
    #[error("this API key lacks the `{0}` scope")]
    Forbidden(&'static str),
    #[error("this credential's `{scope}` does not cover the channel `{channel}`")]
    ChannelForbidden {
        scope: &'static str,
        channel: String,
    },
    #[error("this Idempotency-Key was used with a different body in the last 24 hours")]
    IdempotencyConflict,
    #[error("this credential's Idempotency-Key records of the last 24 hours take MAX_IDEMPOTENCY_BYTES; nothing was written: retry without Idempotency-Key, or with a key used before, or after {} s", retry_after_secs(*.wait))]
    IdempotencyFull { wait: std::time::Duration },
    #[error("the persister is {backlog} entries behind (over MAX_BACKLOG); nothing was accepted, retry later")]
    Backlog { backlog: u64 },
    #[error("the message stream (Redis) is unreachable; nothing was accepted, retry later")]
    StreamUnavailable(#[source] anyhow::Error),
    #[error("the message store (Postgres) is unreachable; retry later")]
    StoreUnavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// The problem `type`'s last segment, also the `outcome` label of a refused message.
    pub fn slug(&self) -> &'static str {
        self.kind().0
    }

    /// The problem `type` (a relative URI: RFC 9457 allows it) and its title.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::MalformedJson(_) => ("malformed-json", "Malformed JSON"),
            Self::InvalidUtf8(_) => ("invalid-utf8", "Invalid UTF-8"),
            Self::TooDeep(_) => ("nesting-too-deep", "JSON nested too deeply"),
            Self::BadLine { .. } => ("invalid-batch-line", "Invalid batch line"),
            Self::BadQuery(_) => ("invalid-parameter", "Invalid parameter"),
            Self::TooLarge { .. } => ("body-too-large", "Payload too large"),
            Self::TooManyLines { .. } => ("batch-too-long", "Batch has too many lines"),
            Self::LineTooLarge { .. } => ("line-too-large", "Batch line too large"),
            Self::BodyTimeout(_) => ("body-timeout", "Request body timed out"),
            Self::Busy => ("server-busy", "Too many request bytes in flight"),
            Self::RateLimited { .. } => ("rate-limited", "Publish rate exceeded"),
            Self::StreamFull { .. } => ("stream-full", "Stream over its memory limit"),
            Self::UnsupportedMediaType => ("unsupported-media-type", "Unsupported media type"),
            Self::NotFound => ("message-not-found", "Message not found"),
            Self::NoRoute => ("not-found", "Not found"),
            Self::Unauthenticated => ("unauthenticated", "Unauthenticated"),
            Self::Forbidden(_) | Self::ChannelForbidden { .. } => ("forbidden", "Forbidden"),
            Self::IdempotencyConflict => ("idempotency-key-reused", "Idempotency-Key reused"),
            Self::IdempotencyFull { .. } => (
                "idempotency-records-full",
                "Too many Idempotency-Key records",
            ),
            Self::Backlog { .. } => ("backlog-full", "Backlog over its limit"),
            Self::StreamUnavailable(_) => ("stream-unavailable", "Stream unavailable"),
            Self::StoreUnavailable(_) => ("store-unavailable", "Store unavailable"),
            Self::Internal(_) => ("internal", "Internal server error"),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_)
            | Self::InvalidUtf8(_)
            | Self::TooDeep(_)
            | Self::BadLine { .. }
            | Self::BadQuery(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge { .. } | Self::TooManyLines { .. } | Self::LineTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::RateLimited { .. } | Self::IdempotencyFull { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::ChannelForbidden { .. } => StatusCode::FORBIDDEN,
            Self::IdempotencyConflict => StatusCode::CONFLICT,
            Self::Backlog { .. }
            | Self::Busy
            | Self::StreamFull { .. }
            | Self::StreamUnavailable(_)
            | Self::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (slug, title) = self.kind();
        match self {
            // An outage answers every request with one of these: one line per interval, with a count.
            Self::StreamUnavailable(e) | Self::StoreUnavailable(e) => {
                service::error_throttled!(slug, "{self}: {e:#}");
            }
            Self::Internal(e) => log::error!("{self}: {e:#}"),
            _ => {}
        }
        let mut problem = Problem::new(self.status_code(), slug, title, self.to_string());
        if let Self::RateLimited { wait, .. } | Self::IdempotencyFull { wait } = self {
            problem = problem.retry_after(retry_after_secs(*wait));
        }
        let mut res = problem.response();
        if matches!(self, Self::BodyTimeout(_)) {
            // The rest of the body may still be on its way: the connection cannot carry another request.
            res.head_mut()
                .set_connection_type(actix_web::http::ConnectionType::Close);
        }
        res
    }
}

/// `Retry-After` is whole seconds: round up, so a client that obeys it is not refused again.
fn retry_after_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}
