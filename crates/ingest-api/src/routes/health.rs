//! Liveness, readiness and metrics. Ready means "can accept messages": Redis answers. Postgres is not
//! required, since the stream buffers while it is away.

use std::time::Duration;

use actix_web::{web, HttpResponse};

use crate::startup::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let mut redis = state.redis.clone();
    let ping = redis::cmd("PING");
    let timeout = Duration::from_millis(state.settings.redis_timeout_ms);
    match tokio::time::timeout(timeout, ping.query_async::<String>(&mut redis)).await {
        Ok(Ok(_)) => HttpResponse::Ok().json(serde_json::json!({"status": "ready", "redis": "ok"})),
        Ok(Err(e)) => not_ready(e.to_string()),
        Err(_) => not_ready(format!("no answer within {timeout:?}")),
    }
}

fn not_ready(reason: String) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .json(serde_json::json!({"status": "not ready", "redis": reason}))
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(model::metrics::render(&state.metrics.registry))
}
