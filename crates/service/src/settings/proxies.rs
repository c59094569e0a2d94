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

    fn trusts(&self, addr: &IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(addr))
    }

    /// The client's address, as the per-address caps and rates count it: the peer's; or, when the peer
    /// is a trusted proxy, the rightmost `X-Forwarded-For` address that is not itself a trusted proxy.
    /// Each proxy appends the address it was reached from, so everything left of the last hop the
    /// operator trusts is whatever the client chose to write there, and is never believed.
    /// An IPv6 address counts as its /64 (one host usually holds a whole /64), IPv4-mapped IPv6 as IPv4.
    /// `None` only when actix knows no peer (not over TCP).
    pub fn client_addr(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip();
        let headers = req.headers().get_all("x-forwarded-for");
        Some(counted(
            self.client_of(peer, headers.filter_map(|v| v.to_str().ok())),
        ))
    }

    /// [`Self::client_addr`] over the peer and the `X-Forwarded-For` header values, in order.
    fn client_of<'a>(&self, peer: IpAddr, forwarded: impl Iterator<Item = &'a str>) -> IpAddr {
        if !self.trusts(&peer) {
            return peer;
        }
        // Several header lines are one list, in order (RFC 9110 §5.3).
        let hops: Vec<&str> = forwarded.flat_map(|v| v.split(',')).collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            match parse_hop(hop) {
                Some(addr) if self.trusts(&addr) => client = addr,
                Some(addr) => return addr,
                // A hop that is no address was not written by a proxy we trust: stop at the last one that was.
                None => return client,
            }
        }
        client
    }
}

/// One `X-Forwarded-For` element: an address, maybe with a port (`203.0.113.7:4711`, `[2001:db8::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

/// The address caps and rates count: IPv6 by its /64, IPv4-mapped IPv6 as the IPv4 address.
pub fn counted(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
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
            .peer_addr(std::net::SocketAddr::new(peer.parse().unwrap(), 40000))
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

    /// Behind nginx's `$proxy_add_x_forwarded_for`, a client that writes its own header gets it kept on
    /// the left, and the proxy appends the real address on the right: the right one counts.
    #[test]
    fn the_rightmost_untrusted_forwarded_address_is_the_client_and_a_forged_left_part_is_ignored() {
        let proxies = "10.0.0.0/8";
        assert_eq!(
            client(proxies, "10.1.2.3", "1.1.1.1, 198.51.100.9").to_string(),
            "198.51.100.9"
        );
        assert_eq!(
            client(proxies, "10.1.2.3", "1.1.1.1, 198.51.100.9, 10.0.0.7").to_string(),
            "198.51.100.9",
            "a second trusted proxy in the chain is skipped"
        );
        assert_eq!(
            client(proxies, "10.1.2.3", "garbage, 198.51.100.9:4711").to_string(),
            "198.51.100.9",
            "a port is allowed"
        );
        assert_eq!(
            client(proxies, "10.1.2.3", "198.51.100.9, not-an-address").to_string(),
            "10.1.2.3",
            "a hop that is no address stops the walk at the last trusted one"
        );
        assert_eq!(
            client(proxies, "10.1.2.3", "10.0.0.9").to_string(),
            "10.0.0.9"
        );
        let req = TestRequest::default()
            .peer_addr("10.1.2.3:40000".parse().unwrap())
            .append_header(("x-forwarded-for", "203.0.113.1"))
            .append_header(("x-forwarded-for", "198.51.100.9"))
            .to_http_request();
        assert_eq!(
            proxies
                .parse::<TrustedProxies>()
                .unwrap()
                .client_addr(&req)
                .unwrap()
                .to_string(),
            "198.51.100.9",
            "two header lines are one list"
        );
    }

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            client("", "2001:db8:1:2:aaaa::1", "").to_string(),
            "2001:db8:1:2::"
        );
        assert_eq!(
            client("", "2001:db8:1:2:ffff:1:2:3", "").to_string(),
            "2001:db8:1:2::"
        );
        assert_eq!(client("", "::ffff:192.0.2.1", "").to_string(), "192.0.2.1");
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Whatever a client writes into the header, the answer is the peer, a trusted hop, or the
            /// address right of every untrusted one: never anything left of it.
            #[test]
            fn a_forged_prefix_never_changes_the_client(
                forged in proptest::collection::vec(any::<std::net::Ipv4Addr>(), 0..6),
                junk in "[ -~]{0,40}",
                real in any::<std::net::Ipv4Addr>().prop_filter("not a proxy", |a| a.octets()[0] != 10),
            ) {
                let proxies: TrustedProxies = "10.0.0.0/8".parse().unwrap();
                let mut list: Vec<String> = forged.iter().map(ToString::to_string).collect();
                list.push(junk.replace(',', " "));
                list.push(real.to_string());
                let header = list.join(", ");
                let got = proxies.client_of("10.9.9.9".parse().unwrap(), std::iter::once(header.as_str()));
                prop_assert_eq!(got, IpAddr::V4(real));
            }

            #[test]
            fn any_header_text_gives_an_address(text in "\\PC{0,200}") {
                let proxies: TrustedProxies = "10.0.0.0/8,::1".parse().unwrap();
                let _ = proxies.client_of("::1".parse().unwrap(), std::iter::once(text.as_str()));
            }
        }
    }
}
