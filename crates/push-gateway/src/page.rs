//! The live page, embedded in the binary (the container needs no extra files). The ingest API's public
//! URL is written into the HTML once, at start.
//!
//! Every answer here carries headers that keep the page what it is even if something hostile got into it:
//! a Content-Security-Policy that runs only the page's own script and style and lets it talk only to its
//! own origin (the page and its WebSocket) and the ingest API, `frame-ancestors 'none'` against
//! clickjacking, `Referrer-Policy: no-referrer` (an `access_token` in the URL never leaks onward) and
//! `X-Content-Type-Options: nosniff`. Payloads are shown with `textContent` (`web/app.js`), never as HTML.

use actix_web::{web, HttpResponse};

use crate::state::AppState;

const INDEX: &str = include_str!("../../../web/index.html");
const APP_JS: &str = include_str!("../../../web/app.js");
const STYLE: &str = include_str!("../../../web/style.css");
/// The browser client, an ES module any application may load (`import { Relay } from "/relay.js"`).
const RELAY_JS: &str = include_str!("../../../web/relay.js");
const RELAY_D_TS: &str = include_str!("../../../web/relay.d.ts");

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

/// The page's CSP for a page served as `host`. `connect-src` names the gateway's own WebSocket origin
/// (`ws://host` and `wss://host`: CSP Level 3 lets `'self'` cover it, older browsers do not, and behind a
/// TLS proxy the scheme is not known here) and the ingest origin — never `ws:` to any host. A `Host`
/// that is not a plain host name (and port) adds nothing: it goes into a header.
pub fn content_security_policy(ingest_public_url: &str, host: Option<&str>) -> String {
    // The settings guarantee a URL here; a value that does not parse just adds no origin.
    let ingest = url::Url::parse(ingest_public_url)
        .map(|u| u.origin().ascii_serialization())
        .ok()
        .filter(|o| o != "null")
        .map(|o| format!(" {o}"))
        .unwrap_or_default();
    let own = host
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        })
        .map(|h| format!(" ws://{h} wss://{h}"))
        .unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'{own}{ingest}; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
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
        )
        .route(
            "/relay.js",
            web::get()
                .to(|req| async move { library(&req, "text/javascript; charset=utf-8", RELAY_JS) }),
        )
        .route(
            "/relay.d.ts",
            web::get().to(|req| async move {
                library(&req, "application/typescript; charset=utf-8", RELAY_D_TS)
            }),
        );
}

/// The client library: other sites' pages load it too, so it is cached for a day and revalidated by
/// its ETag (a hash of the text, so a new build's library is fetched again) with a 304.
fn library(
    req: &actix_web::HttpRequest,
    content_type: &'static str,
    body: &'static str,
) -> HttpResponse {
    let etag = etag_of(body);
    let fresh = req
        .headers()
        .get(actix_web::http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut res = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header(("etag", etag.clone()))
        .insert_header(("cache-control", "public, max-age=86400"))
        .insert_header(("x-content-type-options", "nosniff"))
        .insert_header(("access-control-allow-origin", "*"));
    if fresh {
        return res.finish();
    }
    res.content_type(content_type).body(body)
}

/// A strong ETag for `body`: FNV-1a, stable across builds and runs for the same text.
fn etag_of(body: &str) -> String {
    let hash = body.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("\"{hash:016x}\"")
}

async fn index(req: actix_web::HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let host = req
        .headers()
        .get(actix_web::http::header::HOST)
        .and_then(|h| h.to_str().ok());
    let csp = content_security_policy(&state.settings.ingest_public_url, host);
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-content-type-options", "nosniff"))
        .insert_header(("content-security-policy", csp))
        .insert_header(("x-frame-options", "DENY"))
        .insert_header(("referrer-policy", "no-referrer"))
        .body(state.page.clone())
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-content-type-options", "nosniff"))
        .insert_header(("referrer-policy", "no-referrer"))
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

    #[test]
    fn the_csp_names_only_the_page_its_websocket_and_the_ingest_origin() {
        let csp = content_security_policy(
            "https://ingest.example:8443/api/",
            Some("relay.example:8081"),
        );
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(
            csp.contains("connect-src 'self' ws://relay.example:8081 wss://relay.example:8081 https://ingest.example:8443;"),
            "{csp}"
        );
        assert!(!csp.contains(" ws: ") && !csp.contains(" wss: "), "{csp}");
        let hostile = content_security_policy("http://i", Some("x; script-src *"));
        assert!(
            hostile.contains("connect-src 'self' http://i;"),
            "{hostile}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
    }
}
