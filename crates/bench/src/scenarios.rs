//! The scenarios. Each starts the release binaries it needs on a stream key and database of its own,
//! measures, checks the counts, and stops them.

use std::io::Write;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use diesel::{Connection, PgConnection, RunQueryDsl};
use hdrhistogram::Histogram;
use model::redis_stream::xadd_cmd;
use model::{now_micros, StreamEntry};
use service::Settings;
use testkit::procs::Service;

use crate::report::{latency_summary, us, Row};
use crate::{progress, ws, Sizes};

/// The run's base settings and what to clean up afterwards.
pub struct Env {
    pub settings: Settings,
    used: Mutex<Vec<Settings>>,
}

impl Env {
    pub fn new() -> Self {
        Self {
            settings: testkit::test_settings(),
            used: Mutex::new(Vec::new()),
        }
    }

    /// Settings with a stream key and database of their own for one scenario.
    fn scenario(&self, name: &str) -> Settings {
        let mut s = testkit::test_settings();
        let tag = uuid::Uuid::now_v7().simple().to_string();
        s.stream_key = format!("bench:{name}:{tag}");
        s.database_url = store::url::with_database(&s.database_url, &format!("relay_bench_{tag}"));
        s.consumer_name = "bench".into();
        self.used.lock().unwrap().push(s.clone());
        s
    }

    fn start(&self, service: &'static str, s: &Settings, extra: &[(&str, &str)]) -> Service {
        let mut env = testkit::procs::env_for(s);
        for (k, v) in [
            ("PERSISTER_BLOCK_MS", "1000"),
            ("REDIS_TIMEOUT_MS", "2000"),
            ("MAX_BACKLOG", "100000000"),
            ("MAX_CONNECTIONS", "50000"),
            (
                "RUST_LOG",
                "warn,ingest_api=info,persister=info,push_gateway=info",
            ),
        ] {
            env.retain(|(key, _)| *key != k);
            env.push((k, v.to_owned()));
        }
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k, (*v).to_owned()));
        }
        // Service::start waits with blocking HTTP calls.
        tokio::task::block_in_place(|| Service::start(service, &env))
    }

    pub fn cleanup(&self) {
        for s in self.used.lock().unwrap().drain(..) {
            testkit::cleanup(&s);
        }
    }
}

fn require(tool: &str, install: &str) -> anyhow::Result<()> {
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

fn redis_host_port(url: &str) -> (String, String) {
    let rest = url.trim_start_matches("redis://");
    let rest = rest
        .rsplit('@')
        .next()
        .unwrap_or(rest)
        .split('/')
        .next()
        .unwrap_or(rest);
    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "6379"));
    (host.to_owned(), port.to_owned())
}

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).unwrap()
}

/// `VmRSS` and `VmHWM` (peak) of a process, KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time (user + system) a process has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / 100.0)
}

fn pg(url: &str) -> anyhow::Result<PgConnection> {
    PgConnection::establish(url).with_context(|| {
        format!(
            "connecting to {}",
            service::settings::mask_url_password(url)
        )
    })
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn count_rows(url: &str) -> anyhow::Result<i64> {
    Ok(diesel::sql_query("SELECT count(*) AS n FROM messages")
        .get_result::<Count>(&mut pg(url)?)?
        .n)
}

fn pad(len: usize) -> String {
    "x".repeat(len)
}

// ── ingest ─────────────────────────────────────────────────────────────────────────────────────────

const WRK_SCRIPT: &str = r#"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = BODY
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d\n", summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

pub async fn ingest(env: &Env, sizes: Sizes) -> anyhow::Result<Vec<Row>> {
    require("wrk", "apt-get install -y wrk")?;
    require("redis-benchmark", "apt-get install -y redis-tools")?;
    let s = env.scenario("ingest");
    // A 200-byte JSON body.
    let prefix = r#"{"bench":"ingest","pad":""#;
    let body = format!("{prefix}{}\"}}", pad(200 - prefix.len() - 2));
    debug_assert_eq!(body.len(), 200);

    // The ceiling: raw XADD of a 200-byte field from 64 clients, unpipelined.
    let (host, port) = redis_host_port(&s.redis_url);
    let raw_key = format!("{}:raw", s.stream_key);
    let n = if sizes.quick {
        20_000
    } else {
        90_000 * sizes.ingest_secs as usize
    };
    progress(format!("redis-benchmark: {n} × XADD, 64 clients"));
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            &host,
            "-p",
            &port,
            "-c",
            "64",
            "-P",
            "1",
            "-n",
            &n.to_string(),
            "--csv",
        ])
        .args(["XADD", &raw_key, "*", "payload", &body])
        .output()
        .context("running redis-benchmark")?;
    let csv = String::from_utf8_lossy(&out.stdout);
    // CSV: "<command>","rps","avg","min","p50","p95","p99","max". The command itself contains commas and
    // quotes (the JSON body), so the rate is counted from the end of the line.
    let xadd_rate: f64 = csv
        .lines()
        .filter_map(|l| l.rsplit(',').nth(6))
        .filter_map(|v| v.trim_matches('"').parse().ok())
        .next_back()
        .with_context(|| format!("no rate in redis-benchmark output: {csv}"))?;
    let mut redis = testkit::redis(&s);
    let raw_len: u64 = redis::cmd("XLEN").arg(&raw_key).query(&mut redis)?;
    ensure!(
        raw_len == n as u64,
        "redis-benchmark added {raw_len} entries, not {n}"
    );
    let _: () = redis::cmd("DEL").arg(&raw_key).query(&mut redis)?;

    let ingest = env.start("ingest-api", &s, &[]);
    let script = std::env::temp_dir().join(format!("relay-wrk-{}.lua", std::process::id()));
    std::fs::write(&script, WRK_SCRIPT.replace("BODY", &format!("{body:?}")))?;
    progress(format!(
        "wrk: POST /messages, 64 connections, {} s",
        sizes.ingest_secs
    ));
    let out = Command::new("wrk")
        .args([
            "-t2",
            "-c64",
            &format!("-d{}s", sizes.ingest_secs),
            "--timeout",
            "5s",
            "-s",
        ])
        .arg(&script)
        .arg(format!("{}/messages", ingest.url()))
        .output()
        .context("running wrk")?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&out.stdout);
    let result: Vec<u64> = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .with_context(|| format!("no result from wrk: {text}"))?
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let [requests, duration_us, status_errors, socket_errors, p50, p99, p999] = result[..] else {
        bail!("unexpected wrk result: {text}")
    };
    let accepted = requests - status_errors;
    ensure!(
        status_errors == 0 && socket_errors == 0,
        "{status_errors} non-2xx answers, {socket_errors} socket errors"
    );
    let stored: u64 = redis::cmd("XLEN").arg(&s.stream_key).query(&mut redis)?;
    // wrk stops with up to 64 requests in flight: those may be in the stream without a counted answer.
    ensure!(
        stored >= accepted && stored <= accepted + 64,
        "{accepted} accepted but {stored} entries in the stream"
    );
    drop(ingest);
    let rate = accepted as f64 / (duration_us as f64 / 1e6);
    let ratio = rate / xadd_rate;
    let mut h = histogram();
    let _ = (
        h.record(p50.max(1)),
        h.record(p99.max(1)),
        h.record(p999.max(1)),
    );
    Ok(vec![
        Row::new(
            "ingest",
            "accepted POST/s (200 B JSON, 64 conns)",
            format!("{rate:.0}/s"),
        )
        .baseline(format!("XADD {xadd_rate:.0}/s"), ratio)
        .goal("≥ 0.6×", ratio >= 0.6),
        Row::new(
            "ingest",
            "POST latency",
            format!("p50 {} · p99 {} · p99.9 {}", us(p50), us(p99), us(p999)),
        )
        .goal("p99 ≤ 3 ms", p99 <= 3000),
    ])
}

// ── drain ──────────────────────────────────────────────────────────────────────────────────────────

pub async fn drain(env: &Env, sizes: Sizes) -> anyhow::Result<Vec<Row>> {
    require("psql", "apt-get install -y postgresql-client")?;
    let s = env.scenario("drain");
    let url = s.database_url.clone();
    tokio::task::spawn_blocking(move || store::prepare_database(&url)).await??;
    let n = sizes.drain_rows;
    progress(format!(
        "filling the stream with {n} entries (and a COPY file of the same rows)"
    ));
    let copy_file = std::env::temp_dir().join(format!("relay-copy-{}.tsv", std::process::id()));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&copy_file)?);
    let client = redis::Client::open(s.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let filler = pad(170);
    for chunk in 0..n.div_ceil(1000) {
        let entries: Vec<StreamEntry> = (chunk * 1000..((chunk + 1) * 1000).min(n))
            .map(|i| StreamEntry {
                id: uuid::Uuid::now_v7(),
                received_at: now_micros(),
                payload: serde_json::value::RawValue::from_string(format!(
                    "{{\"i\":{i},\"pad\":\"{filler}\"}}"
                ))
                .unwrap(),
            })
            .collect();
        let mut pipe = redis::pipe();
        for e in &entries {
            pipe.add_command(xadd_cmd(&s.stream_key, e));
        }
        let ids: Vec<String> = pipe.query_async(&mut conn).await?;
        for (e, id) in entries.iter().zip(ids) {
            let (ms, seq) = id.split_once('-').unwrap();
            writeln!(
                file,
                "{ms}\t{seq}\t{}\t{}\t{}",
                e.id,
                model::format_received_at(&e.received_at),
                e.payload.get()
            )?;
        }
    }
    file.flush()?;
    drop(file);

    // The ceiling: psql \copy of the same rows into an empty table of the same schema.
    let mut db = pg(&s.database_url)?;
    diesel::sql_query("CREATE TABLE bench_copy (LIKE messages INCLUDING ALL)").execute(&mut db)?;
    progress("psql \\copy of the same rows");
    let started = Instant::now();
    let out = Command::new("psql")
        .arg(&s.database_url)
        .arg("-v")
        .arg("ON_ERROR_STOP=1")
        .arg("-c")
        .arg(format!(
            "\\copy bench_copy (stream_ms, stream_seq, id, received_at, payload) FROM '{}'",
            copy_file.display()
        ))
        .output()?;
    let copy_secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&copy_file);
    ensure!(
        out.status.success(),
        "psql \\copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copied: i64 = diesel::sql_query("SELECT count(*) AS n FROM bench_copy")
        .get_result::<Count>(&mut db)?
        .n;
    ensure!(copied == n as i64, "COPY stored {copied} of {n}");
    diesel::sql_query("DROP TABLE bench_copy").execute(&mut db)?;

    progress("persister draining the backlog");
    let started = Instant::now();
    let persister = env.start("persister", &s, &[]);
    let metrics_url = format!("{}/metrics", persister.url());
    let stored = || -> u64 {
        reqwest::blocking::get(&metrics_url)
            .and_then(|r| r.text())
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("relay_persister_rows_total ")
                        .and_then(|v| v.parse().ok())
                })
            })
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last_report = Instant::now();
    loop {
        let done = tokio::task::block_in_place(stored);
        if done >= n as u64 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the persister stored {done} of {n} in 600 s"
        );
        if last_report.elapsed() > Duration::from_secs(5) {
            progress(format!("   {done} of {n} stored"));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_secs = started.elapsed().as_secs_f64();
    let rows = count_rows(&s.database_url)?;
    ensure!(rows == n as i64, "{rows} rows stored of {n}");
    let mut redis = testkit::redis(&s);
    let pending: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(&s.stream_key)
        .arg(model::PERSISTER_GROUP)
        .query(&mut redis)?;
    // Acks go out right after each commit; give the last one a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pending_after: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(&s.stream_key)
        .arg(model::PERSISTER_GROUP)
        .query(&mut redis)?;
    ensure!(
        pending_after.0 == 0,
        "{} entries still unacknowledged (was {})",
        pending_after.0,
        pending.0
    );
    drop(persister);
    let rate = n as f64 / drain_secs;
    let copy_rate = n as f64 / copy_secs;
    let ratio = rate / copy_rate;
    Ok(vec![Row::new(
        "drain",
        &format!("rows/s storing a {n}-entry backlog"),
        format!("{rate:.0}/s"),
    )
    .baseline(format!("psql \\copy {copy_rate:.0}/s"), ratio)
    .goal("≥ 0.5×", ratio >= 0.5)])
}

// ── end to end ─────────────────────────────────────────────────────────────────────────────────────

/// Posts `rate` messages a second for `secs`, open loop: each at its scheduled time, whatever the
/// previous answers did. Payloads carry `seq` and the wall time `t` (µs) the request was sent. Returns
/// the send times by `seq` and the accepted count.
async fn post_open_loop(url: String, rate: u32, secs: u32) -> anyhow::Result<(Vec<u64>, usize)> {
    let total = (rate * secs) as usize;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(total);
    for seq in 0..total {
        let offset = Duration::from_secs_f64(seq as f64 / f64::from(rate));
        tokio::time::sleep_until(start + offset).await;
        let (client, url, accepted, failures) = (
            client.clone(),
            url.clone(),
            Arc::clone(&accepted),
            Arc::clone(&failures),
        );
        tasks.push(tokio::spawn(async move {
            // The time the request actually leaves, not its slot in the schedule: tokio's timer has a
            // 1 ms granularity, which would otherwise be counted as Relay's latency. Sends never wait for
            // earlier answers, so this is still an open loop.
            let t = wall_us();
            let res = client
                .post(&url)
                .header("content-type", "application/json")
                .body(format!(
                    "{{\"seq\":{seq},\"t\":{t},\"pad\":\"{}\"}}",
                    pad(120)
                ))
                .send()
                .await;
            match res {
                Ok(r) if r.status() == 202 => {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(r) => failures
                    .lock()
                    .unwrap()
                    .push(format!("status {}", r.status())),
                Err(e) => failures.lock().unwrap().push(e.to_string()),
            }
            t
        }));
    }
    let mut sent = Vec::with_capacity(total);
    for t in tasks {
        sent.push(t.await?);
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

pub async fn end_to_end(env: &Env, sizes: Sizes) -> anyhow::Result<Vec<Row>> {
    let s = env.scenario("e2e");
    let persister = env.start("persister", &s, &[("PERSISTER_BLOCK_MS", "1000")]);
    let ingest = env.start("ingest-api", &s, &[]);
    let gateway = env.start("push-gateway", &s, &[]);
    let total = (sizes.e2e_rate * sizes.e2e_secs) as usize;
    let mut socket = ws::connect(&format!("127.0.0.1:{}", gateway.port)).await?;
    let reader = tokio::spawn(async move {
        let mut arrivals: Vec<(u64, u64, Option<model::StreamId>)> = Vec::with_capacity(total);
        let n = ws::read_messages(&mut socket, total, Duration::from_secs(15), |frame| {
            let seq = ws::number_after(frame, b"\"seq\":").unwrap_or(u64::MAX);
            arrivals.push((seq, wall_us(), ws::stream_id(frame)));
        })
        .await;
        (n, arrivals)
    });
    progress(format!(
        "{} msg/s for {} s, open loop",
        sizes.e2e_rate, sizes.e2e_secs
    ));
    let (sent, accepted) = post_open_loop(
        format!("{}/messages", ingest.url()),
        sizes.e2e_rate,
        sizes.e2e_secs,
    )
    .await?;
    let (frames, arrivals) = reader.await?;
    ensure!(accepted == total, "{accepted} of {total} posts accepted");
    ensure!(frames == total, "{frames} of {total} frames arrived");
    // Concurrent posts reach the stream in any order; frames must follow the stream's order, and carry
    // every post exactly once.
    let mut to_frame = histogram();
    let mut seen = vec![false; total];
    let mut previous = None;
    for (seq, at, stream_id) in &arrivals {
        let slot = seen
            .get_mut(*seq as usize)
            .with_context(|| format!("a frame carried seq {seq}"))?;
        ensure!(!*slot, "seq {seq} arrived twice");
        *slot = true;
        ensure!(
            stream_id.is_some() && *stream_id > previous,
            "frames out of stream order at seq {seq}"
        );
        previous = *stream_id;
        to_frame.record(at.saturating_sub(sent[*seq as usize]).max(1))?;
    }
    // POST → committed row: the row's persisted_at against the time the post was sent.
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_rows(&s.database_url)? < total as i64 {
        ensure!(Instant::now() < deadline, "rows did not all arrive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    #[derive(diesel::QueryableByName)]
    struct Persisted {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        seq: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        at: i64,
    }
    let rows: Vec<Persisted> = diesel::sql_query(
        "SELECT (payload->>'seq')::bigint AS seq, (extract(epoch FROM persisted_at) * 1000000)::bigint AS at FROM messages",
    )
    .load(&mut pg(&s.database_url)?)?;
    ensure!(rows.len() == total, "{} rows for {total} posts", rows.len());
    let mut to_row = histogram();
    for r in rows {
        to_row.record((r.at as u64).saturating_sub(sent[r.seq as usize]).max(1))?;
    }
    drop((persister, ingest, gateway));
    let frame_p99 = to_frame.value_at_quantile(0.99);
    let row_p99 = to_row.value_at_quantile(0.99);
    let figure = format!("{} msg/s × {} s", sizes.e2e_rate, sizes.e2e_secs);
    Ok(vec![
        Row::new(
            "end to end",
            &format!("POST→WebSocket frame ({figure})"),
            latency_summary(&to_frame),
        )
        .goal("p99 ≤ 2 ms", frame_p99 <= 2000),
        Row::new(
            "end to end",
            &format!("POST→committed row ({figure})"),
            latency_summary(&to_row),
        )
        .goal("p99 ≤ 50 ms", row_p99 <= 50_000),
    ])
}

// ── fan-out ────────────────────────────────────────────────────────────────────────────────────────

pub async fn fan_out(env: &Env, sizes: Sizes) -> anyhow::Result<Vec<Row>> {
    let s = env.scenario("fanout");
    let ingest = env.start("ingest-api", &s, &[]);
    let gateway = env.start("push-gateway", &s, &[]);
    let addr = format!("127.0.0.1:{}", gateway.port);
    let total = (sizes.fanout_rate * sizes.fanout_secs) as usize;
    progress(format!("{} WebSocket clients", sizes.fanout_clients));
    let mut sockets = Vec::with_capacity(sizes.fanout_clients);
    for _ in 0..sizes.fanout_clients {
        sockets.push(ws::connect(&addr).await?);
    }
    let merged = Arc::new(Mutex::new((
        histogram(),
        0usize,
        Vec::<String>::new(),
        0u64,
    )));
    let mut readers = Vec::new();
    for (client, mut socket) in sockets.into_iter().enumerate() {
        let merged = Arc::clone(&merged);
        readers.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut seen = vec![false; total];
            let mut previous = None;
            let mut problem = None;
            let mut last_at = 0;
            let n = ws::read_messages(&mut socket, total, Duration::from_secs(15), |frame| {
                let (stream_id, seq, t) = ws::frame_fields(frame);
                let seq = seq.map_or(usize::MAX, |s| s as usize);
                let fresh = seen
                    .get_mut(seq)
                    .map(|slot| !std::mem::replace(slot, true))
                    .unwrap_or(false);
                if (!fresh || stream_id.is_none() || stream_id <= previous) && problem.is_none() {
                    problem = Some(format!(
                        "client {client}: seq {seq} duplicated, unknown or out of stream order"
                    ));
                }
                previous = stream_id;
                last_at = wall_us();
                if let Some(t) = t {
                    let _ = h.record(last_at.saturating_sub(t).max(1));
                }
            })
            .await;
            let mut m = merged.lock().unwrap();
            let _ = m.0.add(&h);
            m.1 += n;
            m.2.extend(problem);
            m.3 = m.3.max(last_at);
        }));
    }
    let cpu_before = cpu_time(gateway.pid());
    let started_wall = wall_us();
    progress(format!(
        "{} msg/s for {} s to {} clients",
        sizes.fanout_rate, sizes.fanout_secs, sizes.fanout_clients
    ));
    let (_, accepted) = post_open_loop(
        format!("{}/messages", ingest.url()),
        sizes.fanout_rate,
        sizes.fanout_secs,
    )
    .await?;
    for r in readers {
        r.await?;
    }
    let cpu = cpu_time(gateway.pid()) - cpu_before;
    let (rss, peak) = memory_kib(gateway.pid());
    let (h, frames, problems, last_at) = std::mem::replace(
        &mut *merged.lock().unwrap(),
        (histogram(), 0, Vec::new(), 0),
    );
    drop((ingest, gateway));
    ensure!(accepted == total, "{accepted} of {total} posts accepted");
    let offered = total * sizes.fanout_clients;
    ensure!(problems.is_empty(), "lost or reordered: {}", problems[0]);
    ensure!(frames == offered, "{frames} of {offered} frames delivered");
    let secs = (last_at.saturating_sub(started_wall)) as f64 / 1e6;
    let rate = frames as f64 / secs;
    let offered_rate = f64::from(sizes.fanout_rate) * sizes.fanout_clients as f64;
    let ratio = rate / offered_rate;
    let p99 = h.value_at_quantile(0.99);
    Ok(vec![
        Row::new(
            "fan-out",
            &format!(
                "frames/s to {} clients ({} msg/s × {} s)",
                sizes.fanout_clients, sizes.fanout_rate, sizes.fanout_secs
            ),
            format!("{rate:.0}/s"),
        )
        .baseline(format!("offered {offered_rate:.0}/s"), ratio)
        .goal("≥ 0.95×", ratio >= 0.95),
        Row::new("fan-out", "delivery latency", latency_summary(&h))
            .goal("p99 ≤ 100 ms", p99 <= 100_000),
        Row::new(
            "fan-out",
            "gateway CPU and memory",
            format!(
                "{:.0}% of a core · RSS {} MiB (peak {} MiB)",
                cpu.as_secs_f64() / secs * 100.0,
                rss / 1024,
                peak / 1024
            ),
        ),
    ])
}

// ── idle sockets ───────────────────────────────────────────────────────────────────────────────────

pub async fn idle_sockets(env: &Env, sizes: Sizes) -> anyhow::Result<Vec<Row>> {
    let s = env.scenario("idle");
    let gateway = env.start("push-gateway", &s, &[]);
    let addr = format!("127.0.0.1:{}", gateway.port);
    // Warm up: one connection, so allocator and runtime start-up costs are not counted per socket.
    let mut warm = ws::connect(&addr).await?;
    let warm = tokio::spawn(async move {
        while let Some(Ok(_)) = futures_util::StreamExt::next(&mut warm).await {}
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, _) = memory_kib(gateway.pid());
    progress(format!(
        "opening {} idle WebSocket connections",
        sizes.idle_sockets
    ));
    // Idle, not dead: each socket is read from the moment it opens (so pings are answered), as a browser
    // tab's would be.
    let mut keepers = Vec::with_capacity(sizes.idle_sockets);
    for chunk in 0..sizes.idle_sockets.div_ceil(500) {
        let batch =
            (chunk * 500..((chunk + 1) * 500).min(sizes.idle_sockets)).map(|_| ws::connect(&addr));
        for socket in futures_util::future::join_all(batch).await {
            let mut socket = socket.context(
                "opening a socket (is the open-files limit high enough? make bench raises it)",
            )?;
            keepers.push(tokio::spawn(async move {
                while let Some(Ok(_)) = futures_util::StreamExt::next(&mut socket).await {}
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after, _) = memory_kib(gateway.pid());
    let ready: serde_json::Value = reqwest::get(format!("{}/readyz", gateway.url()))
        .await?
        .json()
        .await?;
    let clients = ready["clients"].as_u64().unwrap_or(0) as usize;
    ensure!(
        clients == sizes.idle_sockets + 1,
        "the gateway holds {clients} clients, not {}",
        sizes.idle_sockets + 1
    );
    keepers.iter().for_each(tokio::task::JoinHandle::abort);
    warm.abort();
    drop(gateway);
    let per = (after.saturating_sub(before)) as f64 / sizes.idle_sockets as f64;
    Ok(vec![Row::new(
        "idle sockets",
        &format!("gateway RSS per idle connection ({})", sizes.idle_sockets),
        format!("{per:.1} KiB"),
    )
    .goal("≤ 16 KiB", per <= 16.0)])
}

// ── read all ───────────────────────────────────────────────────────────────────────────────────────

pub async fn read_all(env: &Env, sizes: Sizes) -> anyhow::Result<Vec<Row>> {
    require("psql", "apt-get install -y postgresql-client")?;
    let s = env.scenario("read");
    let url = s.database_url.clone();
    tokio::task::spawn_blocking(move || store::prepare_database(&url)).await??;
    let n = sizes.read_rows;
    progress(format!("inserting {n} rows"));
    diesel::sql_query(format!(
        "INSERT INTO messages (stream_ms, stream_seq, id, received_at, payload) \
         SELECT 1700000000000 + i, 0, gen_random_uuid(), now(), json_build_object('i', i, 'pad', repeat('x', 170)) \
         FROM generate_series(1, {n}) AS i"
    ))
    .execute(&mut pg(&s.database_url)?)?;
    diesel::sql_query("VACUUM ANALYZE messages").execute(&mut pg(&s.database_url)?)?;

    let query = "SELECT stream_ms, stream_seq, id, received_at, payload FROM messages ORDER BY stream_ms, stream_seq";
    progress("psql COPY (…) TO STDOUT");
    let started = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "psql '{}' -v ON_ERROR_STOP=1 -c \"COPY ({query}) TO STDOUT\" | wc -l",
            s.database_url
        ))
        .output()?;
    let psql_secs = started.elapsed().as_secs_f64();
    let lines: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    ensure!(lines == n, "psql returned {lines} rows of {n}");

    let ingest = env.start("ingest-api", &s, &[]);
    progress("GET /messages");
    let started = Instant::now();
    let mut res = reqwest::get(format!("{}/messages", ingest.url())).await?;
    ensure!(
        res.status() == 200,
        "GET /messages answered {}",
        res.status()
    );
    let (mut items, mut bytes, mut carry) = (0usize, 0usize, Vec::new());
    const KEY: &[u8] = b"{\"id\":\"";
    while let Some(chunk) = res.chunk().await? {
        bytes += chunk.len();
        carry.extend_from_slice(&chunk);
        items += carry.windows(KEY.len()).filter(|w| *w == KEY).count();
        let keep = carry.len().saturating_sub(KEY.len() - 1);
        carry.drain(..keep);
    }
    let relay_secs = started.elapsed().as_secs_f64();
    let (_, peak) = memory_kib(ingest.pid());
    drop(ingest);
    ensure!(items == n, "GET /messages returned {items} messages of {n}");
    let ratio = psql_secs / relay_secs;
    Ok(vec![
        Row::new(
            "read all",
            &format!("GET /messages of {n} rows ({} MiB)", bytes >> 20),
            format!("{relay_secs:.2} s ({:.0} rows/s)", n as f64 / relay_secs),
        )
        .baseline(format!("psql COPY TO STDOUT {psql_secs:.2} s"), ratio)
        .goal("≥ 0.8×", ratio >= 0.8),
        Row::new(
            "read all",
            "ingest-api peak RSS",
            format!("{:.1} MiB", peak as f64 / 1024.0),
        )
        .goal("≤ 32 MiB", peak <= 32 * 1024),
    ])
}
