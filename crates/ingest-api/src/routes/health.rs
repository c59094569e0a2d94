//! Liveness, readiness and metrics. Ready means "can accept messages": Redis answers. Postgres is not
//! required, since the stream buffers while it is away.

use std::time::Duration;

use actix_web::{web, HttpResponse};

use crate::startup::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let timeout = Duration::from_millis(state.settings.redis_timeout_ms);
    match model::redis_stream::ping(&mut state.redis.clone(), timeout).await {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({"status": "ready", "redis": "ok"})),
        Err(reason) => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"status": "not ready", "redis": reason})),
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(model::metrics::render(&state.metrics.registry))
}
