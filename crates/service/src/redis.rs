//! Connections to Redis — one node or a Redis Cluster — with bounded waits, and the readiness ping.
//!
//! Two kinds of connection, on purpose:
//! - [`shared_connection`]: one multiplexed, self-reconnecting connection ([`Conn`]) that pipelines the
//!   short commands of every concurrent request (`XADD`, `XACK`, `XINFO`). Its response timeout bounds how
//!   long any caller waits while Redis is away. In a cluster it is one such connection per node, each
//!   command routed by its key's slot.
//! - [`blocking_pool`]: connections for `XREAD BLOCK` / `XREADGROUP BLOCK`. A blocked command holds its
//!   connection until it answers, so it must never sit on the shared one. In a cluster each pooled
//!   connection is a cluster connection of its own (its own sockets to the nodes).
//!
//! `REDIS_URL` decides which: `redis+cluster://host:port,…` is a cluster (see
//! [`crate::settings::cluster_seeds`]), anything else one node.

use std::time::Duration;

use deadpool::managed;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::Settings;

pub mod group;
pub mod raw;

pub use deadpool_redis;
pub use redis;

/// The shared connection: one node's [`ConnectionManager`], or a cluster's [`ClusterConnection`]. Both
/// multiplex and reconnect by themselves; cloning is cheap and shares the sockets.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// `ConnectionLike` for an enum of a `Single` and a `Cluster` connection: each call goes to the variant
/// held. A macro because the two enums hold different types, one of them a pool's `Object`, which is
/// neither ours nor a `ConnectionLike` itself (it only derefs to one), so no generic impl can cover both.
macro_rules! connection_like_by_variant {
    ($enum:ty) => {
        impl ConnectionLike for $enum {
            fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
                match self {
                    Self::Single(c) => c.req_packed_command(cmd),
                    Self::Cluster(c) => c.req_packed_command(cmd),
                }
            }

            fn req_packed_commands<'a>(
                &'a mut self,
                pipeline: &'a Pipeline,
                offset: usize,
                count: usize,
            ) -> RedisFuture<'a, Vec<Value>> {
                match self {
                    Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
                    Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
                }
            }

            fn get_db(&self) -> i64 {
                match self {
                    Self::Single(c) => c.get_db(),
                    Self::Cluster(c) => c.get_db(),
                }
            }
        }
    };
}

connection_like_by_variant!(Conn);

impl Conn {
    /// `WAIT replicas timeout` on the primary that holds `key`, after this connection's writes to it:
    /// how many replicas confirmed having them. `WAIT` counts the writes of the connection it is sent on,
    /// so it goes on the same multiplexed connection as the write; in a cluster it is routed to the
    /// primary of `key`'s slot (by default the client would send it to every primary and take the
    /// minimum, which the primaries that never saw the write answer with their replica count at once).
    pub async fn wait_for_replicas(
        &mut self,
        key: &str,
        replicas: u64,
        timeout: Duration,
    ) -> RedisResult<u64> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout.as_millis() as u64);
        let reply = match self {
            Self::Single(c) => cmd.query_async(c).await?,
            Self::Cluster(c) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                c.route_command(cmd, routing).await?
            }
        };
        Ok(redis::from_redis_value(reply)?)
    }
}

/// A cluster client with the same bounds as a single node's connections.
fn cluster_client(
    seeds: Vec<String>,
    connect: Duration,
    response: Duration,
) -> RedisResult<ClusterClient> {
    ClusterClientBuilder::new(seeds)
        .connection_timeout(connect)
        .response_timeout(response)
        // A moved slot (failover, resharding) is followed at once; more retries would only hold a
        // request past REDIS_TIMEOUT_MS, which answers 503 anyway.
        .retries(2)
        .min_retry_wait(50)
        .max_retry_wait(500)
        .build()
}

/// The shared multiplexed connection. It connects lazily, so a service starts while Redis is down; each
/// command then fails after `REDIS_TIMEOUT_MS` and the next one reconnects. Must be called inside a
/// Tokio runtime (the connection's I/O task is spawned on it).
pub fn shared_connection(settings: &Settings) -> RedisResult<Conn> {
    let timeout = Duration::from_millis(settings.redis_timeout_ms);
    if let Some(seeds) = settings.redis_cluster_seeds() {
        let client = cluster_client(seeds, timeout, timeout)?;
        let config = ClusterConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        return Ok(Conn::Cluster(
            client.get_pending_async_connection_with_config(config),
        ));
    }
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    Ok(Conn::Single(ConnectionManager::new_lazy_with_config(
        redis::Client::open(settings.redis_url.as_str())?,
        config,
    )?))
}

/// Creates and checks the dedicated cluster connections of a [`BlockingPool`].
pub struct ClusterManager {
    client: ClusterClient,
}

impl managed::Manager for ClusterManager {
    type Type = ClusterConnection;
    type Error = redis::RedisError;

    async fn create(&self) -> RedisResult<ClusterConnection> {
        self.client.get_async_connection().await
    }

    async fn recycle(
        &self,
        conn: &mut ClusterConnection,
        _: &managed::Metrics,
    ) -> managed::RecycleResult<redis::RedisError> {
        redis::cmd("PING").query_async::<()>(conn).await?;
        Ok(())
    }
}

/// Connections for blocking reads; see the module's introduction.
#[derive(Clone)]
pub enum BlockingPool {
    Single(deadpool_redis::Pool),
    Cluster(managed::Pool<ClusterManager>),
}

/// One connection of a [`BlockingPool`], back to the pool when dropped.
pub enum BlockingConn {
    Single(deadpool_redis::Connection),
    Cluster(managed::Object<ClusterManager>),
}

impl BlockingPool {
    /// A connection, waiting at most `REDIS_TIMEOUT_MS` for one to be free or made.
    pub async fn get(&self) -> anyhow::Result<BlockingConn> {
        Ok(match self {
            Self::Single(pool) => BlockingConn::Single(pool.get().await?),
            Self::Cluster(pool) => BlockingConn::Cluster(
                pool.get()
                    .await
                    .map_err(|e| anyhow::anyhow!("Redis Cluster connection: {e}"))?,
            ),
        })
    }
}

connection_like_by_variant!(BlockingConn);

/// A pool for blocking reads of up to `block`: the response timeout leaves room for the block itself.
pub fn blocking_pool(
    settings: &Settings,
    block: Duration,
    size: usize,
) -> anyhow::Result<BlockingPool> {
    let timeout = Duration::from_millis(settings.redis_timeout_ms);
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("REDIS_URL: {e}");
    if let Some(seeds) = settings.redis_cluster_seeds() {
        let client = cluster_client(seeds, timeout, block + timeout).map_err(|e| err(&e))?;
        return bounded(
            managed::Pool::builder(ClusterManager { client }),
            size,
            timeout,
        )
        .map(BlockingPool::Cluster)
        .map_err(|e| err(&e));
    }
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(block + timeout));
    let manager = deadpool_redis::Manager::new_with_config(settings.redis_url.as_str(), config)
        .map_err(|e| err(&e))?;
    bounded(deadpool_redis::Pool::builder(manager), size, timeout)
        .map(BlockingPool::Single)
        .map_err(|e| err(&e))
}

/// A pool of `size` whose every wait — for a free connection, a new one, a recycle check — ends after
/// `timeout`.
fn bounded<M: managed::Manager, W: From<managed::Object<M>>>(
    builder: managed::PoolBuilder<M, W>,
    size: usize,
    timeout: Duration,
) -> Result<managed::Pool<M, W>, managed::BuildError> {
    builder
        .max_size(size)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
}

/// Whether Redis answers a `PING` within `timeout`; the error says why not (for the log, not a client).
pub async fn ping(conn: &mut impl ConnectionLike, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(conn)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}
