//! Building and running a push-gateway: the reader task, the hub, the routes, and a clean stop that closes
//! every socket with 1001 before the server goes.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::Context;
use model::redis_stream::{self, redis::aio::ConnectionManager};
use model::Settings;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::{page, reader, ws};

pub struct AppState {
    pub settings: Settings,
    pub hub: Arc<Hub>,
    /// Short commands: replay pages, `XINFO`, readiness.
    pub redis: ConnectionManager,
    pub metrics: Arc<Metrics>,
    /// The rendered live page.
    pub page: String,
    /// Cancelled at shutdown: every session closes with 1001.
    pub stop: CancellationToken,
}

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    reads: redis_stream::deadpool_redis::Pool,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.gateway_addr)
            .with_context(|| format!("binding GATEWAY_ADDR={}", settings.gateway_addr))?;
        let port = listener.local_addr()?.port();
        let reads = redis_stream::blocking_pool(&settings, reader::READ_BLOCK, 1)
            .map_err(|e| anyhow::anyhow!("REDIS_URL: {e}"))?;
        let state = web::Data::new(AppState {
            hub: Arc::new(Hub::new(settings.ws_send_queue, settings.max_connections)),
            redis: redis_stream::shared_connection(&settings).context("REDIS_URL")?,
            metrics: Arc::new(Metrics::new()),
            page: page::render_index(&settings.ingest_public_url),
            stop: CancellationToken::new(),
            settings,
        });
        log::info!("push-gateway listening on {}", listener.local_addr()?);
        let app_state = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .configure(page::configure)
                .route("/ws", web::get().to(ws::ws))
                .route(
                    "/healthz",
                    web::get().to(|| async {
                        HttpResponse::Ok().content_type("text/plain").body("ok\n")
                    }),
                )
                .route("/readyz", web::get().to(readyz))
                .route("/metrics", web::get().to(metrics))
                .default_service(web::to(|| async {
                    problem(404, "not-found", "Not found", "no such resource".into())
                }))
        })
        // Frames are small and pushed unprompted: without TCP_NODELAY, Nagle's algorithm holds each one
        // until the client's delayed ACK (up to 40 ms) whenever an earlier frame is still unacknowledged.
        .on_connect(|io, _| {
            if let Some(tcp) = io.downcast_ref::<actix_web::rt::net::TcpStream>() {
                let _ = tcp.set_nodelay(true);
            }
        })
        .disable_signals()
        .shutdown_timeout(5)
        .listen(listener)?
        .run();
        Ok(Self {
            port,
            server,
            state,
            reads,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` resolves; then the reader stops, every client gets a 1001 close, and the
    /// server stops.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state.clone();
        let reader = tokio::spawn(reader::run(
            state.settings.stream_key.clone(),
            self.reads,
            Arc::clone(&state.hub),
            Arc::clone(&state.metrics),
            state.stop.clone(),
        ));
        let handle = self.server.handle();
        tokio::spawn(async move {
            shutdown.await;
            state.stop.cancel();
            // Give sessions a moment to send their close frames before the server drops connections.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while !state.hub.is_empty() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            handle.stop(true).await;
        });
        let served = self.server.await;
        let _ = reader.await;
        served
    }
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let timeout = Duration::from_millis(state.settings.redis_timeout_ms);
    match model::redis_stream::ping(&mut state.redis.clone(), timeout).await {
        Ok(()) => {
            HttpResponse::Ok().json(serde_json::json!({"redis": "ok", "clients": state.hub.len()}))
        }
        Err(reason) => {
            HttpResponse::ServiceUnavailable().json(serde_json::json!({"redis": reason}))
        }
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(model::metrics::render(&state.metrics.registry))
}

/// An RFC 9457 problem response.
pub fn problem(status: u16, slug: &str, title: &str, detail: String) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = HttpResponse::build(status);
    res.content_type("application/problem+json");
    if status == StatusCode::SERVICE_UNAVAILABLE {
        res.insert_header(("retry-after", "1"));
    }
    res.body(
        serde_json::json!({"type": format!("/problems/{slug}"), "title": title, "status": status.as_u16(), "detail": detail})
            .to_string(),
    )
}
