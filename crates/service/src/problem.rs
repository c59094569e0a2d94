//! The one error response of every Relay service: RFC 9457 `application/problem+json` with `type`,
//! `title`, `status` and `detail`. `detail` says what to do; a cause chain never reaches the client.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde::Serialize;

/// Seconds a client should wait before retrying a 503 when nothing more precise is known.
pub const RETRY_AFTER_SECS: u64 = 1;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "type": "/problems/malformed-json",
    "title": "Malformed JSON",
    "status": 400,
    "detail": "expected value at line 1 column 1"
}))]
pub struct Problem {
    /// A relative URI (`/problems/<slug>`), as RFC 9457 allows.
    r#type: String,
    title: &'static str,
    status: u16,
    detail: String,
    #[serde(skip)]
    #[schema(ignore)]
    retry_after: Option<u64>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        slug: &str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            r#type: format!("/problems/{slug}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            retry_after: (status == StatusCode::SERVICE_UNAVAILABLE).then_some(RETRY_AFTER_SECS),
        }
    }

    /// `Retry-After` in seconds (429 and 503 answers).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status());
        res.content_type("application/problem+json");
        if let Some(secs) = self.retry_after {
            res.insert_header((header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        if self.status == 401 {
            res.insert_header((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"relay\""),
            ));
        }
        res.body(serde_json::to_string(self).unwrap_or_default())
    }
}

impl From<Problem> for HttpResponse {
    fn from(p: Problem) -> Self {
        p.response()
    }
}

/// The answer for a path no route serves.
pub async fn not_found() -> HttpResponse {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        "no such resource",
    )
    .response()
}
