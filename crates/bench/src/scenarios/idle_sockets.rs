//! idle sockets: the gateway's memory per open, idle WebSocket connection.

use std::time::Duration;

use anyhow::{ensure, Context};
use testkit::procs::memory_kib;

use super::Env;
use crate::report::Row;
use crate::{progress, ws, Sizes};

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
