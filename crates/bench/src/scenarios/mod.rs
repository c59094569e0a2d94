//! The scenarios, one file each. Each starts the release binaries it needs on a stream key and database
//! of its own, measures, checks the counts, and stops them. What they share is here.

mod channels;
mod cold_start;
mod drain;
mod end_to_end;
mod fan_out;
mod hostile;
mod idle_sockets;
mod ingest;
mod read_all;
mod wrk;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::ensure;
use hdrhistogram::Histogram;
use service::Settings;
use testkit::procs::{with_env, Service};

pub use channels::{publish_to_channels, routing};
pub use cold_start::cold_start;
pub use drain::drain;
pub use end_to_end::end_to_end;
pub use fan_out::fan_out;
pub use idle_sockets::idle_sockets;
pub use ingest::ingest;
pub use read_all::read_all;

/// The run's base settings and what to clean up afterwards.
pub struct Env {
    pub settings: Settings,
    used: Mutex<Vec<Settings>>,
}

/// The tests' settings: Postgres in plain text unless `DATABASE_URL` names an `sslmode` (see
/// [`testkit::plain_text_postgres`]), for Relay and for psql's baselines alike. On this machine's Debian
/// Postgres, TLS on loopback had taken 7% of the read-all run's CPU and 3.6 MiB of ingest-api's peak RSS
/// (libcrypto's pages).
pub fn bench_settings() -> Settings {
    testkit::test_settings()
}

impl Env {
    pub fn new() -> Self {
        Self {
            settings: bench_settings(),
            used: Mutex::new(Vec::new()),
        }
    }

    /// Settings with a stream key and database of their own for one scenario.
    pub(crate) fn scenario(&self, name: &str) -> Settings {
        let mut s = bench_settings();
        let tag = uuid::Uuid::now_v7().simple().to_string();
        s.stream_key = format!("bench:{name}:{tag}");
        s.database_url = store::url::with_database(&s.database_url, &format!("relay_bench_{tag}"));
        s.consumer_name = "bench".into();
        self.used.lock().unwrap().push(s.clone());
        s
    }

    /// Writes what earlier scenarios left dirty in Postgres' buffers to disk (`CHECKPOINT`), so that a
    /// latency scenario does not pay for the previous one's flushes: after the drain's million rows, the
    /// checkpointer's writes landed in the middle of POST→row and put commits behind them (p99.9 31 ms in
    /// one full run). Best effort: a role that may not checkpoint only gets a note.
    pub(crate) fn settle_postgres(&self) {
        let admin = store::url::with_database(&self.settings.database_url, "postgres");
        let done = testkit::db::pg(&admin).and_then(|mut conn| {
            diesel::RunQueryDsl::execute(diesel::sql_query("CHECKPOINT"), &mut conn)
                .map_err(Into::into)
        });
        if let Err(e) = done {
            crate::progress(format!(
                "CHECKPOINT before the scenario failed (going on): {e:#}"
            ));
        }
    }

    /// [`Env::scenario`], its database created and migrated.
    pub(crate) async fn scenario_with_database(&self, name: &str) -> anyhow::Result<Settings> {
        let s = self.scenario(name);
        let url = s.database_url.clone();
        tokio::task::spawn_blocking(move || store::prepare_database(&url)).await??;
        Ok(s)
    }

    /// Starts `service` with the scenario's settings and `extra` on top. Logging is as shipped: no
    /// `RUST_LOG` of the bench's own, so testkit's `RUST_LOG=info` (the services' default) holds and the
    /// access log is on; a row that wants it off says so in `extra`.
    pub(crate) fn start(
        &self,
        service: &'static str,
        s: &Settings,
        extra: &[(&str, &str)],
    ) -> Service {
        let env = with_env(
            &testkit::procs::env_for(s),
            &[
                ("PERSISTER_BLOCK_MS", "1000"),
                ("REDIS_TIMEOUT_MS", "2000"),
                ("MAX_BACKLOG", "100000000"),
                ("MAX_CONNECTIONS", "50000"),
                // Every bench client comes from 127.0.0.0/8: the per-address cap would refuse them.
                ("MAX_CONNECTIONS_PER_IP", "100000"),
            ],
        );
        let env = with_env(&env, extra);
        // Service::start waits with blocking HTTP calls.
        tokio::task::block_in_place(|| Service::start(service, &env))
    }

    /// `relay-floor` in `mode` (`broadcast` or `pipeline`) on the scenario's stream key.
    pub(crate) fn start_floor(&self, mode: &str, s: &Settings) -> Service {
        let env = with_env(
            &testkit::procs::env_for(s),
            &[("FLOOR_MODE", mode), ("WS_SEND_QUEUE", "1024")],
        );
        tokio::task::block_in_place(|| Service::start("relay-floor", &env))
    }

    pub fn cleanup(&self) {
        for s in self.used.lock().unwrap().drain(..) {
            testkit::cleanup(&s);
        }
    }
}

pub(crate) fn require(tool: &str, install: &str) -> anyhow::Result<()> {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()?
        .status
        .success();
    ensure!(
        found,
        "{tool} is missing: {install} (make bench installs it when it can)"
    );
    Ok(())
}

pub(crate) fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).unwrap()
}

pub(crate) fn pad(len: usize) -> String {
    "x".repeat(len)
}

/// Posts `rate` messages a second for `secs`, open loop: each at its scheduled time, whatever the
/// previous answers did. Payloads carry `seq` and the wall time `t` (µs) the request was sent. Returns
/// the send times by `seq` and the accepted count.
pub(crate) async fn post_open_loop(
    url: String,
    rate: u32,
    secs: u32,
) -> anyhow::Result<(Vec<u64>, usize)> {
    post_open_loop_to(move |_| url.clone(), rate, secs).await
}

/// [`post_open_loop`], message `seq` to `url_of(seq)` (a channel's path, say).
pub(crate) async fn post_open_loop_to(
    url_of: impl Fn(usize) -> String,
    rate: u32,
    secs: u32,
) -> anyhow::Result<(Vec<u64>, usize)> {
    let total = (rate * secs) as usize;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let retried = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(total);
    for seq in 0..total {
        let offset = Duration::from_secs_f64(seq as f64 / f64::from(rate));
        tokio::time::sleep_until(start + offset).await;
        let (client, url, accepted, failures, retried) = (
            client.clone(),
            url_of(seq),
            Arc::clone(&accepted),
            Arc::clone(&failures),
            Arc::clone(&retried),
        );
        tasks.push(tokio::spawn(async move {
            // The time the request actually leaves, not its slot in the schedule: tokio's timer has a
            // 1 ms granularity, which would otherwise be counted as Relay's latency. Sends never wait for
            // earlier answers, so this is still an open loop.
            let t = wall_us();
            let body = format!("{{\"seq\":{seq},\"t\":{t},\"pad\":\"{}\"}}", pad(120));
            match post_until_answered(&client, &url, body, &retried).await {
                Ok(()) => {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(why) => failures.lock().unwrap().push(why),
            }
            t
        }));
    }
    let mut sent = Vec::with_capacity(total);
    for t in tasks {
        sent.push(t.await?);
    }
    let retried = retried.load(std::sync::atomic::Ordering::Relaxed);
    if retried > 0 {
        crate::progress(format!(
            "{retried} of {total} posts sent again (a 408 or a kept-alive connection closed under them)"
        ));
    }
    let failures = failures.lock().unwrap();
    ensure!(
        failures.is_empty(),
        "{} posts failed, e.g. {}",
        failures.len(),
        failures[0]
    );
    Ok((sent, accepted.load(std::sync::atomic::Ordering::Relaxed)))
}

/// Posts `body` to `url` until it is answered 202, at most three times. A `408` (the server had not
/// received the whole request head in time) and a connection closed before any answer (a kept-alive
/// connection the server closed as the request went out) mean the post was not taken: it is sent again,
/// as a real client would, and counted in `retried`. At 2,000 msg/s past the gateway's capacity the bench
/// process itself is starved of CPU, and both happened to a few dozen of 20,000 posts. Were one taken
/// after all, the scenario's count of messages would show the duplicate.
async fn post_until_answered(
    client: &reqwest::Client,
    url: &str,
    body: String,
    retried: &std::sync::atomic::AtomicUsize,
) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            retried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let res = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        match res {
            Ok(r) if r.status() == 202 => return Ok(()),
            Ok(r) if r.status() == 408 => last = format!("status {}", r.status()),
            Ok(r) => return Err(format!("status {}", r.status())),
            // reqwest's own text ("error sending request") hides the cause: the whole chain.
            Err(e) if e.is_request() || e.is_connect() => {
                last = format!("{:#}", anyhow::Error::new(e));
            }
            Err(e) => return Err(format!("{:#}", anyhow::Error::new(e))),
        }
    }
    Err(format!("{last} (three times)"))
}

/// CPU time (user + system) a process has used; zero once it is gone (so differences are taken with
/// `saturating_sub`: a Duration below zero panics).
pub(crate) fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / 100.0)
}
