//! cold start: seconds from process start to the first `/readyz` 200, for each service, against the same
//! for `relay-floor` (a bare actix-web binary that is ready as soon as it listens), measured the same way.
//!
//! Each process gets a port chosen beforehand and `/readyz` is polled every millisecond, so the figure is
//! the process's own time and not a poll interval. The persister's database is created and migrated
//! beforehand: the row is start-up, not a first deploy's migration. Each program starts as shipped, with
//! no `RUST_LOG` (the services log at `info`, their start-up lines included; `relay-floor` reads none).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use testkit::procs::{bin_path, free_port, with_env};

use super::Env;
use crate::report::Row;
use crate::{progress, Sizes};

/// Tries per program; the median is reported (start-up on a shared machine is noisy).
const TRIES: usize = 5;

pub async fn cold_start(env: &Env, sizes: Sizes) -> anyhow::Result<Vec<Row>> {
    let s = env.scenario_with_database("cold").await?;
    let tries = if sizes.quick { 1 } else { TRIES };
    let base = testkit::procs::env_for(&s);
    let floor = median_start("relay-floor", "FLOOR_ADDR", &base, tries).await?;
    let mut rows = Vec::new();
    for (service, addr_var) in [
        ("ingest-api", "INGEST_ADDR"),
        ("persister", "PERSISTER_ADDR"),
        ("push-gateway", "GATEWAY_ADDR"),
    ] {
        let secs = median_start(service, addr_var, &base, tries).await?;
        let ratio = secs / floor;
        rows.push(
            Row::new(
                "cold start",
                &format!("{service}: start → /readyz 200 (median of {tries})"),
                format!("{:.1} ms", secs * 1e3),
            )
            .baseline(format!("bare actix binary {:.1} ms", floor * 1e3), ratio),
        );
    }
    Ok(rows)
}

async fn median_start(
    program: &'static str,
    addr_var: &str,
    base: &[(&'static str, String)],
    tries: usize,
) -> anyhow::Result<f64> {
    progress(format!("starting {program} {tries} times"));
    let mut times = Vec::with_capacity(tries);
    for _ in 0..tries {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let env = with_env(base, &[(addr_var, &addr)]);
        let url = format!("http://{addr}/readyz");
        let client = reqwest::Client::new();
        let mut cmd = Command::new(bin_path(program));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let started = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("starting {program}"))?;
        let ready = loop {
            if client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break Some(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(30) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let _ = child.kill();
        let _ = child.wait();
        let ready = ready.with_context(|| format!("{program} was not ready within 30 s"))?;
        times.push(ready.as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    ensure!(!times.is_empty(), "no start measured");
    Ok(times[times.len() / 2])
}
