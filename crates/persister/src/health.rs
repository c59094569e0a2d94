//! The persister's small HTTP side: liveness, readiness (Redis and Postgres both answer) and metrics.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use diesel::RunQueryDsl;
use model::redis_stream::redis::aio::ConnectionManager;
use store::PgPool;

use crate::metrics::Metrics;

pub struct HealthState {
    pub redis: ConnectionManager,
    pub db: PgPool,
    pub metrics: Arc<Metrics>,
    pub timeout: Duration,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/healthz",
        web::get().to(|| async { HttpResponse::Ok().content_type("text/plain").body("ok\n") }),
    )
    .route("/readyz", web::get().to(readyz))
    .route("/metrics", web::get().to(metrics));
}

async fn readyz(state: web::Data<HealthState>) -> HttpResponse {
    let redis_ok = match model::redis_stream::ping(&mut state.redis.clone(), state.timeout).await {
        Ok(()) => "ok".to_owned(),
        Err(reason) => reason,
    };
    let db = state.db.clone();
    let pg_ok = match web::block(move || -> anyhow::Result<()> {
        diesel::sql_query("SELECT 1").execute(&mut db.get()?)?;
        Ok(())
    })
    .await
    {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    let body = serde_json::json!({"redis": redis_ok, "postgres": pg_ok});
    if redis_ok == "ok" && pg_ok == "ok" {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics(state: web::Data<HealthState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(model::metrics::render(&state.metrics.registry))
}
