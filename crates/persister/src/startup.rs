//! Building and running a persister: prepare the database, start the health server and the consumer,
//! and on the stop signal let the consumer finish its batch before exiting.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App};
use anyhow::Context;
use diesel::RunQueryDsl;
use service::http::{Health, ServerOptions};
use service::Settings;
use tokio_util::sync::CancellationToken;

use crate::consumer::Consumer;
use crate::metrics::Metrics;

pub struct Application {
    port: u16,
    server: Server,
    consumer: Consumer,
    /// For the stream gauges' sampler.
    sampler: (service::redis::Conn, String, Arc<Metrics>),
    /// `HISTORY_RETENTION`'s deletions, when set: the retention and their own connection.
    history: Option<(Duration, store::PgPool)>,
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
        let redis = service::redis::shared_connection(&settings).context("REDIS_URL")?;
        let reads = service::redis::raw::StreamReads::new(
            &settings,
            Duration::from_millis(settings.persister_block_ms),
            crate::reading::NEW_READS,
            crate::reading::RAW_READS_NAME,
        )?;
        let metrics = Arc::new(Metrics::new());
        let listener = service::http::bind(settings.persister_addr, "PERSISTER_ADDR")?;
        let port = listener.local_addr()?.port();
        log::info!("persister health on {}", listener.local_addr()?);
        // Ready means "can store": Redis and Postgres both answer.
        let db = store::connect_pool(&settings.database_url, 1, timeout);
        let health = web::Data::new(
            Health::new(metrics.registry.clone())
                .redis(redis.clone(), timeout)
                .check(
                    "postgres",
                    Arc::new(move || {
                        let db = db.clone();
                        Box::pin(async move {
                            let ping = move || -> anyhow::Result<()> {
                                diesel::sql_query("SELECT 1").execute(&mut db.get()?)?;
                                Ok(())
                            };
                            match tokio::task::spawn_blocking(ping).await {
                                Ok(result) => result.map_err(|e| e.to_string()),
                                Err(e) => Err(e.to_string()),
                            }
                        })
                    }),
                ),
        );
        let options = ServerOptions {
            workers: Some(1),
            ..ServerOptions::new(&settings, Duration::from_secs(5))
        };
        let server = service::http::serve(listener, options, move || {
            App::new()
                .configure(|cfg| service::http::health_routes(cfg, health.clone()))
                .default_service(web::to(service::problem::not_found))
        })?;
        let sampler = (
            redis.clone(),
            settings.stream_key.clone(),
            Arc::clone(&metrics),
        );
        let seam = crate::test_hooks::Seam::from_env()?;
        let history = settings.history_retention.0.map(|retention| {
            // Deletions wait on the batches' row locks at most this long, then retry next pass.
            let db = store::connect_pool(&settings.database_url, 1, Duration::from_secs(10));
            (retention, db)
        });
        let consumer = Consumer::new(settings, reads, redis, metrics, seam);
        Ok(Self {
            port,
            server,
            consumer,
            sampler,
            history,
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
        let (redis, key, metrics) = self.sampler;
        let metrics_for_history = Arc::clone(&metrics);
        let sampler = tokio::spawn(crate::metrics::sample_stream(
            redis,
            key,
            metrics,
            stop.clone(),
        ));
        let history = self.history.map(|(retention, db)| {
            tokio::spawn(crate::history::run(
                retention,
                db,
                Arc::clone(&metrics_for_history),
                stop.clone(),
            ))
        });
        let handle = self.server.handle();
        let server = tokio::spawn(self.server);
        shutdown.await;
        stop.cancel();
        consumer.await.context("consumer task")?;
        sampler.await.context("stream sampler task")?;
        if let Some(history) = history {
            history.await.context("history retention task")?;
        }
        handle.stop(true).await;
        server.await.context("health server task")??;
        Ok(())
    }
}
