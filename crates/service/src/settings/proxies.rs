//! `TRUSTED_PROXIES`: the peers whose `X-Forwarded-For` is believed. Anyone can send that header, so it
//! names the client only when the connection comes from a proxy the operator put in front of Relay.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use actix_web::HttpRequest;

/// The proxy addresses (exact addresses, no ranges: a list an operator can read at a glance).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpAddr>);

impl TrustedProxies {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The client's address: the peer's, or the first `X-Forwarded-For` address when the peer is a
    /// trusted proxy and that address parses. `None` only when actix knows no peer (not over TCP).
    pub fn client_addr(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip();
        if !self.0.contains(&peer) {
            return Some(peer);
        }
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|first| first.trim().parse::<IpAddr>().ok());
        Some(forwarded.unwrap_or(peer))
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.parse::<IpAddr>()
                    .map_err(|_| format!("`{a}` is not an IP address"))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl fmt::Debug for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&list.join(","))
    }
}
