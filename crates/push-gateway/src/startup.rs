//! Building and running a push-gateway: the reader task, the hub, the routes, and a clean stop that closes
//! every socket with 1001 before the server goes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App};
use anyhow::Context;
use service::http::{Health, ServerOptions};
use service::Settings;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::slots::Slots;
use crate::test_hooks::{Gate, Seam, Seams};
use crate::{page, reader, ws};

pub use crate::state::{AppState, REPLAYS_AT_ONCE};

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    reads: service::redis::raw::StreamReads,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = service::http::bind(settings.gateway_addr, "GATEWAY_ADDR")?;
        let port = listener.local_addr()?.port();
        let reads = service::redis::raw::StreamReads::new(
            &settings,
            reader::READ_BLOCK,
            1,
            reader::RAW_READS_NAME,
        )?;
        let redis = service::redis::shared_connection(&settings).context("REDIS_URL")?;
        let metrics = Arc::new(Metrics::new());
        let timeout = Duration::from_millis(settings.redis_timeout_ms);
        let hub = Arc::new(Hub::new(
            settings.ws_send_queue,
            settings.ws_send_queue_bytes,
            settings.max_connections,
        ));
        // Ready means "can serve /ws": Redis answers and the reader has its place in the stream.
        let reading = Arc::clone(&hub);
        let health = web::Data::new(
            Health::new(metrics.registry.clone())
                .redis(redis.clone(), timeout)
                .check(
                    "stream",
                    Arc::new(move || {
                        let ready = reading.is_ready();
                        Box::pin(async move {
                            if ready {
                                Ok(())
                            } else {
                                Err("the reader has no stream position yet".into())
                            }
                        })
                    }),
                ),
        );
        let state = web::Data::new(AppState {
            hub,
            redis,
            replay_redis: service::redis::shared_connection(&settings).context("REDIS_URL")?,
            db: store::connect_pool(
                &settings.database_url,
                crate::history::POOL_SIZE,
                crate::history::POOL_WAIT,
            ),
            replays: Arc::default(),
            shedding: Default::default(),
            slots: Slots::new(
                settings.max_connections,
                settings.max_connections_per_ip,
                metrics.connections.clone(),
            ),
            metrics,
            page: page::render_index(&settings.ingest_public_url),
            stop: CancellationToken::new(),
            sessions: TaskTracker::new(),
            seams: Seams::default(),
            settings,
        });
        log::info!("push-gateway listening on {}", listener.local_addr()?);
        let app_state = state.clone();
        let options = ServerOptions::new(&state.settings, Duration::from_secs(5));
        let server = service::http::serve(listener, options, move || {
            App::new()
                .app_data(app_state.clone())
                .configure(page::configure)
                .route("/ws", web::get().to(ws::ws))
                .configure(|cfg| service::http::health_routes(cfg, health.clone()))
                .default_service(web::to(service::problem::not_found))
        })?;
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

    /// A test's hold on every resuming session at `seam` (see [`crate::test_hooks`]).
    pub fn gate(&self, seam: Seam) -> Arc<Gate> {
        self.state.seams.gate(seam)
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
            state.sessions.close();
            let _ = tokio::time::timeout(Duration::from_secs(2), state.sessions.wait()).await;
            handle.stop(true).await;
        });
        let served = self.server.await;
        let _ = reader.await;
        served
    }
}
