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

/// `url` with a `statement_timeout` and a `lock_timeout` for every statement of the session, as libpq's
/// `options` parameter (`-c name=value`, appended to any `options` the URL has). Without them, a statement
/// waiting on a lock (DDL, `VACUUM FULL`) waits for ever, in a blocking task nobody can cancel.
///
/// Percent-encoded by hand: libpq decodes `%XX` but not `+`, and refuses a second `=` in a parameter, so
/// the url crate's form encoding (`+` for a space) would not reach it intact.
pub fn with_session_timeouts(
    url: &str,
    statement: std::time::Duration,
    lock: std::time::Duration,
) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return url.to_owned();
    };
    let ours = format!(
        "-c statement_timeout={} -c lock_timeout={}",
        statement.as_millis(),
        lock.as_millis()
    );
    let mut pairs: Vec<(String, String)> = u.query_pairs().into_owned().collect();
    match pairs.iter_mut().find(|(k, _)| k == "options") {
        Some((_, options)) => *options = format!("{options} {ours}"),
        None => pairs.push(("options".to_owned(), ours)),
    }
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let query: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    u.set_query(Some(&query.join("&")));
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_timeouts_reach_libpq_as_options() {
        let d = std::time::Duration::from_millis;
        assert_eq!(
            with_session_timeouts("postgres://h/db?connect_timeout=5", d(30_000), d(2_000)),
            "postgres://h/db?connect_timeout=5&options=-c%20statement_timeout%3D30000%20-c%20lock_timeout%3D2000"
        );
        let own = with_session_timeouts("postgres://h/db?options=-c%20work_mem%3D8MB", d(1), d(2));
        assert!(
            own.ends_with(
                "options=-c%20work_mem%3D8MB%20-c%20statement_timeout%3D1%20-c%20lock_timeout%3D2"
            ),
            "{own}"
        );
    }

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
