//! The routes of ingest-api (health, readiness and metrics come from `service::http`).

mod publish;
mod read;

use actix_web::web;

use crate::problem::ApiError;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/messages", web::post().to(publish::publish))
        .route("/messages", web::get().to(read::list))
        .route("/messages/{id}", web::get().to(read::one))
        .route("/openapi.json", web::get().to(openapi))
        .route("/docs", web::get().to(docs))
        .default_service(web::to(|| async {
            Err::<actix_web::HttpResponse, _>(ApiError::NoRoute)
        }));
}

/// The OpenAPI 3.1 document of this API (kept beside the code; a test checks it against the routes).
pub const OPENAPI: &str = include_str!("../../api/openapi.json");
const DOCS: &str = include_str!("../../api/docs.html");

async fn openapi() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

async fn docs() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(DOCS)
}
