//! Postgres URLs, handled with the `url` crate: which database one names, the same server with another
//! database, and the connection parameters Relay adds.

/// `url` with its path (the database name) replaced, query string kept. A URL that does not parse is
/// returned as it is: connecting with it then fails with Postgres' own message.
pub fn with_database(url: &str, database: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            u.set_path(&format!("/{database}"));
            u.to_string()
        }
        Err(_) => url.to_owned(),
    }
}

/// The database name in a Postgres URL (`relay` in `postgres://host/relay`), if it has one.
pub fn database_name(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    let name = u.path().trim_start_matches('/');
    (!name.is_empty()).then(|| name.to_owned())
}

/// `url` with libpq's `connect_timeout` (seconds) and TCP keepalives added unless it sets them: a
/// Postgres host that stops answering then fails a connection attempt in bounded time, and a dead
/// connection is noticed, instead of a request or the persister waiting on it indefinitely.
pub fn with_timeouts(url: &str, connect_timeout_secs: u64) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return url.to_owned();
    };
    let present: Vec<String> = u.query_pairs().map(|(k, _)| k.into_owned()).collect();
    let wanted = [
        ("connect_timeout", connect_timeout_secs.max(2).to_string()),
        ("keepalives_idle", "10".to_owned()),
        ("keepalives_interval", "5".to_owned()),
        ("keepalives_count", "3".to_owned()),
    ];
    {
        let mut query = u.query_pairs_mut();
        for (key, value) in &wanted {
            if !present.iter().any(|k| k == key) {
                query.append_pair(key, value);
            }
        }
    }
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_added_once_and_never_override_the_url() {
        assert_eq!(
            with_timeouts("postgres://h/db", 5),
            "postgres://h/db?connect_timeout=5&keepalives_idle=10&keepalives_interval=5&keepalives_count=3"
        );
        let own = with_timeouts("postgres://h/db?connect_timeout=9&sslmode=disable", 5);
        assert!(
            own.starts_with("postgres://h/db?connect_timeout=9&sslmode=disable&keepalives_idle=10"),
            "{own}"
        );
        assert_eq!(own.matches("connect_timeout").count(), 1);
    }

    #[test]
    fn database_urls_can_point_at_another_database() {
        assert_eq!(
            with_database("postgres://u@h:5432/relay", "t1"),
            "postgres://u@h:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u@h/relay?sslmode=disable", "t1"),
            "postgres://u@h/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "t1"), "postgres://u@h/t1");
        assert_eq!(
            database_name("postgres://u@h/relay?x=1").as_deref(),
            Some("relay")
        );
        assert_eq!(database_name("postgres://u@h"), None);
    }
}
