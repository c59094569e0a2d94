//! idle sockets: the gateway's memory per open, idle WebSocket connection, and whether it holds the
//! number asked for, beside a bare actix-ws server (`relay-floor`) holding the same in the same run.
//! When the machine refuses a connection (open files, ports, memory), the row says so and how many were
//! held, and the figure is per connection actually held.

use std::time::Duration;

use anyhow::ensure;
use service::Settings;
use testkit::procs::{memory_kib, Service};

use super::Env;
use crate::report::Row;
use crate::{progress, ws, Sizes};

/// Sockets closed after a refusal so that the gateway has descriptors to answer `/metrics` with.
const RELEASED: usize = 100;

pub async fn idle_sockets(env: &Env, sizes: Sizes) -> anyhow::Result<Vec<Row>> {
    let s = env.scenario("idle");
    // The same-run ceiling: a bare actix-ws server (`relay-floor`) holding as many idle sockets.
    let floor = env.start_floor("broadcast", &s);
    progress("bare actix-ws server:");
    let bare = hold_idle(&floor, sizes.idle_sockets).await?;
    bare.keepers.iter().for_each(tokio::task::JoinHandle::abort);
    bare.warm.abort();
    drop(floor);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let gateway = gateway_held(env, &s, sizes).await?;
    Ok(rows(sizes, &bare, &gateway).into())
}

/// The gateway holding the idle sockets; checks its own count of clients matches what is held.
async fn gateway_held(env: &Env, s: &Settings, sizes: Sizes) -> anyhow::Result<Held> {
    let gateway = env.start("push-gateway", s, &[]);
    progress("push-gateway:");
    let mut held = hold_idle(&gateway, sizes.idle_sockets).await?;
    // A gateway out of descriptors cannot answer /metrics either: give a few back before asking.
    if held.refused.is_some() {
        for keeper in held.keepers.drain(held.measured.saturating_sub(RELEASED)..) {
            keeper.abort();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The gateway's own count of open clients (`/readyz` no longer reports it; `/metrics` does).
    let metrics = reqwest::get(format!("{}/metrics", gateway.url()))
        .await?
        .text()
        .await?;
    let clients = metrics
        .lines()
        .find_map(|l| l.strip_prefix("relay_gateway_connections "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as usize;
    let open = held.keepers.len();
    ensure!(
        clients == open + 1,
        "the gateway holds {clients} clients, not {}",
        open + 1
    );
    held.keepers.iter().for_each(tokio::task::JoinHandle::abort);
    held.warm.abort();
    Ok(held)
}

fn rows(sizes: Sizes, bare: &Held, gateway: &Held) -> [Row; 2] {
    let (per, measured) = (gateway.per, gateway.measured);
    let limit = gateway.refused.as_ref().map_or(String::new(), |why| {
        format!(
            " — the machine refused more ({}; open files: {})",
            why.chars().take(80).collect::<String>(),
            open_files_limit()
        )
    });
    let held_ratio = measured as f64 / bare.measured.max(1) as f64;
    [
        Row::new(
            "idle sockets",
            "gateway RSS per idle connection",
            format!("{per:.1} KiB ({measured} held)"),
        )
        .baseline(
            format!(
                "bare actix-ws server {:.1} KiB ({} held)",
                bare.per, bare.measured
            ),
            per / bare.per.max(0.1),
        )
        .goal("≤ 10 KiB", per <= 10.0),
        Row::new(
            "idle sockets",
            "idle WebSockets held",
            format!("{measured} of {}{limit}", sizes.idle_sockets),
        )
        .baseline(
            format!("bare actix-ws server {}", bare.measured),
            held_ratio,
        )
        // Under the same open-files limit as the bare server, or all of them where the limit allows.
        .goal(
            "≥ 0.95× bare, or all",
            gateway.refused.is_none() || held_ratio >= 0.95,
        ),
    ]
}

/// Idle sockets held open against one server, and what they cost it.
struct Held {
    /// The server's RSS growth per socket, KiB.
    per: f64,
    /// Sockets opened (and measured).
    measured: usize,
    /// Why the machine refused the next one, if it did.
    refused: Option<String>,
    /// The tasks reading each socket: aborting one closes it.
    keepers: Vec<tokio::task::JoinHandle<()>>,
    /// The warm-up connection's reader.
    warm: tokio::task::JoinHandle<()>,
}

/// The third octet of the next [`hold_idle`]'s source addresses (127.0.<block>.x).
static SOURCE_BLOCK: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);

/// Opens up to `n` idle WebSockets to `server` (after one warm-up connection, so allocator and runtime
/// start-up costs are not counted per socket), and measures its RSS growth per socket.
async fn hold_idle(server: &Service, n: usize) -> anyhow::Result<Held> {
    let addr = format!("127.0.0.1:{}", server.port);
    let mut warm = ws::connect(&addr).await?;
    let warm = tokio::spawn(async move {
        while let Some(Ok(_)) = futures_util::StreamExt::next(&mut warm).await {}
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, _) = memory_kib(server.pid());
    progress(format!("opening {n} idle WebSocket connections"));
    // Idle, not dead: each socket is read from the moment it opens (so pings are answered), as a browser
    // tab's would be.
    let mut keepers = Vec::with_capacity(n);
    let mut refused = None;
    // Each source address of 127.0.0.0/8 has ~28,000 ephemeral ports: spread over several, and a block
    // of its own for each call. The ports the last call closed wait a minute in TIME_WAIT, and an
    // explicit bind cannot take them: from the same addresses, the bare server's 16,660 sockets had left
    // Relay's run only ~10,000 (`Address already in use`).
    let block = SOURCE_BLOCK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    'open: for chunk in 0..n.div_ceil(500) {
        let from = std::net::Ipv4Addr::new(127, 0, block, 1 + (chunk / 40) as u8);
        let batch = (chunk * 500..((chunk + 1) * 500).min(n)).map(|_| async {
            // A server out of descriptors leaves the connection in its accept queue: without a
            // deadline the refusal would be a hang.
            tokio::time::timeout(Duration::from_secs(10), ws::connect_from(&addr, from))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no handshake within 10 s")))
        });
        for socket in futures_util::future::join_all(batch).await {
            match socket {
                Ok(mut socket) => keepers.push(tokio::spawn(async move {
                    while let Some(Ok(_)) = futures_util::StreamExt::next(&mut socket).await {}
                })),
                Err(e) => {
                    refused = Some(format!("{e:#}"));
                    break 'open;
                }
            }
        }
    }
    let measured = keepers.len();
    if let Some(why) = &refused {
        progress(format!(
            "the machine refused socket {}: {why}",
            measured + 1
        ));
    }
    ensure!(measured > 0, "no idle socket could be opened: {refused:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after, _) = memory_kib(server.pid());
    let per = (after.saturating_sub(before)) as f64 / measured.max(1) as f64;
    Ok(Held {
        per,
        measured,
        refused,
        keepers,
        warm,
    })
}

/// This process's open-files limit (soft/hard), as the kernel reports it; the services inherit it.
fn open_files_limit() -> String {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| {
                    l.split_whitespace()
                        .skip(3)
                        .take(2)
                        .collect::<Vec<_>>()
                        .join("/")
                })
        })
        .unwrap_or_else(|| "unknown".into())
}
