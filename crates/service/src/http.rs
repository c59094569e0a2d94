//! The HTTP side every service shares: binding, the server's set-up, and the `/healthz`, `/readyz` and
//! `/metrics` routes.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::Context;
use futures_util::future::BoxFuture;
use prometheus::Registry;

/// Binds `addr` (port 0 in tests), naming the setting when that fails.
pub fn bind(addr: SocketAddr, setting: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).with_context(|| format!("binding {setting}={addr}"))
}

/// How a service's HTTP server runs.
#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    /// Worker threads; `None`: one per core.
    pub workers: Option<usize>,
    /// How long in-flight requests get to finish after the stop signal.
    pub shutdown_grace: Duration,
}

/// Starts an actix-web server on `listener` with the settings every Relay service shares: every route
/// [`observe`]d (request id, HTTP metrics, access log), signals are the caller's (the server stops when
/// told), and `TCP_NODELAY` is set on every connection: responses and
/// frames are small, and Nagle's algorithm would hold each one until the client's delayed ACK (up to
/// 40 ms) whenever an earlier one is still unacknowledged.
pub fn serve<F, T, B>(
    listener: TcpListener,
    options: ServerOptions,
    factory: F,
) -> std::io::Result<Server>
where
    F: Fn() -> App<T> + Send + Clone + 'static,
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    let mut server =
        HttpServer::new(move || factory().wrap(actix_web::middleware::from_fn(observe)))
            .on_connect(|io, _| {
                if let Some(tcp) = io.downcast_ref::<actix_web::rt::net::TcpStream>() {
                    let _ = tcp.set_nodelay(true);
                }
            })
            .disable_signals()
            .shutdown_timeout(options.shutdown_grace.as_secs().max(1));
    if let Some(workers) = options.workers {
        server = server.workers(workers);
    }
    Ok(server.listen(listener)?.run())
}

/// One readiness check: `Ok` when the dependency answers; the error is for the log only.
pub type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// What `/readyz` checks and `/metrics` renders, and the HTTP request metrics [`observe`] records.
pub struct Health {
    pub registry: Registry,
    checks: Vec<(&'static str, Check)>,
    requests: prometheus::IntCounterVec,
    request_seconds: prometheus::HistogramVec,
}

impl Health {
    pub fn new(registry: Registry) -> Self {
        Self {
            requests: crate::metrics::counter_vec(
                &registry,
                "relay_http_requests_total",
                "HTTP requests answered, by route pattern and status",
                &["route", "status"],
            ),
            request_seconds: crate::metrics::histogram_vec(
                &registry,
                "relay_http_request_duration_seconds",
                "Time to answer an HTTP request (to its response head), by route pattern",
                &["route"],
                crate::metrics::LATENCY_BUCKETS,
            ),
            registry,
            checks: Vec::new(),
        }
    }

    /// Adds a dependency `name` that must answer for the service to be ready.
    pub fn check(mut self, name: &'static str, check: Check) -> Self {
        self.checks.push((name, check));
        self
    }

    /// Adds Redis: ready when it answers `PING` within `timeout`.
    pub fn redis(self, conn: crate::redis::Conn, timeout: Duration) -> Self {
        self.check(
            "redis",
            Arc::new(move || {
                let mut conn = conn.clone();
                Box::pin(async move { crate::redis::ping(&mut conn, timeout).await })
            }),
        )
    }
}

/// `/healthz` (the process is alive), `/readyz` (every check passes) and `/metrics`.
pub fn health_routes(cfg: &mut web::ServiceConfig, health: web::Data<Health>) {
    cfg.app_data(health)
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// 200 when every dependency answers, else 503. The body names each dependency and says `ok` or
/// `unavailable`: its error text goes to the log, never to whoever asks.
async fn readyz(health: web::Data<Health>) -> HttpResponse {
    let results =
        futures_util::future::join_all(health.checks.iter().map(|(_, check)| check())).await;
    let mut body = serde_json::Map::new();
    let mut ready = true;
    for ((name, _), result) in health.checks.iter().zip(results) {
        let state = match result {
            Ok(()) => "ok",
            Err(reason) => {
                ready = false;
                log::debug!("not ready: {name}: {reason}");
                "unavailable"
            }
        };
        body.insert((*name).to_owned(), state.into());
    }
    body.insert(
        "status".into(),
        if ready { "ready" } else { "not ready" }.into(),
    );
    let mut res = if ready {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    res.json(body)
}

async fn metrics(health: web::Data<Health>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::render(&health.registry))
}

/// The key of an `Authorization: Bearer <key>` header. The scheme is matched case-insensitively
/// (RFC 9110 §11.1).
pub fn bearer(headers: &actix_web::http::header::HeaderMap) -> Option<&str> {
    let value = headers
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim())
        .filter(|k| !k.is_empty())
}

/// The request id of a request: the client's `X-Request-Id` when it is 1–128 printable ASCII characters,
/// else one generated here. [`observe`] puts it in the request's extensions and echoes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

pub const REQUEST_ID_HEADER: &str = "x-request-id";

impl RequestId {
    fn from_header(value: Option<&actix_web::http::header::HeaderValue>) -> Self {
        match value.map(|v| v.as_bytes()) {
            Some(v)
                if !v.is_empty()
                    && v.len() <= 128
                    && v.iter().all(|b| (0x20..=0x7e).contains(b)) =>
            {
                // All bytes are printable ASCII, so this is valid UTF-8.
                Self(String::from_utf8_lossy(v).into_owned())
            }
            _ => Self(uuid::Uuid::now_v7().simple().to_string()),
        }
    }

    /// The id of `req` (set by [`observe`]; generated when the middleware did not run).
    pub fn of(req: &actix_web::HttpRequest) -> Self {
        use actix_web::HttpMessage;
        req.extensions()
            .get::<Self>()
            .cloned()
            .unwrap_or_else(|| Self::from_header(req.headers().get(REQUEST_ID_HEADER)))
    }
}

/// Middleware for every route of a service: takes or makes the request id, echoes it in `X-Request-Id`,
/// counts the request in `relay_http_requests_total{route,status}` and its time in
/// `relay_http_request_duration_seconds{route}`, and writes one access-log line (target `access`: filter
/// it with `RUST_LOG=info,access=warn`). The route label is the matched pattern (`/messages/{id}`), never
/// the raw path, so a client cannot grow the label set.
pub async fn observe(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    use actix_web::HttpMessage;
    let started = std::time::Instant::now();
    let id = RequestId::from_header(req.headers().get(REQUEST_ID_HEADER));
    req.extensions_mut().insert(id.clone());
    let method = req.method().clone();
    let health = req.app_data::<web::Data<Health>>().cloned();
    let mut res = next.call(req).await?;
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let status = res.status();
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&id.0) {
        res.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static(REQUEST_ID_HEADER),
            value,
        );
    }
    let elapsed = started.elapsed();
    if let Some(health) = health {
        health
            .requests
            .with_label_values(&[route.as_str(), status.as_str()])
            .inc();
        health
            .request_seconds
            .with_label_values(&[route.as_str()])
            .observe(elapsed.as_secs_f64());
    }
    log::info!(
        target: "access",
        "{method} {route} {} {:.3}ms request_id={}",
        status.as_u16(),
        elapsed.as_secs_f64() * 1e3,
        id.0
    );
    Ok(res)
}
