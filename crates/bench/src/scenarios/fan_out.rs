//! fan-out: frames per second and delivery latency to many WebSocket clients, and the gateway's CPU and
//! memory meanwhile.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::ensure;
use testkit::procs::memory_kib;

use super::{histogram, post_open_loop, wall_us, Env};
use crate::report::{latency_summary, Row};
use crate::{progress, ws, Sizes};

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

/// CPU time (user + system) a process has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / 100.0)
}
