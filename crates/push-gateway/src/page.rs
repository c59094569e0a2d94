//! The live page, embedded in the binary (the container needs no extra files). The ingest API's public
//! URL is written into the HTML once, at start.

use actix_web::{web, HttpResponse};

use crate::startup::AppState;

const INDEX: &str = include_str!("../../../web/index.html");
const APP_JS: &str = include_str!("../../../web/app.js");
const STYLE: &str = include_str!("../../../web/style.css");

/// The page with `INGEST_PUBLIC_URL` in its `<meta name="relay-ingest-url">`.
pub fn render_index(ingest_public_url: &str) -> String {
    INDEX.replace("{{INGEST_URL}}", &escape_attribute(ingest_public_url))
}

fn escape_attribute(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route(
            "/app.js",
            web::get().to(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            web::get().to(|| async { asset("text/css; charset=utf-8", STYLE) }),
        );
}

async fn index(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-content-type-options", "nosniff"))
        .body(state.page.clone())
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-content-type-options", "nosniff"))
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ingest_url_is_escaped_into_the_page() {
        let page = render_index("http://x/\"><script>");
        assert!(page.contains("http://x/&quot;&gt;&lt;script&gt;"));
        assert!(!page.contains("{{INGEST_URL}}"));
    }
}
