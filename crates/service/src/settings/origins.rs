//! Where requests may come from: `ALLOWED_ORIGINS` (browser origins) and `ALLOWED_HOSTS` (`Host` names).

use std::str::FromStr;

/// `ALLOWED_ORIGINS`: empty for loopback origins only (a page served from this machine), `*` for any, or
/// a comma-separated list of origins such as `https://relay.example.com`. Loopback by default: with
/// `*`, any web site a local user visits could read from and post to a local Relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    Loopback,
    Any,
    List(Vec<String>),
}

impl AllowedOrigins {
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            Self::Loopback => is_loopback_origin(origin),
            Self::Any => true,
            Self::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }
}

/// `http://localhost`, `http://127.0.0.1`, `http://[::1]` (any port, `https` too).
pub fn is_loopback_origin(origin: &str) -> bool {
    url::Url::parse(origin).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host_str().is_some_and(is_loopback_host)
            && u.path() == "/"
            && u.query().is_none()
    })
}

/// `localhost`, a name under `.localhost`, or a loopback address (`127.0.0.0/8`, `[::1]`).
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.to_ascii_lowercase().ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl FromStr for AllowedOrigins {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let items: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect();
        if items.is_empty() {
            return Ok(Self::Loopback);
        }
        if items.iter().any(|o| o == "*") {
            return Ok(Self::Any);
        }
        for o in &items {
            let is_origin = url::Url::parse(o).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.origin().ascii_serialization() == o.to_ascii_lowercase()
            });
            if !is_origin {
                return Err(format!("`{o}` is not an origin like https://example.com"));
            }
        }
        Ok(Self::List(items))
    }
}

/// `ALLOWED_HOSTS`: the host names a request may name in `Host` while Relay is open, besides
/// `localhost` and loopback addresses (see `service::http::serve`'s host guard).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(Vec<String>);

impl AllowedHosts {
    /// Whether `host` (a `Host` header's value, port included or not) is loopback or listed.
    pub fn allows(&self, host: &str) -> bool {
        let name = match host.rsplit_once(':') {
            // `[::1]:8080`, `localhost:8080`; a bare IPv6 address has no brackets and no port here.
            Some((name, port))
                if port.chars().all(|c| c.is_ascii_digit()) && !name.ends_with(':') =>
            {
                name
            }
            _ => host,
        };
        is_loopback_host(name) || self.0.iter().any(|h| h.eq_ignore_ascii_case(name))
    }
}

impl FromStr for AllowedHosts {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hosts: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        if let Some(bad) = hosts.iter().find(|h| {
            !h.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '[' | ']' | ':'))
        }) {
            return Err(format!("`{bad}` is not a host name"));
        }
        Ok(Self(hosts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn hosts_are_loopback_or_listed_with_or_without_a_port() {
        let hosts: AllowedHosts = "relay.example".parse().unwrap();
        for ok in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8081",
            "relay.example",
            "RELAY.example:443",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for refused in [
            "rebind.example",
            "rebind.example:8080",
            "127.0.0.1.rebind.example",
            "relay.example.evil",
        ] {
            assert!(!hosts.allows(refused), "{refused}");
        }
        assert!("a b".parse::<AllowedHosts>().is_err());
    }

    #[test]
    fn the_default_allows_loopback_origins_only() {
        let default: AllowedOrigins = "".parse().unwrap();
        assert_eq!(default, AllowedOrigins::Loopback);
        for ok in [
            "http://localhost:8081",
            "http://127.0.0.1:3000",
            "http://[::1]:8081",
            "http://localhost",
            "https://app.localhost:1",
        ] {
            assert!(default.allows(ok), "{ok}");
        }
        for refused in [
            "http://evil.example",
            "http://localhost.evil.example",
            "http://127.0.0.1.nip.io",
            "null",
            "http://10.0.0.1",
        ] {
            assert!(!default.allows(refused), "{refused}");
        }
    }

    #[test]
    fn origins_are_checked_as_urls() {
        assert_eq!("*".parse::<AllowedOrigins>(), Ok(AllowedOrigins::Any));
        assert!("https://a.example, http://localhost:8081"
            .parse::<AllowedOrigins>()
            .is_ok());
        for bad in [
            "example.com",
            "https://a.example/",
            "ftp://a.example",
            "https://a.example/x",
        ] {
            assert!(bad.parse::<AllowedOrigins>().is_err(), "{bad}");
        }
    }
}
