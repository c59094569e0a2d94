//! How each setting's text is read (the serde `deserialize_with` functions of [`super::Settings`]) and
//! how a value is shown in logs and errors (secrets masked).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serializer};

use super::defs::Secret;

/// A value fit for a log line.
pub fn mask(secret: Secret, value: &str) -> String {
    match secret {
        Secret::No => value.to_owned(),
        Secret::Whole if value.trim().is_empty() => String::new(),
        Secret::Whole if value.trim().starts_with('@') => value.trim().to_owned(), // a path, not a key
        Secret::Whole => "***".to_owned(),
        Secret::UrlPassword => mask_url_password(value),
    }
}

/// A URL fit for a log line: `user:secret@` becomes `user:***@`. Text that is not a URL but might hold
/// credentials keeps only what follows its last `@`.
pub fn mask_url_password(value: &str) -> String {
    match url::Url::parse(value) {
        Ok(mut url) => {
            if url.password().is_some() {
                // Setting a password fails only for URLs that cannot have one, and this one has one.
                let _ = url.set_password(Some("***"));
            }
            url.to_string()
        }
        Err(_) => match value.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => value.to_owned(),
        },
    }
}

pub(super) fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    String::deserialize(d).map(|s| s.trim().to_owned())
}

pub(super) fn parsed<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    text(d)?.parse().map_err(serde::de::Error::custom)
}

pub(super) fn positive<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + Default + PartialEq,
    T::Err: fmt::Display,
{
    let v: T = parsed(d)?;
    if v == T::default() {
        return Err(serde::de::Error::custom("must be greater than zero"));
    }
    Ok(v)
}

pub(super) fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = text(d)?;
    if v.is_empty() {
        return Err(serde::de::Error::custom("must not be empty"));
    }
    Ok(v)
}

pub(super) fn url_with_scheme<'de, D: Deserializer<'de>>(
    d: D,
    schemes: &[&str],
) -> Result<String, D::Error> {
    let v = non_empty(d)?;
    // The reason never repeats the value: it may hold a password.
    let url =
        url::Url::parse(&v).map_err(|e| serde::de::Error::custom(format!("not a URL ({e})")))?;
    if !schemes.contains(&url.scheme()) {
        return Err(serde::de::Error::custom(format!(
            "expected a URL starting with {}",
            schemes
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(" or ")
        )));
    }
    Ok(v)
}

/// How `REDIS_URL` names a Redis Cluster: `redis+cluster://[user:password@]host:port[,host:port…]`, a few
/// of its nodes (any will do: the client learns the rest and the slot map from them).
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// The seed nodes of a cluster URL as `redis://` URLs (the credentials apply to each), or why the URL is
/// malformed (without repeating it: it may hold a password); `None` when `url` is not a cluster URL.
pub fn cluster_seeds(url: &str) -> Option<Result<Vec<String>, String>> {
    let rest = url.trim().strip_prefix(CLUSTER_SCHEME)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    Some((|| {
        if rest.contains(['/', '?', '#']) {
            return Err(
                "a cluster URL names nodes only (a cluster has no database number)".to_owned(),
            );
        }
        let (userinfo, hosts) = match rest.rsplit_once('@') {
            Some((user, hosts)) => (format!("{user}@"), hosts),
            None => (String::new(), rest),
        };
        let seeds = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|host| {
                let seed = format!("redis://{userinfo}{host}");
                match url::Url::parse(&seed) {
                    Ok(u) if u.host().is_some() && u.port().is_some() => Ok(seed),
                    _ => Err(format!("`{host}` is not a host:port")),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if seeds.is_empty() {
            return Err("a cluster URL names at least one host:port".to_owned());
        }
        Ok(seeds)
    })())
}

pub(super) fn redis_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = non_empty(d)?;
    if let Some(seeds) = cluster_seeds(&v) {
        return seeds.map(|_| v).map_err(serde::de::Error::custom);
    }
    url_with_scheme(
        serde::de::value::StrDeserializer::<D::Error>::new(&v),
        &["redis", "rediss", "unix", "redis+unix", "redis+cluster"],
    )
}

pub(super) fn postgres_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    url_with_scheme(d, &["postgres", "postgresql"])
}

pub(super) fn debug<S: Serializer, T: fmt::Debug>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:?}"))
}
