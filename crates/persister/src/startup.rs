//! Building and running a persister: prepare the database, start the health server and the consumer,
//! and on the stop signal let the consumer finish its batch before exiting.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use model::redis_stream;
use model::Settings;
use tokio_util::sync::CancellationToken;

use crate::consumer::Consumer;
use crate::health::{self, HealthState};
use crate::metrics::Metrics;

pub struct Application {
    port: u16,
    server: Server,
    consumer: Consumer,
}

impl Application {
    /// Creates the database when missing and runs migrations (failing start-up if Postgres cannot be
    /// reached), binds `PERSISTER_ADDR`, and prepares the consumer.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let url = settings.database_url.clone();
        tokio::task::spawn_blocking(move || store::prepare_database(&url))
            .await
            .context("migration task")?
            .context("preparing the database (DATABASE_URL)")?;
        let timeout = Duration::from_millis(settings.redis_timeout_ms);
        let redis = redis_stream::shared_connection(&settings).context("REDIS_URL")?;
        let reads = redis_stream::blocking_pool(
            &settings,
            Duration::from_millis(settings.persister_block_ms),
            2,
        )
        .map_err(|e| anyhow::anyhow!("REDIS_URL: {e}"))?;
        let metrics = Arc::new(Metrics::new());
        let listener = TcpListener::bind(settings.persister_addr)
            .with_context(|| format!("binding PERSISTER_ADDR={}", settings.persister_addr))?;
        let port = listener.local_addr()?.port();
        log::info!("persister health on {}", listener.local_addr()?);
        let health = web::Data::new(HealthState {
            redis: redis.clone(),
            db: store::connect_pool(&settings.database_url, 1, timeout),
            metrics: Arc::clone(&metrics),
            timeout,
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(health.clone())
                .configure(health::configure)
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        let consumer = Consumer::new(settings, reads, redis, metrics);
        Ok(Self {
            port,
            server,
            consumer,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Consumes until `shutdown` resolves; the batch in hand is committed and acknowledged (or left
    /// pending, never half-done) before this returns.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let consumer = tokio::spawn(self.consumer.run(stop.clone()));
        let handle = self.server.handle();
        let server = tokio::spawn(self.server);
        shutdown.await;
        stop.cancel();
        consumer.await.context("consumer task")?;
        handle.stop(true).await;
        server.await.context("health server task")??;
        Ok(())
    }
}
