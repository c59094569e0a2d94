//! The routes of ingest-api and its OpenAPI document. Each route is registered here as an annotated
//! service, and the document is collected from that same registration ([`configure`]), so a route cannot
//! be served without being documented or documented without being served. Health, readiness and
//! metrics come from `service::http`.

use actix_web::{get, post, web, App, HttpRequest, HttpResponse};
use service::http::Health;
use service::Problem;
use utoipa::openapi::{Info, OpenApi};
use utoipa_actix_web::service_config::ServiceConfig;
use utoipa_actix_web::AppExt;

use crate::problem::ApiError;
use crate::publish::{self, GroupCommit, Limits};
use crate::read;
use crate::state::{AppState, WorkerRedis};

/// Every route of ingest-api (health included, with `health`'s checks).
pub fn configure(cfg: &mut ServiceConfig, health: web::Data<Health>) {
    service::http::documented_health_routes(cfg, health);
    cfg.service(post_messages)
        .service(list_messages)
        .service(get_message)
        .service(post_channel_messages)
        .service(list_channel_messages)
        .service(list_channels)
        .service(openapi_json)
        .service(docs)
        .default_service(web::to(|| async {
            Err::<HttpResponse, _>(ApiError::NoRoute)
        }));
}

/// The OpenAPI 3.1 document, collected from [`configure`].
pub fn openapi() -> OpenApi {
    let health = web::Data::new(Health::new(service::metrics::registry()));
    let (_, mut doc) = App::new()
        .into_utoipa_app()
        .configure(|cfg| configure(cfg, health))
        .split_for_parts();
    let mut info = Info::new("Relay ingest API", "1.1.0");
    info.description = Some(
        "Post any JSON onto the Relay stream; read every persisted message back. Errors are RFC 9457 \
         problem documents (`application/problem+json`). With `API_KEYS` set, send \
         `Authorization: Bearer <key>`: `publish` for POST, `read` for GET /messages…."
            .into(),
    );
    doc.info = info;
    doc
}

/// The rendered document, served at `/openapi.json`.
pub struct ApiDoc(pub String);

/// Accepts one JSON value (`application/json`), or an NDJSON batch (`application/x-ndjson`), onto the
/// stream. A 202 is a promise: the message will be in Postgres exactly once and was offered to every
/// live client.
#[utoipa::path(
    tag = "messages",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1–255 printable ASCII. A repeat with the same body within 24 h answers the first 202 and adds nothing; another body is 409. Scoped to the API key that sends it."),
        ("X-Request-Id" = Option<String>, Header, description = "1–128 characters of letters, digits and -_.:/+=@ (a safe subset of printable ASCII: no spaces or quotes that could forge log fields), echoed and carried with the message through every service's logs; generated when absent or outside that alphabet."),
    ),
    request_body(
        description = "One JSON value, at most MAX_BODY_BYTES (default 1 MiB) and nesting at most 128 deep; or one JSON value per line (blank lines ignored; at most MAX_BATCH_LINES lines, MAX_BATCH_BYTES bytes, each line at most MAX_BODY_BYTES).",
        content(
            ("application/json", examples(
                ("object" = (summary = "A JSON object", value = json!({"sensor": "t-1", "celsius": 21.5}))),
                ("string" = (summary = "Any JSON value, e.g. a string", value = json!("hello")))
            )),
            ("application/x-ndjson", example = json!("{\"n\":1}\n{\"n\":2}\n"))
        )
    ),
    responses(
        (status = 202, description = "In the stream. For a batch, an array of these in line order.", body = model::Accepted,
            headers(("Location" = String, description = "/messages/{id} (single messages)"))),
        (status = 400, description = "Malformed JSON, invalid UTF-8, nesting over 128, a bad batch line (named), or a bad Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown API key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the `publish` scope", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body made no progress for CLIENT_TIMEOUT_MS; the connection is closed", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Idempotency-Key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Over a size limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Neither application/json nor application/x-ndjson", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over PUBLISH_RATE for this API key (or client address), or a new Idempotency-Key over MAX_IDEMPOTENCY_BYTES of this credential's records: nothing written; retry after Retry-After", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds"))),
        (status = 503, description = "Redis unreachable, the backlog over MAX_BACKLOG or MAX_STREAM_BYTES, or the service over MAX_INFLIGHT_BYTES: nothing accepted; retry after Retry-After (with the Idempotency-Key)", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
#[post("/messages")]
async fn post_messages(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    limits: web::Data<Limits>,
    worker_redis: web::Data<WorkerRedis>,
    group: web::Data<GroupCommit>,
) -> Result<HttpResponse, ApiError> {
    publish::publish(
        req,
        body,
        state,
        limits,
        worker_redis,
        group,
        model::ChannelName::default(),
    )
    .await
}

/// A channel name from the path, or 400.
fn channel_of(path: &str) -> Result<model::ChannelName, ApiError> {
    path.parse()
        .map_err(|e| ApiError::BadQuery(format!("`{path}` is not a channel name: {e}")))
}

/// Publishes to `{channel}` exactly as `POST /messages` publishes to `default`: one JSON value or an
/// NDJSON batch, with the same limits, idempotency and answers.
#[utoipa::path(
    tag = "channels",
    params(
        ("channel" = String, Path, description = "1–128 characters of A–Z a–z 0–9 _ - . :", example = "chat.room1"),
        ("Idempotency-Key" = Option<String>, Header, description = "As for POST /messages; the same key and body on another channel is 409."),
    ),
    request_body(
        description = "As for POST /messages.",
        content(
            ("application/json", example = json!({"from": "ada", "text": "hello"})),
            ("application/x-ndjson", example = json!("{\"n\":1}\n{\"n\":2}\n"))
        )
    ),
    responses(
        (status = 202, description = "In the stream, on this channel. For a batch, an array of these in line order.", body = model::Accepted,
            headers(("Location" = String, description = "/messages/{id} (single messages)"))),
        (status = 400, description = "Not a channel name, or any 400 of POST /messages", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown API key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the `publish` scope", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Idempotency-Key reused with another body or channel", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Over a size limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Neither application/json nor application/x-ndjson", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "As for POST /messages", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "As for POST /messages", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/channels/{channel}/messages")]
async fn post_channel_messages(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    state: web::Data<AppState>,
    limits: web::Data<Limits>,
    worker_redis: web::Data<WorkerRedis>,
    group: web::Data<GroupCommit>,
) -> Result<HttpResponse, ApiError> {
    let channel = channel_of(&path)?;
    publish::publish(req, body, state, limits, worker_redis, group, channel).await
}

/// The refusals every list of stored messages or channels answers, written once for the document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only describes responses: the refusals themselves are `ApiError`s.
enum ReadRefusals {
    #[response(
        status = 401,
        description = "No or unknown API key",
        content_type = "application/problem+json"
    )]
    Unauthenticated(Problem),
    #[response(
        status = 403,
        description = "The key lacks the `read` scope",
        content_type = "application/problem+json"
    )]
    Forbidden(Problem),
    #[response(
        status = 503,
        description = "Postgres unreachable",
        content_type = "application/problem+json"
    )]
    Unavailable(Problem),
}

/// One channel's persisted messages in stream order, streamed with constant memory; or a page of them.
#[utoipa::path(
    tag = "channels",
    params(
        ("channel" = String, Path, description = "A channel name", example = "chat.room1"),
        ("after" = Option<String>, Query, description = "A stream_id: only messages after it (exclusive)", example = "1732478400123-0"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Page size; with it, a Link header names the next page of this channel", example = 100),
    ),
    responses(
        (status = 200, description = "A JSON array of the channel's messages in stream order (`[]` for a channel without messages)", body = Vec<model::Message>,
            headers(("Link" = String, description = "</channels/{channel}/messages?after=…&limit=…>; rel=\"next\" when more remain"))),
        (status = 400, description = "Not a channel name, or a bad `after` or `limit`", body = Problem, content_type = "application/problem+json"),
        ReadRefusals,
    )
)]
#[get("/channels/{channel}/messages")]
async fn list_channel_messages(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let channel = channel_of(&path)?;
    read::list(req, state, read::Scope::Channel(channel)).await
}

/// Every channel that holds a persisted message, by name, with its count and last message.
#[utoipa::path(
    tag = "channels",
    params(("prefix" = Option<String>, Query, description = "Only channels starting with it", example = "chat.")),
    responses(
        (status = 200, description = "The channels, ordered by name", body = Vec<read::ChannelInfo>),
        (status = 400, description = "A prefix with characters no channel name has", body = Problem, content_type = "application/problem+json"),
        ReadRefusals,
    )
)]
#[get("/channels")]
async fn list_channels(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    read::channels(req, state).await
}

/// Every persisted message in stream order, streamed with constant memory; or a page of them.
// Alike in shape only to `list_channel_messages`: the parameters, the 200 with its `Link` and the 400
// each describe this path. What the two lists share is written once, in `ReadRefusals`.
#[utoipa::path(
    tag = "messages",
    params(
        ("after" = Option<String>, Query, description = "A stream_id: only messages after it (exclusive)", example = "1732478400123-0"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Page size; with it, a Link header names the next page", example = 100),
    ),
    responses(
        (status = 200, description = "A JSON array of messages in stream order", body = Vec<model::Message>,
            headers(("Link" = String, description = "</messages?after=…&limit=…>; rel=\"next\" when more remain"))),
        (status = 400, description = "A bad `after` or `limit`", body = Problem, content_type = "application/problem+json"),
        ReadRefusals,
    )
)]
#[get("/messages")]
async fn list_messages(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    read::list(req, state, read::Scope::All).await
}

/// One persisted message by its id.
#[utoipa::path(
    tag = "messages",
    params(("id" = uuid::Uuid, Path, description = "The message id from the 202", example = "01936f4e-8a9b-7c3d-9e2f-0a1b2c3d4e5f")),
    responses(
        (status = 200, description = "The message", body = model::Message),
        (status = 400, description = "Not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No message has this id (yet: it may not be persisted)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unreachable", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/messages/{id}")]
async fn get_message(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    read::one(req, path, state).await
}

/// This document.
#[utoipa::path(tag = "operations", responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
#[get("/openapi.json")]
async fn openapi_json(doc: web::Data<ApiDoc>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.0.clone())
}

const DOCS: &str = include_str!("../api/docs.html");

/// A page that renders this document, fetching nothing from outside the service.
#[utoipa::path(tag = "operations", responses((status = 200, description = "HTML", body = String, content_type = "text/html")))]
#[get("/docs")]
async fn docs() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(DOCS)
}
