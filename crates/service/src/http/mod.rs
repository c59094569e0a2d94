//! The HTTP side every service shares: binding and the server's set-up (here), the `Host` check
//! (`hosts`), what lives as long as a connection (`held`), the `/healthz`, `/readyz` and `/metrics`
//! routes (`health`), and the request id, access log and request metrics (`observe`).

mod health;
mod held;
mod hosts;
mod observe;

pub use health::{documented_health_routes, health_routes, Check, Health};
pub use held::ConnectionHeld;
pub use observe::{bearer, observe, RequestId, Subject, REQUEST_ID_HEADER};

use hosts::{guard_host, HostGuard};

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::KeepAlive;
use actix_web::{web, App};
use anyhow::Context;

use crate::connection::{ConnectionCap, Guarded, FULL_RESPONSE};

/// Binds `addr` (port 0 in tests), naming the setting when that fails.
pub fn bind(addr: SocketAddr, setting: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).with_context(|| format!("binding {setting}={addr}"))
}

/// How a service's HTTP server runs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Worker threads; `None`: one per core.
    pub workers: Option<usize>,
    /// How long in-flight requests get to finish after the stop signal.
    pub shutdown_grace: Duration,
    /// `CLIENT_TIMEOUT_MS`: how long a client may take to send its request head, how long an idle
    /// keep-alive connection is kept, and how long a closing connection may take to flush.
    pub client_timeout: Duration,
    /// `MAX_HTTP_CONNECTIONS`: connections held at once (0 in the setting: sized to the open-files limit).
    pub max_connections: usize,
    /// While Relay is open (no credentials), the `Host` names requests may use (`ALLOWED_HOSTS` and
    /// loopback); `None` when credentials are configured.
    pub hosts: Option<crate::settings::AllowedHosts>,
    /// Blocking threads per worker (`web::block`); `None`: actix's default (hundreds). Every thread
    /// that runs libpq gets a C malloc arena of its own: a full read spread over many threads grew
    /// ingest-api by 34-42 MiB, over two threads per worker by 14-20 MiB.
    pub blocking_threads: Option<usize>,
}

impl ServerOptions {
    pub fn new(settings: &crate::Settings, shutdown_grace: Duration) -> Self {
        Self {
            hosts: settings.is_open().then(|| settings.allowed_hosts.clone()),
            workers: None,
            shutdown_grace,
            client_timeout: Duration::from_millis(settings.client_timeout_ms),
            max_connections: match settings.max_http_connections {
                0 => crate::connection::default_cap(1),
                n => n,
            },
            blocking_threads: None,
        }
    }

    /// `threads` blocking threads per worker (at least one).
    pub fn with_blocking_threads(mut self, threads: usize) -> Self {
        self.blocking_threads = Some(threads.max(1));
        self
    }
}

/// Idle keep-alive connections are cheap but not free (a socket and a buffer each); a few seconds covers a
/// client's next request without letting idle sockets pile up.
const KEEP_ALIVE_MAX: Duration = Duration::from_secs(5);

/// How long a connection that is being closed (after an early answer such as a 408 or 413 whose body was
/// not read) lingers so the client can read that answer before the socket goes, and how long its final
/// flush may take. Short, and at most a quarter of `CLIENT_TIMEOUT_MS`, so "no progress for
/// `CLIENT_TIMEOUT_MS`" means closed within 1.25 × it.
const LINGER_MAX: Duration = Duration::from_secs(1);

impl ServerOptions {
    fn linger(&self) -> Duration {
        (self.client_timeout / 4).min(LINGER_MAX)
    }
}

/// Starts an actix-web server on `listener` with the settings every Relay service shares: every route
/// [`observe`]d (request id, HTTP metrics, access log), signals are the caller's (the server stops when
/// told), and `TCP_NODELAY` is set on every connection: responses and
/// frames are small, and Nagle's algorithm would hold each one until the client's delayed ACK (up to
/// 40 ms) whenever an earlier one is still unacknowledged.
///
/// Every stage of a connection has a deadline, so a client that stalls cannot hold a socket forever: the
/// first request head must arrive within `client_timeout` (else 408 and close), every later head and body
/// and every response write are timed by [`crate::connection::Guarded`], an idle keep-alive connection is
/// closed after `min(client_timeout, 5 s)`, and a connection being closed lingers at most
/// `min(client_timeout / 4, 1 s)`. At most `max_connections` are held at once; one more is answered 503
/// and closed, so a flood of sockets meets a bound before the open-files limit does.
///
/// This is actix-web's `HttpServer::listen` written out, because the stream actix-http serves must be
/// the guarded one and `HttpServer` only serves a bare `TcpStream`.
/// Every connection carries a [`ConnectionHeld`] in its connection data, dropped with the socket.
pub fn serve<F, T, B>(
    listener: TcpListener,
    options: ServerOptions,
    factory: F,
) -> std::io::Result<Server>
where
    F: Fn() -> App<T> + Send + Clone + 'static,
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    use actix_service::{map_config, IntoServiceFactory as _, ServiceFactoryExt as _};
    use actix_web::dev::AppConfig;

    let addr = listener.local_addr()?;
    let cap = ConnectionCap::new(options.max_connections);
    let builder = server_builder(&options);
    let shutdown = builder.graceful_shutdown_signal();
    let server = builder.listen(format!("relay-{addr}"), listener, move || {
        let shutdown = shutdown.clone();
        let cap = cap.clone();
        let options = options.clone();
        let timeout = options.client_timeout;
        let hosts = web::Data::new(HostGuard(options.hosts.clone()));
        let app = factory()
            .app_data(hosts)
            .wrap(actix_web::middleware::from_fn(guard_host))
            .wrap(actix_web::middleware::from_fn(observe))
            .into_factory()
            .map_err(|err| err.error_response());
        let http = actix_http::HttpService::build()
            .graceful_shutdown_signal(move || {
                let shutdown = shutdown.clone();
                async move { shutdown.notified().await }
            })
            .client_request_timeout(options.client_timeout)
            .client_disconnect_timeout(options.linger())
            .keep_alive(KeepAlive::Timeout(
                options.client_timeout.min(KEEP_ALIVE_MAX),
            ))
            .local_addr(addr)
            .on_connect_ext(move |io: &Guarded, ext: &mut actix_web::dev::Extensions| {
                let tcp = io.tcp();
                let _ = tcp.set_nodelay(true);
                ext.insert(ConnectionHeld::new(io));
            })
            .finish(map_config(app, move |()| AppConfig::default()));
        actix_web::dev::fn_service(move |io: actix_web::rt::net::TcpStream| {
            let slot = cap.take();
            async move {
                let Some(slot) = slot else {
                    refuse_over_cap(io, timeout).await;
                    return Err(actix_http::error::DispatchError::Io(std::io::Error::other(
                        "over MAX_HTTP_CONNECTIONS",
                    )));
                };
                let peer = io.peer_addr().ok();
                Ok((
                    Guarded::new(io, timeout, slot),
                    actix_http::Protocol::Http1,
                    peer,
                ))
            }
        })
        .and_then(http)
    })?;
    Ok(server.run())
}

/// The server as `options` configure it: no signal handling (each binary has its own), the shutdown
/// grace, and the worker and blocking-thread counts when set.
fn server_builder(options: &ServerOptions) -> actix_server::ServerBuilder {
    let mut builder = actix_server::Server::build()
        .disable_signals()
        .shutdown_timeout(options.shutdown_grace.as_secs().max(1));
    if let Some(threads) = options.blocking_threads {
        builder = builder.worker_max_blocking_threads(threads);
    }
    if let Some(workers) = options.workers {
        builder = builder.workers(workers);
    }
    builder
}

/// Tells a connection over `MAX_HTTP_CONNECTIONS` so (a 503 problem), briefly: the answer fits any
/// socket buffer, and the write gets a tenth of `CLIENT_TIMEOUT_MS` at most, so refusing a flood of
/// sockets holds none of them.
async fn refuse_over_cap(mut io: actix_web::rt::net::TcpStream, timeout: Duration) {
    use tokio::io::AsyncWriteExt as _;
    let _ = tokio::time::timeout(timeout / 10, async {
        io.write_all(FULL_RESPONSE).await?;
        io.shutdown().await
    })
    .await;
    log::debug!("refused a connection over MAX_HTTP_CONNECTIONS");
}
