//! push-gateway: reads the whole stream (plain `XREAD`, no consumer group, so every replica sees every
//! entry) and pushes each message to every connected WebSocket client; serves the live page.
//!
//! This first version serves health and metrics only; the fan-out lands with the live-delivery issue.

use std::future::Future;
use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::Context;
use model::redis_stream::{self, redis, redis::aio::ConnectionManager};
use model::Settings;

pub struct Application {
    port: u16,
    server: Server,
}

struct State {
    redis: ConnectionManager,
    timeout: Duration,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.gateway_addr)
            .with_context(|| format!("binding GATEWAY_ADDR={}", settings.gateway_addr))?;
        let port = listener.local_addr()?.port();
        let state = web::Data::new(State {
            redis: redis_stream::shared_connection(&settings).context("REDIS_URL")?,
            timeout: Duration::from_millis(settings.redis_timeout_ms),
        });
        log::info!("push-gateway listening on {}", listener.local_addr()?);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .route(
                    "/healthz",
                    web::get().to(|| async { HttpResponse::Ok().body("ok\n") }),
                )
                .route("/readyz", web::get().to(readyz))
        })
        .disable_signals()
        .listen(listener)?
        .run();
        Ok(Self { port, server })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let handle = self.server.handle();
        tokio::spawn(async move {
            shutdown.await;
            handle.stop(true).await;
        });
        self.server.await
    }
}

async fn readyz(state: web::Data<State>) -> HttpResponse {
    let mut conn = state.redis.clone();
    match tokio::time::timeout(
        state.timeout,
        redis::cmd("PING").query_async::<String>(&mut conn),
    )
    .await
    {
        Ok(Ok(_)) => HttpResponse::Ok().json(serde_json::json!({"redis": "ok"})),
        _ => HttpResponse::ServiceUnavailable().json(serde_json::json!({"redis": "unreachable"})),
    }
}
