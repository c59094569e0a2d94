//! idle sockets: the gateway's memory per open, idle WebSocket connection, and whether it holds the
//! number asked for. When the machine refuses a connection (open files, ports, memory), the row says so
//! and how many were held, and the figure is per connection actually held.

use std::time::Duration;

use anyhow::ensure;
use testkit::procs::memory_kib;

use super::Env;
use crate::report::Row;
use crate::{progress, ws, Sizes};

/// Sockets closed after a refusal so that the gateway has descriptors to answer `/metrics` with.
const RELEASED: usize = 100;

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
    let mut refused = None;
    'open: for chunk in 0..sizes.idle_sockets.div_ceil(500) {
        // Each source address of 127.0.0.0/8 has ~28,000 ephemeral ports: spread over several.
        let from = std::net::Ipv4Addr::new(127, 0, 0, 1 + (chunk / 40) as u8);
        let batch = (chunk * 500..((chunk + 1) * 500).min(sizes.idle_sockets)).map(|_| async {
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
    let held = keepers.len();
    let measured = held;
    if let Some(why) = &refused {
        progress(format!("the machine refused socket {}: {why}", held + 1));
    }
    ensure!(held > 0, "no idle socket could be opened: {refused:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after, _) = memory_kib(gateway.pid());
    let per = (after.saturating_sub(before)) as f64 / held.max(1) as f64;
    // A gateway out of descriptors cannot answer /metrics either: give a few back before asking.
    let mut held = held;
    if refused.is_some() {
        for keeper in keepers.drain(held.saturating_sub(RELEASED)..) {
            keeper.abort();
        }
        held = keepers.len();
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
    ensure!(
        clients == held + 1,
        "the gateway holds {clients} clients, not {}",
        held + 1
    );
    keepers.iter().for_each(tokio::task::JoinHandle::abort);
    warm.abort();
    drop(gateway);
    let all_held = refused.is_none();
    let limit = refused.map_or(String::new(), |why| {
        format!(
            " — the machine refused more ({}; open files: {})",
            why.chars().take(80).collect::<String>(),
            open_files_limit()
        )
    });
    Ok(vec![
        Row::new(
            "idle sockets",
            &format!("gateway RSS per idle connection ({measured} held)"),
            format!("{per:.1} KiB"),
        )
        .goal("≤ 10 KiB", per <= 10.0),
        Row::new(
            "idle sockets",
            "idle WebSockets held",
            format!("{measured} of {}{limit}", sizes.idle_sockets),
        )
        .goal(&format!("{} held", sizes.idle_sockets), all_held),
    ])
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
