//! fan-out: frames per second and delivery latency to many WebSocket clients, against a bare broadcast
//! server (`relay-floor`, actix-ws, each frame encoded once, no Redis) driven by the same clients at the
//! same offered loads in the same run; and the gateway's CPU and memory meanwhile, beside the bare server's.
//!
//! Above what the machine can carry both shed slow clients. The count check holds either way: every
//! client gets every frame, in stream order and once, or is closed with 1013 (counted in the row); any
//! other ending fails the row.

use std::time::Duration;

use anyhow::ensure;
use hdrhistogram::Histogram;
use testkit::procs::{memory_kib, Service};

use super::{cpu_time, histogram, post_open_loop, wall_us, Env};
use crate::report::{latency_summary, us, Row};
use crate::{progress, ws, Sizes};

/// What one run of the load delivered.
struct Delivered {
    frames: usize,
    /// Clients closed with 1013 for falling behind.
    shed: usize,
    rate: f64,
    latency: Histogram<u64>,
    cpu_percent: f64,
    rss_kib: (u64, u64),
}

/// The loads of the full run (msg/s); the quick run uses its one small rate.
const LOADS: [u32; 2] = [1000, 2000];

pub async fn fan_out(env: &Env, sizes: Sizes) -> anyhow::Result<Vec<Row>> {
    let loads: Vec<u32> = if sizes.quick {
        vec![sizes.fanout_rate]
    } else {
        LOADS.to_vec()
    };
    let mut rows = Vec::new();
    for rate in loads {
        let figure = format!(
            "{} clients × {rate} msg/s × {} s",
            sizes.fanout_clients, sizes.fanout_secs
        );
        progress(format!("bare broadcast: {figure}"));
        let floor = {
            let server = env.start_floor("broadcast", &env.scenario("fanout-floor"));
            let ws_addr = format!("127.0.0.1:{}", server.port);
            let post = format!("{}/messages", server.url());
            drive(&server, &ws_addr, post, sizes, rate).await?
        };
        progress(format!("Relay: {figure}"));
        let relay = {
            let s = env.scenario("fanout");
            let ingest = env.start("ingest-api", &s, &[]);
            let gateway = env.start("push-gateway", &s, &[]);
            let ws_addr = format!("127.0.0.1:{}", gateway.port);
            let post = format!("{}/messages", ingest.url());
            drive(&gateway, &ws_addr, post, sizes, rate).await?
        };
        rows.extend(load_rows(&figure, rate, &floor, &relay));
    }
    Ok(rows)
}

/// The rows of one load: frames/s, latency, CPU per frame and peak RSS, each beside the bare server's.
fn load_rows(figure: &str, rate: u32, floor: &Delivered, relay: &Delivered) -> [Row; 4] {
    let ratio = relay.rate / floor.rate;
    let (p99, floor_p99) = (
        relay.latency.value_at_quantile(0.99),
        floor.latency.value_at_quantile(0.99),
    );
    let p99_ratio = p99 as f64 / floor_p99.max(1) as f64;
    // CPU per frame delivered, so that shedding fewer clients (more frames) is not counted as cost.
    let per_frame = |d: &Delivered| d.cpu_percent / d.rate.max(1.0);
    let cpu_ratio = per_frame(relay) / per_frame(floor).max(f64::MIN_POSITIVE);
    let peak_ratio = relay.rss_kib.1 as f64 / floor.rss_kib.1.max(1) as f64;
    let rss = |d: &Delivered| {
        format!(
            "{} MiB (at the end {} MiB)",
            d.rss_kib.1 / 1024,
            d.rss_kib.0 / 1024
        )
    };
    [
        Row::new(
            "fan-out",
            &format!("frames/s ({figure})"),
            format!("{:.0}/s ({} clients shed)", relay.rate, relay.shed),
        )
        .baseline(
            format!("bare broadcast {:.0}/s ({} shed)", floor.rate, floor.shed),
            ratio,
        )
        .goal("≥ 0.95×", ratio >= 0.95),
        Row::new(
            "fan-out",
            &format!("delivery latency ({rate} msg/s)"),
            latency_summary(&relay.latency),
        )
        .baseline(format!("bare p99 {}", us(floor_p99)), p99_ratio)
        .goal("p99 ≤ 1.5×", p99_ratio <= 1.5),
        Row::new(
            "fan-out",
            &format!("gateway CPU per frame delivered ({rate} msg/s)"),
            format!(
                "{:.0}% of a core · {} frames",
                relay.cpu_percent, relay.frames
            ),
        )
        .baseline(
            format!(
                "bare {:.0}% of a core · {} frames",
                floor.cpu_percent, floor.frames
            ),
            cpu_ratio,
        ),
        Row::new(
            "fan-out",
            &format!("gateway peak RSS ({rate} msg/s)"),
            rss(relay),
        )
        .baseline(format!("bare {}", rss(floor)), peak_ratio),
    ]
}

/// What one client read.
struct ClientRead {
    latency: Histogram<u64>,
    frames: usize,
    /// Closed with 1013 for falling behind.
    shed: bool,
    /// The first thing wrong: a frame lost, twice, or out of order, or another ending than 1013.
    problem: Option<String>,
    /// When its last frame arrived (wall µs).
    last_at: u64,
}

/// Reads client `client`'s frames until it has all `total`, or the server closed it.
async fn read_client(client: usize, mut socket: ws::Socket, total: usize) -> ClientRead {
    let mut latency = histogram();
    let mut seen = vec![false; total];
    let mut previous = None;
    let mut problem = None;
    let mut last_at = 0;
    let end = ws::read_messages(&mut socket, total, Duration::from_secs(15), |frame| {
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
            let _ = latency.record(last_at.saturating_sub(t).max(1));
        }
    })
    .await;
    let shed = end.frames < total && end.close_code == Some(1013);
    if end.frames < total && !shed && problem.is_none() {
        problem = Some(format!(
            "client {client}: {} of {total} frames, then {}",
            end.frames,
            end.close_code.map_or("no close frame".into(), |c| format!(
                "closed with {c}, not 1013"
            ))
        ));
    }
    ClientRead {
        latency,
        frames: end.frames,
        shed,
        problem,
        last_at,
    }
}

/// Connects the clients to `ws_addr`, posts `rate` msg/s to `post_url` open loop, and reads until every
/// client has every frame or was closed with 1013. `server` is the process whose CPU is counted.
async fn drive(
    server: &Service,
    ws_addr: &str,
    post_url: String,
    sizes: Sizes,
    rate: u32,
) -> anyhow::Result<Delivered> {
    let total = (rate * sizes.fanout_secs) as usize;
    let mut readers = Vec::with_capacity(sizes.fanout_clients);
    for client in 0..sizes.fanout_clients {
        let socket = ws::connect(ws_addr).await?;
        readers.push(tokio::spawn(read_client(client, socket, total)));
    }
    let cpu_before = cpu_time(server.pid());
    let started_wall = wall_us();
    let (_, accepted) = post_open_loop(post_url, rate, sizes.fanout_secs).await?;
    let (mut latency, mut frames, mut shed, mut problems, mut last_at) =
        (histogram(), 0, 0, Vec::new(), 0);
    for r in readers {
        let read = r.await?;
        latency.add(&read.latency)?;
        frames += read.frames;
        shed += usize::from(read.shed);
        problems.extend(read.problem);
        last_at = last_at.max(read.last_at);
    }
    let cpu = cpu_time(server.pid()).saturating_sub(cpu_before);
    let rss_kib = memory_kib(server.pid());
    ensure!(accepted == total, "{accepted} of {total} posts accepted");
    ensure!(problems.is_empty(), "lost or reordered: {}", problems[0]);
    let secs = (last_at.saturating_sub(started_wall)) as f64 / 1e6;
    Ok(Delivered {
        frames,
        shed,
        rate: frames as f64 / secs,
        latency,
        cpu_percent: cpu.as_secs_f64() / secs * 100.0,
        rss_kib,
    })
}
