//! ingest: accepted POST/s and latency from wrk, against raw XADD from redis-benchmark (its rate and its
//! own p99, same run) and against `relay-floor`'s `append` mode, a bare actix-web program doing ingest's
//! job (the JSON check, an `XADD`, 202); then the same wrk run again, on each, while hostile clients hold
//! connections (16 that pipeline requests and never read the answers, 16 that send a body a byte a
//! second), against its plain figure; and once more on an ingest-api with its access log off, against the
//! plain run, which has it on as shipped.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context};
use service::Settings;

use super::hostile::hostile_clients;
use super::wrk::{body_200, run_wrk, wrk, Script, Wrk};
use super::{cpu_time, require, Env};
use crate::report::{us, Row};
use crate::{progress, Sizes};

pub async fn ingest(env: &Env, sizes: Sizes) -> anyhow::Result<Vec<Row>> {
    require("wrk", "apt-get install -y wrk")?;
    require("redis-benchmark", "apt-get install -y redis-tools")?;
    let s = env.scenario("ingest");
    let body = body_200("ingest");
    let mut redis = testkit::redis(&s);
    let xadd = xadd_ceiling(&s, &body, sizes, &mut redis)?;
    let script = Script::write("ingest", &body, "")?;
    let bare = bare_http(env, &s, &script, sizes)?;
    let floor = append_floor(env, &s, &script, sizes, &mut redis).await?;
    let relay = relay_runs(env, &s, &script, sizes, &mut redis).await?;
    Ok(rows(&xadd, &bare, &floor, relay))
}

/// redis-benchmark's XADD: the ceiling of the rate and the p99.
struct Xadd {
    rate: f64,
    p99_us: u64,
}

/// Raw XADD of the 200-byte `body` from 64 clients, unpipelined, on a key of its own (deleted after).
fn xadd_ceiling(
    s: &Settings,
    body: &str,
    sizes: Sizes,
    redis: &mut redis::Connection,
) -> anyhow::Result<Xadd> {
    let (host, port) = redis_host_port(&s.redis_url);
    let raw_key = format!("{}:raw", s.stream_key);
    let n = if sizes.quick {
        20_000
    } else {
        90_000 * sizes.ingest_secs as usize
    };
    progress(format!("redis-benchmark: {n} × XADD, 64 clients"));
    let out = Command::new("redis-benchmark")
        .args(["-h", &host, "-p", &port, "-c", "64", "-P", "1"])
        .args(["-n", &n.to_string(), "--csv"])
        .args(["XADD", &raw_key, "*", "payload", body])
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
    let rate = field(6).with_context(|| format!("no rate in redis-benchmark output: {csv}"))?;
    // redis-benchmark's p99 is in milliseconds, to 3 decimals.
    let p99 = field(1).with_context(|| format!("no p99 in redis-benchmark output: {csv}"))?;
    let raw_len: u64 = redis::cmd("XLEN").arg(&raw_key).query(redis)?;
    ensure!(
        raw_len == n as u64,
        "redis-benchmark added {raw_len} entries, not {n}"
    );
    let _: () = redis::cmd("DEL").arg(&raw_key).query(redis)?;
    Ok(Xadd {
        rate,
        p99_us: (p99 * 1000.0).round().max(1.0) as u64,
    })
}

/// A wrk run and the CPU a process spent meanwhile.
struct Measured {
    run: Wrk,
    cpu: Duration,
}

/// The HTTP floor: actix-web answering the same POSTs after the same JSON check, with no Redis. Its CPU
/// per request beside ingest-api's is what Relay adds to HTTP alone.
fn bare_http(env: &Env, s: &Settings, script: &Script, sizes: Sizes) -> anyhow::Result<Measured> {
    let floor = env.start_floor("broadcast", s);
    progress("bare actix-web + JSON check (relay-floor):");
    let cpu = cpu_time(floor.pid());
    let url = format!("{}/messages", floor.url());
    let run = tokio::task::block_in_place(|| run_wrk(&url, script.path(), sizes.ingest_secs))?;
    Ok(Measured {
        run,
        cpu: cpu_time(floor.pid()).saturating_sub(cpu),
    })
}

/// `RUST_LOG` that turns the access log (target `access`) off and leaves the rest at the default.
const ACCESS_LOG_OFF: &str = "info,access=warn";

/// What ingest-api did: the plain run (as shipped, access log on) with its CPU and Redis' (when Redis is
/// local), the run under hostile clients, and a run with the access log off.
struct Relay {
    plain: Measured,
    redis_cpu: Option<Duration>,
    hostile: anyhow::Result<Wrk>,
    log_off: anyhow::Result<Wrk>,
}

/// ingest-api under wrk, then again while hostile clients hold connections; then a fresh ingest-api with
/// the access log off under the same wrk run.
async fn relay_runs(
    env: &Env,
    s: &Settings,
    script: &Script,
    sizes: Sizes,
    redis: &mut redis::Connection,
) -> anyhow::Result<Relay> {
    let ingest = env.start("ingest-api", s, &[]);
    let url = format!("{}/messages", ingest.url());
    let redis_pid = local_redis_pid(redis);
    let cpu_before = (
        cpu_time(ingest.pid()),
        redis_pid.map(cpu_time).unwrap_or_default(),
    );
    // wrk blocks its thread; block_in_place keeps the runtime's other thread for the hostile clients.
    let run = |url: &str, redis: &mut redis::Connection| {
        tokio::task::block_in_place(|| {
            wrk(url, script.path(), sizes.ingest_secs, redis, &s.stream_key)
        })
    };
    let plain = run(&url, redis)?;
    let plain = Measured {
        run: plain,
        cpu: cpu_time(ingest.pid()).saturating_sub(cpu_before.0),
    };
    let redis_cpu = redis_pid.map(|pid| cpu_time(pid).saturating_sub(cpu_before.1));
    let held = hostile_clients(&format!("127.0.0.1:{}", ingest.port)).await?;
    progress("   … again with 16 stalled readers and 16 slow bodies holding connections");
    let hostile = run(&url, redis);
    held.iter().for_each(tokio::task::JoinHandle::abort);
    drop(ingest);
    let quiet = env.start("ingest-api", s, &[("RUST_LOG", ACCESS_LOG_OFF)]);
    progress(format!(
        "   … again on an ingest-api with RUST_LOG={ACCESS_LOG_OFF}"
    ));
    let log_off = run(&format!("{}/messages", quiet.url()), redis);
    Ok(Relay {
        plain,
        redis_cpu,
        hostile,
        log_off,
    })
}

/// CPU µs per accepted request.
fn per_request(cpu: Duration, accepted: u64) -> f64 {
    cpu.as_secs_f64() * 1e6 / accepted.max(1) as f64
}

fn rows(xadd: &Xadd, bare: &Measured, floor: &Floor, relay: Relay) -> Vec<Row> {
    let plain = &relay.plain.run;
    let ratio = plain.rate / xadd.rate;
    let p99_ratio = plain.p99 as f64 / xadd.p99_us as f64;
    let relay_us = per_request(relay.plain.cpu, plain.accepted);
    let bare_us = per_request(bare.cpu, bare.run.accepted);
    let redis_us = relay.redis_cpu.map_or("— (not local)".into(), |cpu| {
        format!("{:.1} µs", per_request(cpu, plain.accepted))
    });
    let mut table = vec![
        Row::new(
            "ingest",
            "accepted POST/s (200 B JSON, 64 conns)",
            format!("{:.0}/s", plain.rate),
        )
        .baseline(
            format!(
                "XADD {:.0}/s (bare actix-web POST {:.0}/s, {:.2}× XADD)",
                xadd.rate,
                bare.run.rate,
                bare.run.rate / xadd.rate
            ),
            ratio,
        )
        .goal("≥ 1.0×", ratio >= 1.0),
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
        .baseline(format!("XADD p99 {}", us(xadd.p99_us)), p99_ratio)
        .goal("p99 ≤ 3×", p99_ratio <= 3.0),
        Row::new(
            "ingest",
            "CPU per accepted POST (user + system)",
            format!("ingest-api {relay_us:.1} µs · Redis {redis_us}"),
        )
        .baseline(
            format!("bare actix-web + JSON check {bare_us:.1} µs"),
            relay_us / bare_us.max(0.001),
        )
        .goal("≤ 1.25×", relay_us / bare_us.max(0.001) <= 1.25),
    ];
    table.extend(floor_rows(floor, &relay.plain, relay.hostile.as_ref().ok()));
    table.push(hostile_row(plain, relay.hostile));
    table.push(access_log_row(plain, relay.log_off));
    table
}

/// ingest-api's own floor: `relay-floor`'s `append` mode (the JSON check, `XADD`, 202 with the id),
/// driven by the same wrk run, then again under the same hostile clients.
struct Floor {
    plain: Measured,
    hostile: anyhow::Result<Wrk>,
}

async fn append_floor(
    env: &Env,
    s: &Settings,
    script: &Script,
    sizes: Sizes,
    redis: &mut redis::Connection,
) -> anyhow::Result<Floor> {
    let floor = env.start_floor("append", s);
    progress("bare POST → XADD → 202 (relay-floor append):");
    let url = format!("{}/messages", floor.url());
    let run = |redis: &mut redis::Connection| {
        tokio::task::block_in_place(|| {
            wrk(&url, script.path(), sizes.ingest_secs, redis, &s.stream_key)
        })
    };
    let cpu = cpu_time(floor.pid());
    let plain = run(redis)?;
    let plain = Measured {
        run: plain,
        cpu: cpu_time(floor.pid()).saturating_sub(cpu),
    };
    let held = hostile_clients(&format!("127.0.0.1:{}", floor.port)).await?;
    progress("   … again with the same hostile clients");
    let hostile = run(redis);
    held.iter().for_each(tokio::task::JoinHandle::abort);
    // Its entries count toward ingest-api's backlog limit, which the runs after it must not meet.
    let _: () = redis::cmd("DEL").arg(&s.stream_key).query(redis)?;
    Ok(Floor { plain, hostile })
}

/// ingest-api's POST latency beside the bare POST → XADD program's, under the same wrk run: p99 against
/// p99 (the goal against XADD's own p99 counts Redis' latency only, not the HTTP a POST needs too).
fn latency_against_floor(relay: &Wrk, floor: &Wrk) -> Row {
    let ratio = relay.p99 as f64 / floor.p99.max(1) as f64;
    Row::new(
        "ingest",
        "POST latency against a bare POST → XADD → 202",
        format!("p99 {}", us(relay.p99)),
    )
    .baseline(
        format!(
            "relay-floor append p50 {} · p99 {}",
            us(floor.p50),
            us(floor.p99)
        ),
        ratio,
    )
    .goal("p99 ≤ 1.5×", ratio <= 1.5)
}

/// ingest-api against a bare program doing the same job (HTTP, the JSON check and an `XADD` per
/// request) on the same two cores: rate, CPU, and what the hostile clients cost each.
fn floor_rows(floor: &Floor, relay: &Measured, relay_hostile: Option<&Wrk>) -> Vec<Row> {
    let (rate, cpu) = (floor.plain.run.rate, &floor.plain);
    let rate_ratio = relay.run.rate / rate;
    let relay_us = per_request(relay.cpu, relay.run.accepted);
    let floor_us = per_request(cpu.cpu, cpu.run.accepted);
    let mut rows = vec![
        Row::new(
            "ingest",
            "accepted POST/s against a bare POST → XADD → 202",
            format!("{:.0}/s", relay.run.rate),
        )
        .baseline(format!("relay-floor append {rate:.0}/s"), rate_ratio)
        .goal("≥ 0.95×", rate_ratio >= 0.95),
        Row::new(
            "ingest",
            "CPU per accepted POST against a bare POST → XADD → 202",
            format!("ingest-api {relay_us:.1} µs"),
        )
        .baseline(
            format!("relay-floor append {floor_us:.1} µs"),
            relay_us / floor_us.max(0.001),
        )
        .goal("≤ 1.25×", relay_us / floor_us.max(0.001) <= 1.25),
        latency_against_floor(&relay.run, &floor.plain.run),
    ];
    let figure = "hostile ÷ plain POST/s, the same hostile clients on the bare POST → XADD";
    rows.push(match (&floor.hostile, relay_hostile) {
        (Ok(h), Some(relay_h)) => {
            let (floor_kept, relay_kept) = (h.rate / rate, relay_h.rate / relay.run.rate);
            Row::new(
                "ingest, hostile",
                figure,
                format!("ingest-api kept {relay_kept:.2}× of its plain rate"),
            )
            .baseline(
                format!("relay-floor append kept {floor_kept:.2}× ({:.0}/s)", h.rate),
                relay_kept / floor_kept,
            )
            .goal("≥ 0.9×", relay_kept / floor_kept >= 0.9)
        }
        (Err(e), _) => Row::failed("ingest, hostile", figure, format!("{e:#}")),
        (Ok(_), None) => Row::failed("ingest, hostile", figure, "ingest-api's run failed".into()),
    });
    rows
}

/// The access log's cost: the plain run (access log on, as shipped) against the same run with it off.
fn access_log_row(on: &Wrk, off: anyhow::Result<Wrk>) -> Row {
    let (scenario, figure) = (
        "ingest, access log",
        "accepted POST/s, access log on (shipped) ÷ off",
    );
    match off {
        Ok(off) => {
            let ratio = on.rate / off.rate;
            Row::new(
                scenario,
                figure,
                format!("{:.0}/s · p99 {}", on.rate, us(on.p99)),
            )
            .baseline(
                format!(
                    "RUST_LOG={ACCESS_LOG_OFF} {:.0}/s · p99 {}",
                    off.rate,
                    us(off.p99)
                ),
                ratio,
            )
            .goal("≥ 0.95×", ratio >= 0.95)
        }
        Err(e) => Row::failed(scenario, figure, format!("{e:#}")),
    }
}

fn hostile_row(plain: &Wrk, hostile: anyhow::Result<Wrk>) -> Row {
    let figure = "accepted POST/s while 16 stalled readers + 16 slow bodies hold connections";
    match hostile {
        Ok(h) => {
            let ratio = h.rate / plain.rate;
            Row::new(
                "ingest, hostile",
                figure,
                format!("{:.0}/s · p99 {}", h.rate, us(h.p99)),
            )
            .baseline(format!("plain run {:.0}/s", plain.rate), ratio)
            .goal("≥ 0.9× (within noise)", ratio >= 0.9)
        }
        Err(e) => Row::failed("ingest, hostile", figure, format!("{e:#}")),
    }
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
