//! `/healthz`, `/readyz` and `/metrics`, and what they report.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{get, web, HttpResponse};
use futures_util::future::BoxFuture;
use prometheus::Registry;

/// One readiness check: `Ok` when the dependency answers; the error is for the log only.
pub type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// What `/readyz` checks and `/metrics` renders, and the HTTP request metrics [`observe`] records.
pub struct Health {
    pub registry: Registry,
    checks: Vec<(&'static str, Check)>,
    pub(super) requests: prometheus::IntCounterVec,
    pub(super) request_seconds: prometheus::HistogramVec,
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
        .service(healthz)
        .service(readyz)
        .service(metrics);
}

/// [`health_routes`] for an app whose OpenAPI document is collected from its services.
pub fn documented_health_routes(
    cfg: &mut utoipa_actix_web::service_config::ServiceConfig,
    health: web::Data<Health>,
) {
    cfg.app_data(health)
        .service(healthz)
        .service(readyz)
        .service(metrics);
}

/// The process is alive.
#[utoipa::path(tag = "operations", responses((status = 200, description = "Alive", body = String, content_type = "text/plain", example = "ok\n")))]
#[get("/healthz")]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// 200 when every dependency answers, else 503. The body names each dependency and says `ok` or
/// `unavailable`: its error text goes to the log, never to whoever asks.
#[utoipa::path(tag = "operations", responses(
    (status = 200, description = "Every dependency answers", body = Object, example = json!({"redis": "ok", "status": "ready"})),
    (status = 503, description = "A dependency does not answer", body = Object, example = json!({"redis": "unavailable", "status": "not ready"}))
))]
#[get("/readyz")]
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

/// The service's metrics in the Prometheus text format.
#[utoipa::path(tag = "operations", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain; version=0.0.4")))]
#[get("/metrics")]
async fn metrics(health: web::Data<Health>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::render(&health.registry))
}
