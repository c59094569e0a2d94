//! ingest: accepted POST/s and latency from wrk, against raw XADD from redis-benchmark.

use std::process::Command;

use anyhow::{bail, ensure, Context};

use super::{histogram, pad, require, Env};
use crate::report::{us, Row};
use crate::{progress, Sizes};

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
