//! A careful client under a failover: posts that retry a 503 or a connection error with the same
//! `Idempotency-Key` until they get their 202.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use testkit::procs::Service;

use crate::setup::client;

/// What a [`KeyedPoster`] saw.
#[derive(Debug, Default)]
pub struct KeyedLog {
    /// The ids of the 202s, one per key.
    pub accepted: Vec<String>,
    /// 503s with `Retry-After`, each followed by a retry with the same key.
    pub refused: usize,
    /// Connection errors (each followed by a retry with the same key).
    pub errors: usize,
    /// Any other answer.
    pub unexpected: Vec<String>,
}

/// Posts `{"n":…}` with `Idempotency-Key: n-…` from `workers` threads until stopped, as a careful client
/// does: a 503 or a connection error is retried with the same key until it gets its 202 (or the test
/// stops, leaving that one unacknowledged).
pub struct KeyedPoster {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<KeyedLog>>,
}

impl KeyedPoster {
    pub fn start(url: String, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicUsize::new(0));
        let workers = (0..workers)
            .map(|_| {
                let (stop, next, url) = (Arc::clone(&stop), Arc::clone(&next), url.clone());
                std::thread::spawn(move || {
                    let client = client();
                    let mut log = KeyedLog::default();
                    'posts: while !stop.load(Ordering::Relaxed) {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        loop {
                            let res = client
                                .post(format!("{url}/messages"))
                                .header("content-type", "application/json")
                                .header("idempotency-key", format!("n-{n}"))
                                .body(format!("{{\"n\":{n}}}"))
                                .send();
                            match res {
                                Ok(r) if r.status() == 202 => {
                                    let body: serde_json::Value = r.json().unwrap();
                                    log.accepted.push(body["id"].as_str().unwrap().to_owned());
                                    break;
                                }
                                Ok(r)
                                    if r.status() == 503
                                        && r.headers().contains_key("retry-after") =>
                                {
                                    log.refused += 1
                                }
                                Ok(r) => {
                                    log.unexpected.push(format!("status {}", r.status()));
                                    break;
                                }
                                Err(_) => log.errors += 1,
                            }
                            if stop.load(Ordering::Relaxed) {
                                break 'posts;
                            }
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    log
                })
            })
            .collect();
        Self { stop, workers }
    }

    fn accepted_so_far(log: &KeyedLog) -> usize {
        log.accepted.len()
    }

    pub fn finish(self) -> KeyedLog {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = KeyedLog::default();
        for w in self.workers {
            let log = w.join().unwrap();
            all.accepted.extend(log.accepted);
            all.refused += log.refused;
            all.errors += log.errors;
            all.unexpected.extend(log.unexpected);
        }
        all
    }
}

/// Posts for `for_how_long` and counts the 202s (a probe that the write path works again).
pub fn accepted_within(ingest: &Service, for_how_long: Duration) -> usize {
    let probe = KeyedPoster::start(ingest.url(), 1);
    std::thread::sleep(for_how_long);
    KeyedPoster::accepted_so_far(&probe.finish())
}
