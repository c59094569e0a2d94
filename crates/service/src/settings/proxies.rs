//! `TRUSTED_PROXIES`: the peers whose `X-Forwarded-For` is believed. Anyone can send that header, so it
//! names the client only when the connection comes from a proxy the operator put in front of Relay.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use actix_web::HttpRequest;
use ipnet::IpNet;

/// The proxies: exact addresses (`10.0.0.5`) or networks (`10.0.0.0/8`) — a network for platforms that
/// give the proxy a new address on every start (a Kubernetes ingress controller's pods, a compose
/// network).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The client's address: the peer's, or the first `X-Forwarded-For` address when the peer is a
    /// trusted proxy and that address parses. `None` only when actix knows no peer (not over TCP).
    pub fn client_addr(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip();
        if !self.0.iter().any(|net| net.contains(&peer)) {
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
            .map(|a| match a.parse::<IpAddr>() {
                Ok(addr) => Ok(IpNet::from(addr)),
                Err(_) => a
                    .parse::<IpNet>()
                    .map_err(|_| format!("`{a}` is not an IP address or network (10.0.0.0/8)")),
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

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn client(proxies: &str, peer: &str, forwarded: &str) -> IpAddr {
        let proxies: TrustedProxies = proxies.parse().unwrap();
        let req = TestRequest::default()
            .peer_addr(format!("{peer}:40000").parse().unwrap())
            .insert_header(("x-forwarded-for", forwarded))
            .to_http_request();
        proxies.client_addr(&req).unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_listed_address_or_network() {
        let spoofed = "203.0.113.7";
        assert_eq!(client("", "10.1.2.3", spoofed).to_string(), "10.1.2.3");
        assert_eq!(client("10.1.2.3", "10.1.2.3", spoofed).to_string(), spoofed);
        assert_eq!(
            client("10.0.0.0/8", "10.1.2.3", spoofed).to_string(),
            spoofed
        );
        assert_eq!(
            client("10.0.0.0/8", "192.168.1.1", spoofed).to_string(),
            "192.168.1.1"
        );
        assert_eq!(
            client("10.0.0.0/8", "10.1.2.3", "198.51.100.1, 10.9.9.9").to_string(),
            "198.51.100.1"
        );
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("proxy.local".parse::<TrustedProxies>().is_err());
    }
}
