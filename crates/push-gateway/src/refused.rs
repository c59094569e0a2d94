//! Why a `/ws` upgrade is refused: one error type, turned into the problem response every service answers
//! with in one place (as ingest-api's `ApiError` is).

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use model::ChannelPattern;

/// An upgrade the gateway refuses, before any WebSocket exists.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("{0}")]
    BadQuery(String),
    #[error("origin {0} is not in ALLOWED_ORIGINS")]
    OriginNotAllowed(String),
    #[error("send a key with the `subscribe` scope as `Authorization: Bearer <key>` or `?access_token=<key>`")]
    Unauthenticated,
    #[error("this API key lacks the `subscribe` scope")]
    LacksScope,
    #[error("this credential may not subscribe to `{0}`")]
    PatternForbidden(ChannelPattern),
    #[error("channels: `{0}` and `{1}` overlap: a message would be sent twice; subscribe to the wider one")]
    Overlap(ChannelPattern, ChannelPattern),
    #[error("channels: more than MAX_SUBSCRIPTIONS ({0}) patterns")]
    TooManySubscriptions(usize),
    #[error("this address has MAX_CONNECTIONS_PER_IP WebSockets open; close one first")]
    AddressFull,
    #[error("the gateway is at MAX_CONNECTIONS; retry later")]
    GatewayFull,
    #[error("the gateway has not reached the stream yet; retry shortly")]
    NotReady,
    #[error("{0}")]
    NotAWebSocket(String),
}

impl UpgradeError {
    /// The status, the problem's `type` slug and its title.
    fn kind(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::BadQuery(_) => (
                StatusCode::BAD_REQUEST,
                "invalid-parameter",
                "Invalid parameter",
            ),
            Self::OriginNotAllowed(_) => (
                StatusCode::FORBIDDEN,
                "origin-not-allowed",
                "Origin not allowed",
            ),
            Self::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Unauthenticated",
            ),
            Self::LacksScope | Self::PatternForbidden(_) => {
                (StatusCode::FORBIDDEN, "forbidden", "Forbidden")
            }
            Self::Overlap(..) => (
                StatusCode::CONFLICT,
                "overlapping-subscriptions",
                "Overlapping subscriptions",
            ),
            Self::TooManySubscriptions(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-subscriptions",
                "Too many subscriptions",
            ),
            Self::AddressFull => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-connections-from-address",
                "Too many connections from this address",
            ),
            Self::GatewayFull => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too-many-connections",
                "Too many connections",
            ),
            Self::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not-ready", "Not ready"),
            Self::NotAWebSocket(_) => (
                StatusCode::BAD_REQUEST,
                "not-a-websocket",
                "Not a WebSocket handshake",
            ),
        }
    }
}

impl actix_web::ResponseError for UpgradeError {
    fn status_code(&self) -> StatusCode {
        self.kind().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, slug, title) = self.kind();
        let problem = service::Problem::new(status, slug, title, self.to_string());
        match self {
            // Only the address's own sockets free a place: it is told when to look again.
            Self::AddressFull => problem.retry_after(service::problem::RETRY_AFTER_SECS),
            _ => problem,
        }
        .response()
    }
}
