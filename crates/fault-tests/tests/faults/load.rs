//! The fault tests' load and its check: a steady poster, and the exactly-once check of what it got
//! accepted.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// Asserts that Postgres committed each of `accepted` exactly once, waiting up to `limit` for the
/// persister to drain. It reads the database's insert log (`testkit::db::log_inserts`, installed before the
/// persister started: see [`prepare_logged_database`]), not the rows: the rows are unique on id and stream
/// position, so counting them could never show a message stored twice; the log counts every committed
/// insert, whatever the constraints. With `only`, nothing else either (without it, rows may exist for
/// requests that got a 503 after a timeout although their entry reached the stream, which the contract
/// allows).
pub fn assert_exactly_once(database_url: &str, accepted: &[String], only: bool, limit: Duration) {
    let expected: std::collections::HashSet<&str> = accepted.iter().map(String::as_str).collect();
    assert_eq!(
        expected.len(),
        accepted.len(),
        "ingest answered the same id twice"
    );
    let deadline = Instant::now() + limit;
    loop {
        let inserted = testkit::db::pg(database_url)
            .and_then(|mut conn| testkit::db::inserts_per_id(&mut conn))
            .unwrap();
        let missing = expected
            .iter()
            .filter(|id| !inserted.contains_key(**id))
            .count();
        let twice: Vec<_> = inserted.iter().filter(|(_, n)| **n > 1).collect();
        let unknown = inserted
            .keys()
            .filter(|id| !expected.contains(id.as_str()))
            .count();
        assert!(
            twice.is_empty(),
            "{} messages committed more than once, e.g. {:?}",
            twice.len(),
            twice.first()
        );
        assert!(
            !only || unknown == 0,
            "{unknown} rows for messages that were never accepted"
        );
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} accepted messages never arrived",
            accepted.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Creates and migrates `database_url` with the insert log that [`assert_exactly_once`] reads; call it
/// before the first persister starts.
pub fn prepare_logged_database(database_url: &str) {
    testkit::db::prepare_with_insert_log(database_url).unwrap();
}

/// A [`Poster`] to `ingest`'s `POST /messages`.
pub fn post_to(
    ingest: &testkit::procs::Service,
    total: usize,
    rate: u32,
    workers: usize,
) -> Poster {
    let url = ingest.url();
    Poster::start(move || url.clone(), total, rate, workers)
}

/// What a steady poster saw.
#[derive(Debug, Default)]
pub struct PostLog {
    /// Ids of the 202s, in the order they were answered per worker.
    pub accepted: Vec<String>,
    /// The channel each of `accepted` was published to, as the 202 named it.
    pub channels: Vec<String>,
    /// 503s that carried `Retry-After`.
    pub refused: usize,
    /// Anything else: connection errors (a service being restarted), other statuses.
    pub failed: Vec<String>,
    /// The slowest answer.
    pub slowest: Duration,
}

impl PostLog {
    /// Asserts that no post failed and none was refused; `what` heads the first failure in the message.
    pub fn assert_none_failed(&self, what: &str) {
        assert!(
            self.failed.is_empty() && self.refused == 0,
            "{what}: {:?}",
            self.failed.first()
        );
    }
}

/// Posts `{"n":…}` messages to `url` from `workers` threads at about `rate` per second in total, until
/// `total` were attempted or `stop` is set.
pub struct Poster {
    stop: Arc<std::sync::atomic::AtomicBool>,
    workers: Vec<std::thread::JoinHandle<PostLog>>,
}

impl Poster {
    /// Posts to `POST /messages`.
    pub fn start(
        url: impl Fn() -> String + Send + Sync + 'static,
        total: usize,
        rate: u32,
        workers: usize,
    ) -> Self {
        Self::start_to(url, total, rate, workers, |_| "/messages".to_owned())
    }

    /// Posts message `n` to `path(n)` (`/messages`, or `/channels/{c}/messages`).
    pub fn start_to(
        url: impl Fn() -> String + Send + Sync + 'static,
        total: usize,
        rate: u32,
        workers: usize,
        path: fn(usize) -> String,
    ) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let url = Arc::new(url);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let interval = Duration::from_secs_f64(workers as f64 / f64::from(rate));
        let workers = (0..workers)
            .map(|_| {
                let (stop, url, next) = (Arc::clone(&stop), Arc::clone(&url), Arc::clone(&next));
                std::thread::spawn(move || {
                    let client = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .unwrap();
                    let mut log = PostLog::default();
                    let mut due = Instant::now();
                    loop {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if n >= total || stop.load(std::sync::atomic::Ordering::Relaxed) {
                            return log;
                        }
                        due += interval;
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let started = Instant::now();
                        let res = client
                            .post(format!("{}{}", url(), path(n)))
                            .header("content-type", "application/json")
                            .body(format!("{{\"n\":{n}}}"))
                            .send();
                        log.slowest = log.slowest.max(started.elapsed());
                        match res {
                            Ok(r) if r.status() == 202 => {
                                let body: serde_json::Value = r.json().unwrap();
                                log.accepted.push(body["id"].as_str().unwrap().to_owned());
                                let channel = body["channel"].as_str().unwrap_or("default");
                                log.channels.push(channel.to_owned());
                            }
                            Ok(r)
                                if r.status() == 503 && r.headers().contains_key("retry-after") =>
                            {
                                log.refused += 1
                            }
                            Ok(r) => log.failed.push(format!("status {}", r.status())),
                            Err(e) => log.failed.push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        Self { stop, workers }
    }

    /// Waits for the workers (after asking them to stop, when `stop`) and merges their logs.
    pub fn finish(self, stop: bool) -> PostLog {
        if stop {
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let mut all = PostLog::default();
        for w in self.workers {
            let log = w.join().unwrap();
            all.accepted.extend(log.accepted);
            all.channels.extend(log.channels);
            all.refused += log.refused;
            all.failed.extend(log.failed);
            all.slowest = all.slowest.max(log.slowest);
        }
        all
    }
}
