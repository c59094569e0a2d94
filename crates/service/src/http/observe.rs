//! Every request's id, access-log line and metrics, and the credential it carries.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{web, HttpRequest};

use super::Health;

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

/// The request id of a request: the client's `X-Request-Id` when it is 1–128 characters of a safe
/// alphabet (letters, digits and `-_.:/+=@`: any UUID, ULID, base64 or trace id), else one generated
/// here. The id goes into every log line about the request, so a space, quote or control character
/// from a client could forge fields or whole lines there. [`observe`] puts it in the request's extensions and echoes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The `sub` of the token a request was authorized with, put in the request's extensions by the
/// handler that checked it, for the access log.
#[derive(Debug, Clone)]
pub struct Subject(pub String);

impl Subject {
    /// Records `sub` on `req`, for the access log line of [`observe`].
    pub fn record(req: &HttpRequest, sub: Option<&str>) {
        use actix_web::HttpMessage;
        if let Some(sub) = sub {
            req.extensions_mut().insert(Self(sub.to_owned()));
        }
    }
}

fn safe_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b)
}

impl RequestId {
    fn from_header(value: Option<&actix_web::http::header::HeaderValue>) -> Self {
        match value.map(|v| v.as_bytes()) {
            Some(v) if !v.is_empty() && v.len() <= 128 && v.iter().all(|&b| safe_id_byte(b)) => {
                // All bytes are ASCII, so this is valid UTF-8.
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
    let sub = res.request().extensions().get::<Subject>().cloned();
    match sub {
        // A token's `sub` is the client's own text: written as a debug string, quoted and escaped, so
        // it cannot forge fields.
        Some(Subject(sub)) => log::info!(
            target: "access",
            "{method} {route} {} {:.3}ms request_id={} sub={sub:?}",
            status.as_u16(),
            elapsed.as_secs_f64() * 1e3,
            id.0
        ),
        None => log::info!(
            target: "access",
            "{method} {route} {} {:.3}ms request_id={}",
            status.as_u16(),
            elapsed.as_secs_f64() * 1e3,
            id.0
        ),
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_that_could_forge_a_log_line_is_replaced_by_a_generated_one() {
        use actix_web::http::header::HeaderValue;
        let id = |v: &str| RequestId::from_header(Some(&HeaderValue::from_str(v).unwrap())).0;
        for kept in [
            "abc-123",
            "01936f4e-8a9b-7c3d-9e2f-0a1b2c3d4e5f",
            "trace:a/b+c=@d_e.f",
        ] {
            assert_eq!(id(kept), kept);
        }
        for forged in ["x status=500 request_id=y", "x\"", "a\\b", &"x".repeat(129)] {
            let got = id(forged);
            assert_ne!(got, forged);
            assert_eq!(got.len(), 32, "a generated id: {got}");
        }
    }
}
