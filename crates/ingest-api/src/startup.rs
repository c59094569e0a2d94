//! Building and running the ingest-api server: bind (port 0 in tests), wire the state, serve until the
//! caller's shutdown future resolves.

use std::future::Future;
use std::time::Duration;

use actix_cors::Cors;
use actix_web::dev::Server;
use actix_web::{http, web, App};
use anyhow::Context;
use service::http::{Health, ServerOptions};

use service::settings::AllowedOrigins;
use service::Settings;
use utoipa_actix_web::AppExt;

use crate::metrics::Metrics;
use crate::publish::{GroupCommit, Limits};
use crate::routes;
pub use crate::state::{AppState, WorkerRedis};

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    limits: web::Data<Limits>,
}

/// How long in-flight requests get to finish after the stop signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl Application {
    /// Binds `INGEST_ADDR` and prepares the server. Neither Redis nor Postgres needs to be up yet.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = service::http::bind(settings.ingest_addr, "INGEST_ADDR")?;
        let port = listener.local_addr()?.port();
        let redis = service::redis::shared_connection(&settings).context("REDIS_URL")?;
        let db = store::connect_pool(
            &settings.database_url,
            settings.database_pool_size,
            Duration::from_millis(settings.redis_timeout_ms),
        );
        log::info!(
            "ingest-api listening on {} (stream `{}`)",
            listener.local_addr()?,
            settings.stream_key
        );
        let metrics = Metrics::new();
        let timeout = Duration::from_millis(settings.redis_timeout_ms);
        // Ready means "can accept messages": Redis answers. Postgres is not required, since the stream
        // buffers while it is away.
        let health =
            web::Data::new(Health::new(metrics.registry.clone()).redis(redis.clone(), timeout));
        let full_reads = std::sync::Arc::new(tokio::sync::Semaphore::new(
            (settings.database_pool_size as usize / 2).max(1),
        ));
        let state = web::Data::new(AppState {
            full_reads,
            redis,
            db,
            metrics,
            settings,
        });
        let limits = web::Data::new(Limits::new(&state.settings));
        let app_state = state.clone();
        let app_limits = limits.clone();
        // Two blocking threads per worker run every Postgres read (see ServerOptions::blocking_threads);
        // full reads take at most half the pool, so paged reads and GET /messages/{id} always get one.
        let options = ServerOptions::new(&state.settings, SHUTDOWN_GRACE).with_blocking_threads(2);
        let doc = web::Data::new(routes::ApiDoc(
            routes::openapi()
                .to_pretty_json()
                .context("rendering the OpenAPI document")?,
        ));
        let server = service::http::serve(listener, options, move || {
            // Runs on each worker thread: the connection's I/O task is spawned on that worker's runtime.
            let redis =
                service::redis::shared_connection(&app_state.settings).unwrap_or_else(|e| {
                    unreachable!("REDIS_URL was checked when the server was built: {e}")
                });
            // Single-entry XADDs of this worker's concurrent requests, coalesced into one pipeline on
            // the same connection (see group_commit); its task runs on this worker's runtime too.
            let group = GroupCommit::start(redis.clone());
            App::new()
                .into_utoipa_app()
                .configure(|cfg| routes::configure(cfg, health.clone()))
                .into_app()
                .wrap(cors(&app_state.settings.allowed_origins))
                .app_data(app_state.clone())
                .app_data(app_limits.clone())
                .app_data(web::Data::new(WorkerRedis(redis)))
                .app_data(web::Data::new(group))
                .app_data(doc.clone())
        })?;
        Ok(Self {
            port,
            server,
            state,
            limits,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets in-flight requests finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let handle = self.server.handle();
        tokio::spawn(async move {
            shutdown.await;
            handle.stop(true).await;
        });
        let (redis, key) = (
            self.state.redis.clone(),
            self.state.settings.stream_key.clone(),
        );
        let limits = self.limits.clone();
        let backlog = tokio::spawn(async move { limits.watch(redis, key).await });
        let served = self.server.await;
        backlog.abort();
        served
    }
}

/// CORS for browsers posting from the live page (or any origin in `ALLOWED_ORIGINS`).
fn cors(origins: &AllowedOrigins) -> Cors {
    let cors = Cors::default()
        .allowed_methods([http::Method::GET, http::Method::POST])
        .allowed_headers([http::header::CONTENT_TYPE, http::header::AUTHORIZATION])
        .allowed_header("idempotency-key")
        .allowed_header(service::http::REQUEST_ID_HEADER)
        .expose_headers([
            http::header::LOCATION,
            http::header::LINK,
            http::header::RETRY_AFTER,
            http::header::HeaderName::from_static(service::http::REQUEST_ID_HEADER),
        ])
        .max_age(3600);
    match origins {
        AllowedOrigins::Any => cors.allow_any_origin(),
        AllowedOrigins::Loopback => cors.allowed_origin_fn(|origin, _| {
            origin
                .to_str()
                .is_ok_and(service::settings::origins::is_loopback_origin)
        }),
        AllowedOrigins::List(list) => list.iter().fold(cors, |c, o| c.allowed_origin(o)),
    }
}
