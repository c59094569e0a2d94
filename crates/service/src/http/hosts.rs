//! While Relay is open (no credentials), requests must name a host it knows: a DNS-rebinding page
//! names its own.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::web;

/// The `Host` names an open Relay answers to (see [`guard_host`]).
pub(super) struct HostGuard(pub(super) Option<crate::settings::AllowedHosts>);

/// Routes every `Host` may reach: probes and scrapers name the pod or container, not Relay.
const ANY_HOST_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// While Relay is open, a request whose `Host` is not `localhost`, a loopback address or in
/// `ALLOWED_HOSTS` gets 421: a web page cannot reach a local Relay by pointing a name it controls at
/// 127.0.0.1 (DNS rebinding), since the browser then sends that name. The raw `Host` header decides, never
/// `X-Forwarded-Host`, which a client writes. With credentials configured, every request must carry
/// one anyway, and this check is off.
pub(super) async fn guard_host(
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
