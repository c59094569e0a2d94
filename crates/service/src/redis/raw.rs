//! Connections that hand back a reply's bytes, for a caller that reads them itself (the persister's
//! reads of new entries, with `model::resp`): redis-rs' parser builds a `Value` per field and took most
//! of the persister's CPU in a drain.
//!
//! Only for one plain node over TCP or a Unix socket: [`raw_pool`] says `None` for a Redis Cluster or
//! TLS (`rediss://`), where the caller keeps using redis-rs. A connection speaks RESP2, authenticates
//! and selects the database as `REDIS_URL` says, names itself (`CLIENT SETNAME`), and is dropped after any failure or timeout: a reply
//! half read would otherwise be taken for the next one.

use std::time::Duration;

use deadpool::managed;
use model::resp::{ReplyScan, Scan};
use redis::{Cmd, ConnectionAddr, IntoConnectionInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::Settings;

/// A buffer larger than this after a reply is replaced, so one large reply does not pin its memory.
const KEEP_BUFFER: usize = 1024 * 1024;
/// The least a read asks the socket for.
const READ_CHUNK: usize = 64 * 1024;

enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// One connection to one Redis node; see the module's introduction.
pub struct RawConn {
    socket: Socket,
    buf: Vec<u8>,
    /// A request failed or was abandoned mid-way: the pool discards this connection.
    broken: bool,
}

/// Why a request got no reply. Redis' own error replies are replies: the caller reads them.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    #[error("Redis: {0}")]
    Io(#[from] std::io::Error),
    #[error("Redis sent no complete reply within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Reply(#[from] model::resp::ReplyError),
    #[error("Redis refused {0}: {1}")]
    Refused(&'static str, String),
}

impl RawError {
    /// The code of Redis' error reply (`NOGROUP`), when Redis answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Reply(e) => e.code(),
            _ => None,
        }
    }
}

/// The code of the Redis error reply somewhere in `e`'s chain (`NOGROUP`, `BUSYGROUP`), whichever
/// client it came through: errors are matched by their code, never by their text.
pub fn error_code(e: &anyhow::Error) -> Option<&str> {
    e.chain().find_map(|cause| {
        cause
            .downcast_ref::<RawError>()
            .and_then(RawError::code)
            .or_else(|| cause.downcast_ref::<redis::RedisError>()?.code())
    })
}

impl RawConn {
    async fn connect(
        addr: &ConnectionAddr,
        redis: &redis::RedisConnectionInfo,
        name: &str,
        timeout: Duration,
    ) -> Result<Self, RawError> {
        let socket = tokio::time::timeout(timeout, async {
            Ok::<_, std::io::Error>(match addr {
                ConnectionAddr::Tcp(host, port) => {
                    let tcp = TcpStream::connect((host.as_str(), *port)).await?;
                    tcp.set_nodelay(true)?;
                    Socket::Tcp(tcp)
                }
                ConnectionAddr::Unix(path) => Socket::Unix(UnixStream::connect(path).await?),
                _ => unreachable!("raw_pool takes no TLS address"),
            })
        })
        .await
        .map_err(|_| RawError::Timeout(timeout))??;
        let mut conn = Self {
            socket,
            buf: Vec::new(),
            broken: false,
        };
        if let Some(password) = redis.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = redis.username() {
                auth.arg(user);
            }
            conn.expect_ok("AUTH", auth.arg(password), timeout).await?;
        }
        if redis.db() != 0 {
            conn.expect_ok("SELECT", redis::cmd("SELECT").arg(redis.db()), timeout)
                .await?;
        }
        // A name only helps an operator reading CLIENT LIST: a user whose ACL refuses it still reads.
        let mut setname = redis::cmd("CLIENT");
        match conn
            .expect_ok("CLIENT SETNAME", setname.arg("SETNAME").arg(name), timeout)
            .await
        {
            Err(RawError::Refused(_, why)) => {
                log::warn!("Redis refused to name the connection {name}: {why}")
            }
            other => other?,
        }
        Ok(conn)
    }

    async fn expect_ok(
        &mut self,
        what: &'static str,
        cmd: &Cmd,
        timeout: Duration,
    ) -> Result<(), RawError> {
        match self.request(cmd, timeout).await? {
            b"+OK\r\n" => Ok(()),
            other => Err(RawError::Refused(
                what,
                String::from_utf8_lossy(other).trim_end().to_owned(),
            )),
        }
    }

    /// Sends `cmd` and returns its whole reply's bytes (an error reply included), waiting at most
    /// `timeout` for all of them.
    pub async fn request(&mut self, cmd: &Cmd, timeout: Duration) -> Result<&[u8], RawError> {
        if self.buf.capacity() > KEEP_BUFFER {
            self.buf = Vec::new();
        }
        self.buf.clear();
        cmd.write_packed_command(&mut self.buf);
        // Until the reply is complete, the connection cannot serve another request.
        self.broken = true;
        let len = tokio::time::timeout(timeout, self.exchange())
            .await
            .map_err(|_| RawError::Timeout(timeout))??;
        self.broken = false;
        Ok(&self.buf[..len])
    }

    /// Writes the command in the buffer, then reads into the buffer until one reply is complete.
    async fn exchange(&mut self) -> Result<usize, RawError> {
        match &mut self.socket {
            Socket::Tcp(s) => s.write_all(&self.buf).await?,
            Socket::Unix(s) => s.write_all(&self.buf).await?,
        }
        self.buf.clear();
        let mut need = 1;
        let mut scan = ReplyScan::default();
        loop {
            self.buf
                .reserve((need - self.buf.len().min(need)).max(READ_CHUNK));
            let read = match &mut self.socket {
                Socket::Tcp(s) => s.read_buf(&mut self.buf).await?,
                Socket::Unix(s) => s.read_buf(&mut self.buf).await?,
            };
            if read == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            if self.buf.len() < need {
                continue;
            }
            match scan.scan(&self.buf)? {
                // One request, one reply: bytes after it would be taken for the next reply.
                Scan::Complete(len) if len < self.buf.len() => {
                    return Err(model::resp::ReplyError::Protocol("bytes after the reply").into())
                }
                Scan::Complete(len) => return Ok(len),
                Scan::Needs(n) => need = n,
            }
        }
    }
}

/// Creates raw connections for a [`RawPool`] and drops the broken ones.
pub struct RawManager {
    addr: ConnectionAddr,
    redis: redis::RedisConnectionInfo,
    name: &'static str,
    timeout: Duration,
}

impl managed::Manager for RawManager {
    type Type = RawConn;
    type Error = RawError;

    async fn create(&self) -> Result<RawConn, RawError> {
        RawConn::connect(&self.addr, &self.redis, self.name, self.timeout).await
    }

    async fn recycle(
        &self,
        conn: &mut RawConn,
        _: &managed::Metrics,
    ) -> managed::RecycleResult<RawError> {
        if conn.broken {
            return Err(managed::RecycleError::message("a request on it failed"));
        }
        Ok(())
    }
}

pub type RawPool = managed::Pool<RawManager>;
/// A [`RawConn`] taken from a [`RawPool`], back to it when dropped.
pub type PooledRawConn = managed::Object<RawManager>;

/// A pool of `size` raw connections to `REDIS_URL`'s node, named `name` in Redis' `CLIENT LIST`, or
/// `None` when `REDIS_URL` names a cluster or TLS. Waiting for a connection, making one, and each step of
/// its handshake end after `REDIS_TIMEOUT_MS`.
pub fn raw_pool(
    settings: &Settings,
    name: &'static str,
    size: usize,
) -> anyhow::Result<Option<RawPool>> {
    if settings.redis_cluster_seeds().is_some() {
        return Ok(None);
    }
    let info = settings
        .redis_url
        .as_str()
        .into_connection_info()
        .map_err(|e| anyhow::anyhow!("REDIS_URL: {e}"))?;
    if !matches!(
        info.addr(),
        ConnectionAddr::Tcp(..) | ConnectionAddr::Unix(_)
    ) {
        return Ok(None);
    }
    let timeout = Duration::from_millis(settings.redis_timeout_ms);
    let manager = RawManager {
        addr: info.addr().clone(),
        redis: info.redis_settings().clone(),
        name,
        timeout,
    };
    Ok(Some(super::bounded(
        managed::Pool::builder(manager),
        size,
        timeout,
    )?))
}

/// Connections for blocking stream reads: raw ones where `REDIS_URL` allows them, for the hot read whose
/// reply the caller reads with `model::resp`, and redis-rs' pooled ones for every other read (and for the
/// hot one on a cluster or over TLS).
#[derive(Clone)]
pub struct StreamReads {
    pub blocking: super::BlockingPool,
    pub raw: Option<RawPool>,
    /// How long a blocking read of `block` may take in all: the block and `REDIS_TIMEOUT_MS`.
    pub timeout: Duration,
}

impl StreamReads {
    /// `size` connections of each kind for reads blocking up to `block`; the raw ones named `name`.
    pub fn new(
        settings: &Settings,
        block: Duration,
        size: usize,
        name: &'static str,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            blocking: super::blocking_pool(settings, block, size)?,
            raw: raw_pool(settings, name, size)?,
            timeout: block + Duration::from_millis(settings.redis_timeout_ms),
        })
    }
}
