//! What every ingest-api handler shares: built by `startup`, read by the routes. A module of its own so
//! that the routes and the start-up both point at it, and neither at the other. What only the publish
//! path keeps (backlog, in-flight bytes, rate) is `publish::Limits`, so this module imports neither path.

use service::redis::Conn;
use service::Settings;
use store::PgPool;

use crate::metrics::Metrics;

/// The multiplexed connection that carries the `XADD`s of one actix worker's requests. Each worker
/// thread has its own, whose I/O task runs on that worker's runtime: a request then never wakes another
/// thread to reach Redis (one connection shared by all workers spent a third of ingest's CPU in context
/// switches).
pub struct WorkerRedis(pub Conn);

/// What every handler shares.
pub struct AppState {
    pub settings: Settings,
    /// A multiplexed connection for readiness and the backlog watch. Requests use their worker's own
    /// [`WorkerRedis`].
    pub redis: Conn,
    /// Postgres, for reads only. Connections are made on demand, so ingest runs while Postgres is down.
    pub db: PgPool,
    pub metrics: Metrics,
    /// Pages of full reads (`GET /messages` without `limit`) being read from Postgres at once: at most
    /// half the pool, so that paged reads and `GET /messages/{id}` always find a connection.
    pub full_reads: std::sync::Arc<tokio::sync::Semaphore>,
}
