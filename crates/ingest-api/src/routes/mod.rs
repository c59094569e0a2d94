//! The routes of ingest-api.

mod health;
mod publish;
mod read;

use actix_web::web;

use crate::problem::ApiError;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/messages", web::post().to(publish::publish))
        .route("/messages", web::get().to(read::list))
        .route("/messages/{id}", web::get().to(read::one))
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::metrics))
        .default_service(web::to(|| async {
            Err::<actix_web::HttpResponse, _>(ApiError::NoRoute)
        }));
}
