//! ingest: accepted POST/s and latency from wrk, against raw XADD from redis-benchmark (its rate and its
//! own p99, same run); then the same wrk run again while hostile clients hold connections (16 that never
//! read what they asked for, 16 that send a body a byte a second), against the plain figure.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context};

use super::{cpu_time, pad, require, Env};
use crate::report::{us, Row};
use crate::{progress, Sizes};

pub(super) const WRK_SCRIPT: &str = r#"
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
    let field = |from_end: usize| -> Option<f64> {
        csv.lines()
            .filter_map(|l| l.rsplit(',').nth(from_end))
            .filter_map(|v| v.trim_matches('"').parse().ok())
            .next_back()
    };
    let xadd_rate =
        field(6).with_context(|| format!("no rate in redis-benchmark output: {csv}"))?;
    // redis-benchmark's p99 is in milliseconds, to 3 decimals.
    let xadd_p99 = field(1).with_context(|| format!("no p99 in redis-benchmark output: {csv}"))?;
    let xadd_p99_us = (xadd_p99 * 1000.0).round().max(1.0) as u64;
    let mut redis = testkit::redis(&s);
    let raw_len: u64 = redis::cmd("XLEN").arg(&raw_key).query(&mut redis)?;
    ensure!(
        raw_len == n as u64,
        "redis-benchmark added {raw_len} entries, not {n}"
    );
    let _: () = redis::cmd("DEL").arg(&raw_key).query(&mut redis)?;
    let script = std::env::temp_dir().join(format!("relay-wrk-{}.lua", std::process::id()));
    std::fs::write(&script, WRK_SCRIPT.replace("BODY", &format!("{body:?}")))?;

    // The HTTP floor: actix-web answering the same POSTs after the same JSON check, with no Redis.
    // Its CPU per request beside ingest-api's is what Relay adds to HTTP alone.
    let floor = env.start_floor("broadcast", &s);
    progress("bare actix-web + JSON check (relay-floor):");
    let floor_cpu = cpu_time(floor.pid());
    let bare = tokio::task::block_in_place(|| {
        run_wrk(
            &format!("{}/messages", floor.url()),
            &script,
            sizes.ingest_secs,
        )
    });
    let floor_cpu = cpu_time(floor.pid()).saturating_sub(floor_cpu);
    drop(floor);
    let bare = bare?;

    let ingest = env.start("ingest-api", &s, &[]);
    let url = format!("{}/messages", ingest.url());
    let redis_pid = local_redis_pid(&mut redis);
    let cpu_before = (
        cpu_time(ingest.pid()),
        redis_pid.map(cpu_time).unwrap_or_default(),
    );
    // wrk blocks its thread; block_in_place keeps the runtime's other thread for the hostile clients.
    let plain = tokio::task::block_in_place(|| {
        wrk(&url, &script, sizes.ingest_secs, &mut redis, &s.stream_key)
    });
    let cpu_spent = (
        cpu_time(ingest.pid()).saturating_sub(cpu_before.0),
        redis_pid
            .map(cpu_time)
            .unwrap_or_default()
            .saturating_sub(cpu_before.1),
    );
    let hostile = match &plain {
        Ok(_) => {
            let addr = format!("127.0.0.1:{}", ingest.port);
            let held = hostile_clients(&addr).await?;
            progress("   … again with 16 stalled readers and 16 slow bodies holding connections");
            let run = tokio::task::block_in_place(|| {
                wrk(&url, &script, sizes.ingest_secs, &mut redis, &s.stream_key)
            });
            held.iter().for_each(tokio::task::JoinHandle::abort);
            run
        }
        Err(_) => Err(anyhow::anyhow!("the plain run failed")),
    };
    let _ = std::fs::remove_file(&script);
    drop(ingest);
    let plain = plain?;
    let ratio = plain.rate / xadd_rate;
    // CPU µs per accepted request.
    let per_request =
        |cpu: Duration, requests: u64| cpu.as_secs_f64() * 1e6 / requests.max(1) as f64;
    let (relay_us, redis_us, bare_us) = (
        per_request(cpu_spent.0, plain.accepted),
        per_request(cpu_spent.1, plain.accepted),
        per_request(floor_cpu, bare.accepted),
    );
    let p99_ratio = plain.p99 as f64 / xadd_p99_us as f64;
    let mut rows = vec![
        Row::new(
            "ingest",
            "accepted POST/s (200 B JSON, 64 conns)",
            format!("{:.0}/s", plain.rate),
        )
        .baseline(
            format!(
                "XADD {xadd_rate:.0}/s (bare actix-web POST {:.0}/s, {:.2}× XADD)",
                bare.rate,
                bare.rate / xadd_rate
            ),
            ratio,
        )
        .goal("≥ 0.9×", ratio >= 0.9),
        Row::new(
            "ingest",
            "POST latency",
            format!(
                "p50 {} · p99 {} · p99.9 {}",
                us(plain.p50),
                us(plain.p99),
                us(plain.p999)
            ),
        )
        .baseline(format!("XADD p99 {}", us(xadd_p99_us)), p99_ratio)
        .goal("p99 ≤ 3×", p99_ratio <= 3.0),
        Row::new(
            "ingest",
            "CPU per accepted POST (user + system)",
            format!(
                "ingest-api {relay_us:.1} µs · Redis {}",
                redis_pid.map_or("— (not local)".into(), |_| format!("{redis_us:.1} µs"))
            ),
        )
        .baseline(
            format!("bare actix-web + JSON check {bare_us:.1} µs"),
            relay_us / bare_us.max(0.001),
        ),
    ];
    rows.push(match hostile {
        Ok(h) => {
            let ratio = h.rate / plain.rate;
            Row::new(
                "ingest, hostile",
                "accepted POST/s while 16 stalled readers + 16 slow bodies hold connections",
                format!("{:.0}/s · p99 {}", h.rate, us(h.p99)),
            )
            .baseline(format!("plain run {:.0}/s", plain.rate), ratio)
            .goal("≥ 0.9× (within noise)", ratio >= 0.9)
        }
        Err(e) => Row::failed("ingest, hostile", format!("{e:#}")),
    });
    Ok(rows)
}

/// One wrk run's figures.
pub(super) struct Wrk {
    pub rate: f64,
    /// Requests answered 2xx.
    pub accepted: u64,
    p50: u64,
    p99: u64,
    p999: u64,
}

/// wrk against `url` for `secs`; checks every answer was a 2xx and the stream grew by what was accepted.
pub(super) fn wrk(
    url: &str,
    script: &std::path::Path,
    secs: u32,
    redis: &mut redis::Connection,
    stream_key: &str,
) -> anyhow::Result<Wrk> {
    let before: u64 = redis::cmd("XLEN").arg(stream_key).query(redis)?;
    let run = run_wrk(url, script, secs)?;
    let accepted = run.accepted;
    // wrk stops with up to 64 requests in flight: those may be in the stream without a counted answer.
    // Give them a moment to land, so the next run's count starts from a settled stream.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let stored = redis::cmd("XLEN").arg(stream_key).query::<u64>(redis)? - before;
    ensure!(
        stored >= accepted && stored <= accepted + 64,
        "{accepted} accepted but {stored} entries in the stream"
    );
    Ok(run)
}

/// wrk against `url` for `secs`, 64 connections; fails unless every answer was a 2xx.
pub(super) fn run_wrk(url: &str, script: &std::path::Path, secs: u32) -> anyhow::Result<Wrk> {
    progress(format!("wrk: POST {url}, 64 connections, {secs} s"));
    let out = Command::new("wrk")
        .args([
            "-t2",
            "-c64",
            &format!("-d{secs}s"),
            "--timeout",
            "5s",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .context("running wrk")?;
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
    Ok(Wrk {
        rate: accepted as f64 / (duration_us as f64 / 1e6),
        accepted,
        p50,
        p99,
        p999,
    })
}

/// The pid of the Redis server the bench uses, when it runs on this machine (`INFO server`'s
/// `process_id`, checked against `/proc`): its CPU is counted beside ingest-api's.
fn local_redis_pid(redis: &mut redis::Connection) -> Option<u32> {
    let info: String = redis::cmd("INFO").arg("server").query(redis).ok()?;
    let pid: u32 = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))?
        .trim()
        .parse()
        .ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    comm.starts_with("redis-server").then_some(pid)
}

/// Opens the hostile connections and keeps them busy until the returned tasks are aborted: 16 that
/// pipeline requests for `/openapi.json` and never read an answer (the server's writes back up), and 16
/// that declare a 200-byte body and send it a byte a second (within `CLIENT_TIMEOUT_MS`, so the server
/// must hold them).
async fn hostile_clients(addr: &str) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    use tokio::io::AsyncWriteExt;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        tasks.push(tokio::spawn(async move {
            let request = b"GET /openapi.json HTTP/1.1\r\nHost: localhost\r\n\r\n";
            // Write until the kernel's buffers are full (the server stopped reading because we never
            // read its answers), then sit on the connection.
            let mut written = 0usize;
            while written < 64 << 20 {
                match stream.try_write(request) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if tokio::time::timeout(
                            std::time::Duration::from_millis(200),
                            stream.writable(),
                        )
                        .await
                        .is_err()
                        {
                            break;
                        }
                    }
                    Err(_) => return,
                }
            }
            std::future::pending::<()>().await;
        }));
    }
    for _ in 0..16 {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        tasks.push(tokio::spawn(async move {
            let head = "POST /messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                if stream.write_all(b" ").await.is_err() {
                    return;
                }
            }
        }));
    }
    // Let them take hold before the measurement starts.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    Ok(tasks)
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
