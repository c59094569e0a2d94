//! The HTTP side every service shares: binding, the server's set-up, and the `/healthz`, `/readyz` and
//! `/metrics` routes.

use std::any::Any;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::KeepAlive;
use actix_web::{get, web, App, HttpRequest, HttpResponse};
use anyhow::Context;
use futures_util::future::BoxFuture;
use prometheus::Registry;

use crate::connection::{ConnectionCap, Guarded, Written, FULL_RESPONSE};

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
    let mut builder = actix_server::Server::build()
        .disable_signals()
        .shutdown_timeout(options.shutdown_grace.as_secs().max(1));
    let shutdown = builder.graceful_shutdown_signal();
    if let Some(threads) = options.blocking_threads {
        builder = builder.worker_max_blocking_threads(threads);
    }
    if let Some(workers) = options.workers {
        builder = builder.workers(workers);
    }
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

/// The `Host` names an open Relay answers to (see [`guard_host`]).
struct HostGuard(Option<crate::settings::AllowedHosts>);

/// Routes every `Host` may reach: probes and scrapers name the pod or container, not Relay.
const ANY_HOST_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// While Relay is open, a request whose `Host` is not `localhost`, a loopback address or in
/// `ALLOWED_HOSTS` gets 421: a web page cannot reach a local Relay by pointing a name it controls at
/// 127.0.0.1 (DNS rebinding), since the browser then sends that name. The raw `Host` header decides, never
/// `X-Forwarded-Host`, which a client writes. With credentials configured, every request must carry
/// one anyway, and this check is off.
async fn guard_host(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::EitherBody<impl MessageBody>>, actix_web::Error> {
    let refused = match req
        .app_data::<web::Data<HostGuard>>()
        .and_then(|g| g.0.as_ref())
    {
        // No Host at all is no browser (a rebinding page's request always names one); a Host that is not
        // text is no host this relay knows.
        Some(hosts) if !ANY_HOST_PATHS.contains(&req.path()) => {
            match req.headers().get(actix_web::http::header::HOST) {
                None => None,
                Some(h) => match h.to_str() {
                    Ok(host) if hosts.allows(host) => None,
                    Ok(host) => Some(format!("`{host}`")),
                    Err(_) => Some("a Host that is not visible ASCII".to_owned()),
                },
            }
        }
        _ => None,
    };
    match refused {
        Some(host) => {
            let detail = format!(
                "Relay runs without API_KEYS or TOKEN_SECRET and answers only to localhost, loopback \
                 addresses and ALLOWED_HOSTS, not to {host}"
            );
            let res = crate::Problem::new(
                actix_web::http::StatusCode::MISDIRECTED_REQUEST,
                "misdirected-request",
                "Host not allowed",
                detail,
            )
            .response();
            Ok(req.into_response(res).map_into_right_body())
        }
        None => Ok(next.call(req).await?.map_into_left_body()),
    }
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

/// Things that live exactly as long as one TCP connection: a handler hands something here (a WebSocket's
/// connection slot) and it is dropped when actix drops the socket, not when the handler or session ends.
/// That is what makes "the slot is free only when the socket is gone" true.
#[derive(Clone, Default)]
pub struct ConnectionHeld(Arc<Held>);

#[derive(Default)]
struct Held {
    things: Mutex<Vec<Box<dyn Any + Send>>>,
    /// Ends the connection through its own stream.
    closer: crate::connection::Closer,
    /// Bytes written to the socket so far.
    written: Written,
}

impl ConnectionHeld {
    fn new(io: &Guarded) -> Self {
        Self(Arc::new(Held {
            things: Mutex::default(),
            closer: io.closer(),
            written: io.written(),
        }))
    }

    /// What the connection has written so far (shared: it goes on counting after this call).
    pub fn written(&self) -> Written {
        self.0.written.clone()
    }

    /// The request's connection data, for a task that outlives the handler.
    pub fn of(req: &HttpRequest) -> Option<Self> {
        req.conn_data::<ConnectionHeld>().cloned()
    }

    /// Ends the connection now, whatever actix still wants to write to it: for a client that has stopped
    /// reading. The connection's next read or write fails, and actix drops it (and what is held here).
    pub fn shutdown(&self) {
        self.0.closer.close();
    }

    /// Keeps `thing` until the request's connection closes. Returns it back when the request has no
    /// connection data (not served by [`serve`]), so the caller can decide what to do with it.
    pub fn hold<T: Any + Send>(req: &HttpRequest, thing: T) -> Result<(), T> {
        match req.conn_data::<ConnectionHeld>() {
            Some(held) => {
                held.0
                    .things
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(Box::new(thing));
                Ok(())
            }
            None => Err(thing),
        }
    }
}

/// Request body bytes a process holds at once (`MAX_INFLIGHT_BYTES`): each request reserves what it has
/// read so far and gives it back when its [`Reservation`] drops, so a thousand slow bodies cannot add up to
/// more memory than the operator allowed.
#[derive(Debug)]
pub struct InflightBytes {
    used: AtomicUsize,
    limit: usize,
}

impl InflightBytes {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty reservation, grown as the body arrives.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            pool: Arc::clone(self),
            held: 0,
        }
    }
}

/// Bytes one request holds of an [`InflightBytes`]; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    pool: Arc<InflightBytes>,
    held: usize,
}

impl Reservation {
    /// Takes `n` more bytes, or `false` (and nothing) when that would go over the limit.
    pub fn grow(&mut self, n: usize) -> bool {
        let taken = self
            .pool
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n)
                    .filter(|&total| total <= self.pool.limit)
            });
        if taken.is_ok() {
            self.held += n;
        }
        taken.is_ok()
    }
}

impl Reservation {
    /// Grows the reservation to `total` bytes (nothing when it holds that much already), or `false`.
    pub fn grow_to(&mut self, total: usize) -> bool {
        total <= self.held || self.grow(total - self.held)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.pool.used.fetch_sub(self.held, Ordering::AcqRel);
    }
}

/// One readiness check: `Ok` when the dependency answers; the error is for the log only.
pub type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// What `/readyz` checks and `/metrics` renders, and the HTTP request metrics [`observe`] records.
pub struct Health {
    pub registry: Registry,
    checks: Vec<(&'static str, Check)>,
    requests: prometheus::IntCounterVec,
    request_seconds: prometheus::HistogramVec,
}

impl Health {
    pub fn new(registry: Registry) -> Self {
        Self {
            requests: crate::metrics::counter_vec(
                &registry,
                "relay_http_requests_total",
                "HTTP requests answered, by route pattern and status",
                &["route", "status"],
            ),
            request_seconds: crate::metrics::histogram_vec(
                &registry,
                "relay_http_request_duration_seconds",
                "Time to answer an HTTP request (to its response head), by route pattern",
                &["route"],
                crate::metrics::LATENCY_BUCKETS,
            ),
            registry,
            checks: Vec::new(),
        }
    }

    /// Adds a dependency `name` that must answer for the service to be ready.
    pub fn check(mut self, name: &'static str, check: Check) -> Self {
        self.checks.push((name, check));
        self
    }

    /// Adds Redis: ready when it answers `PING` within `timeout`.
    pub fn redis(self, conn: crate::redis::Conn, timeout: Duration) -> Self {
        self.check(
            "redis",
            Arc::new(move || {
                let mut conn = conn.clone();
                Box::pin(async move { crate::redis::ping(&mut conn, timeout).await })
            }),
        )
    }
}

/// `/healthz` (the process is alive), `/readyz` (every check passes) and `/metrics`.
pub fn health_routes(cfg: &mut web::ServiceConfig, health: web::Data<Health>) {
    cfg.app_data(health)
        .service(healthz)
        .service(readyz)
        .service(metrics);
}

/// [`health_routes`] for an app whose OpenAPI document is collected from its services.
pub fn documented_health_routes(
    cfg: &mut utoipa_actix_web::service_config::ServiceConfig,
    health: web::Data<Health>,
) {
    cfg.app_data(health)
        .service(healthz)
        .service(readyz)
        .service(metrics);
}

/// The process is alive.
#[utoipa::path(tag = "operations", responses((status = 200, description = "Alive", body = String, content_type = "text/plain", example = "ok\n")))]
#[get("/healthz")]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// 200 when every dependency answers, else 503. The body names each dependency and says `ok` or
/// `unavailable`: its error text goes to the log, never to whoever asks.
#[utoipa::path(tag = "operations", responses(
    (status = 200, description = "Every dependency answers", body = Object, example = json!({"redis": "ok", "status": "ready"})),
    (status = 503, description = "A dependency does not answer", body = Object, example = json!({"redis": "unavailable", "status": "not ready"}))
))]
#[get("/readyz")]
async fn readyz(health: web::Data<Health>) -> HttpResponse {
    let results =
        futures_util::future::join_all(health.checks.iter().map(|(_, check)| check())).await;
    let mut body = serde_json::Map::new();
    let mut ready = true;
    for ((name, _), result) in health.checks.iter().zip(results) {
        let state = match result {
            Ok(()) => "ok",
            Err(reason) => {
                ready = false;
                log::debug!("not ready: {name}: {reason}");
                "unavailable"
            }
        };
        body.insert((*name).to_owned(), state.into());
    }
    body.insert(
        "status".into(),
        if ready { "ready" } else { "not ready" }.into(),
    );
    let mut res = if ready {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    res.json(body)
}

/// The service's metrics in the Prometheus text format.
#[utoipa::path(tag = "operations", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain; version=0.0.4")))]
#[get("/metrics")]
async fn metrics(health: web::Data<Health>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::render(&health.registry))
}

/// The key of an `Authorization: Bearer <key>` header. The scheme is matched case-insensitively
/// (RFC 9110 §11.1).
pub fn bearer(headers: &actix_web::http::header::HeaderMap) -> Option<&str> {
    let value = headers
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim())
        .filter(|k| !k.is_empty())
}

/// The request id of a request: the client's `X-Request-Id` when it is 1–128 characters of a safe
/// alphabet (letters, digits and `-_.:/+=@`: any UUID, ULID, base64 or trace id), else one generated
/// here. The id goes into every log line about the request, so a space, quote or control character
/// from a client could forge fields or whole lines there. [`observe`] puts it in the request's extensions and echoes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The `sub` of the token a request was authorized with, put in the request's extensions by the
/// handler that checked it, for the access log.
#[derive(Debug, Clone)]
pub struct Subject(pub String);

impl Subject {
    /// Records `sub` on `req`, for the access log line of [`observe`].
    pub fn record(req: &HttpRequest, sub: Option<&str>) {
        use actix_web::HttpMessage;
        if let Some(sub) = sub {
            req.extensions_mut().insert(Self(sub.to_owned()));
        }
    }
}

fn safe_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b)
}

impl RequestId {
    fn from_header(value: Option<&actix_web::http::header::HeaderValue>) -> Self {
        match value.map(|v| v.as_bytes()) {
            Some(v) if !v.is_empty() && v.len() <= 128 && v.iter().all(|&b| safe_id_byte(b)) => {
                // All bytes are ASCII, so this is valid UTF-8.
                Self(String::from_utf8_lossy(v).into_owned())
            }
            _ => Self(uuid::Uuid::now_v7().simple().to_string()),
        }
    }

    /// The id of `req` (set by [`observe`]; generated when the middleware did not run).
    pub fn of(req: &actix_web::HttpRequest) -> Self {
        use actix_web::HttpMessage;
        req.extensions()
            .get::<Self>()
            .cloned()
            .unwrap_or_else(|| Self::from_header(req.headers().get(REQUEST_ID_HEADER)))
    }
}

/// Middleware for every route of a service: takes or makes the request id, echoes it in `X-Request-Id`,
/// counts the request in `relay_http_requests_total{route,status}` and its time in
/// `relay_http_request_duration_seconds{route}`, and writes one access-log line (target `access`: filter
/// it with `RUST_LOG=info,access=warn`). The route label is the matched pattern (`/messages/{id}`), never
/// the raw path, so a client cannot grow the label set.
pub async fn observe(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    use actix_web::HttpMessage;
    let started = std::time::Instant::now();
    let id = RequestId::from_header(req.headers().get(REQUEST_ID_HEADER));
    req.extensions_mut().insert(id.clone());
    let method = req.method().clone();
    let health = req.app_data::<web::Data<Health>>().cloned();
    let mut res = next.call(req).await?;
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let status = res.status();
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&id.0) {
        res.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static(REQUEST_ID_HEADER),
            value,
        );
    }
    let elapsed = started.elapsed();
    if let Some(health) = health {
        health
            .requests
            .with_label_values(&[route.as_str(), status.as_str()])
            .inc();
        health
            .request_seconds
            .with_label_values(&[route.as_str()])
            .observe(elapsed.as_secs_f64());
    }
    let sub = res.request().extensions().get::<Subject>().cloned();
    match sub {
        // A token's `sub` is the client's own text: written as a debug string, quoted and escaped, so
        // it cannot forge fields.
        Some(Subject(sub)) => log::info!(
            target: "access",
            "{method} {route} {} {:.3}ms request_id={} sub={sub:?}",
            status.as_u16(),
            elapsed.as_secs_f64() * 1e3,
            id.0
        ),
        None => log::info!(
            target: "access",
            "{method} {route} {} {:.3}ms request_id={}",
            status.as_u16(),
            elapsed.as_secs_f64() * 1e3,
            id.0
        ),
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_that_could_forge_a_log_line_is_replaced_by_a_generated_one() {
        use actix_web::http::header::HeaderValue;
        let id = |v: &str| RequestId::from_header(Some(&HeaderValue::from_str(v).unwrap())).0;
        for kept in [
            "abc-123",
            "01936f4e-8a9b-7c3d-9e2f-0a1b2c3d4e5f",
            "trace:a/b+c=@d_e.f",
        ] {
            assert_eq!(id(kept), kept);
        }
        for forged in ["x status=500 request_id=y", "x\"", "a\\b", &"x".repeat(129)] {
            let got = id(forged);
            assert_ne!(got, forged);
            assert_eq!(got.len(), 32, "a generated id: {got}");
        }
    }

    #[test]
    fn reservations_stop_at_the_limit_and_give_back_on_drop() {
        let pool = InflightBytes::new(100);
        let mut a = pool.reservation();
        assert!(a.grow(60));
        let mut b = pool.reservation();
        assert!(!b.grow(41), "60 + 41 is over 100");
        assert!(b.grow(40));
        assert_eq!(pool.used(), 100);
        drop(a);
        assert_eq!(pool.used(), 40);
        drop(b);
        assert_eq!(pool.used(), 0);
    }
}
