//! end to end: POST → WebSocket frame and POST → committed row, at a steady open-loop rate. The frame's
//! latency stands beside a bare POST → XADD → XREAD → WebSocket program (`relay-floor pipeline`) at the
//! same rate in the same run; the row's latency is judged by its own shape (no stall: p99 and p99.9 near
//! p50), since no bare program stores rows the way the persister must.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use diesel::RunQueryDsl;
use testkit::db::{pg, try_count_rows};

use super::{histogram, post_open_loop, wall_us, Env};
use crate::report::{latency_summary, us, Row};
use crate::{progress, ws, Sizes};

/// POST → frame through the bare pipeline: the floor of Redis in between.
async fn floor_to_frame(env: &Env, sizes: Sizes) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let s = env.scenario("e2e-floor");
    let floor = env.start_floor("pipeline", &s);
    let total = (sizes.e2e_rate * sizes.e2e_secs) as usize;
    let mut socket = ws::connect(&format!("127.0.0.1:{}", floor.port)).await?;
    let reader = tokio::spawn(async move {
        let mut arrivals = Vec::with_capacity(total);
        let end = ws::read_messages(&mut socket, total, Duration::from_secs(15), |frame| {
            arrivals.push((
                ws::number_after(frame, b"\"seq\":").unwrap_or(u64::MAX),
                wall_us(),
            ));
        })
        .await;
        (end.frames, arrivals)
    });
    progress(format!(
        "bare pipeline: {} msg/s for {} s",
        sizes.e2e_rate, sizes.e2e_secs
    ));
    let (sent, accepted) = post_open_loop(
        format!("{}/messages", floor.url()),
        sizes.e2e_rate,
        sizes.e2e_secs,
    )
    .await?;
    let (frames, arrivals) = reader.await?;
    ensure!(
        accepted == total && frames == total,
        "bare pipeline: {accepted} posts accepted, {frames} frames of {total}"
    );
    let mut h = histogram();
    for (seq, at) in arrivals {
        let sent = sent
            .get(seq as usize)
            .context("bare pipeline: unknown seq")?;
        h.record(at.saturating_sub(*sent).max(1))?;
    }
    Ok(h)
}

pub async fn end_to_end(env: &Env, sizes: Sizes) -> anyhow::Result<Vec<Row>> {
    progress("CHECKPOINT: what the earlier scenarios wrote, to disk before measuring");
    env.settle_postgres();
    let floor = floor_to_frame(env, sizes).await?;
    let s = env.scenario("e2e");
    let persister = env.start("persister", &s, &[("PERSISTER_BLOCK_MS", "1000")]);
    let ingest = env.start("ingest-api", &s, &[]);
    let gateway = env.start("push-gateway", &s, &[]);
    let total = (sizes.e2e_rate * sizes.e2e_secs) as usize;
    let mut socket = ws::connect(&format!("127.0.0.1:{}", gateway.port)).await?;
    let reader = tokio::spawn(async move {
        let mut arrivals: Vec<(u64, u64, Option<model::StreamId>)> = Vec::with_capacity(total);
        let end = ws::read_messages(&mut socket, total, Duration::from_secs(15), |frame| {
            let seq = ws::number_after(frame, b"\"seq\":").unwrap_or(u64::MAX);
            arrivals.push((seq, wall_us(), ws::stream_id(frame)));
        })
        .await;
        (end.frames, arrivals)
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
    while try_count_rows(&s.database_url)? < total as i64 {
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
    let floor_p99 = floor.value_at_quantile(0.99);
    let frame_ratio = frame_p99 as f64 / floor_p99.max(1) as f64;
    let (row_p50, row_p99, row_p999) = (
        to_row.value_at_quantile(0.5).max(1),
        to_row.value_at_quantile(0.99),
        to_row.value_at_quantile(0.999),
    );
    let (stall_99, stall_999) = (
        row_p99 as f64 / row_p50 as f64,
        row_p999 as f64 / row_p50 as f64,
    );
    let figure = format!("{} msg/s × {} s", sizes.e2e_rate, sizes.e2e_secs);
    Ok(vec![
        Row::new(
            "end to end",
            &format!("POST→WebSocket frame ({figure})"),
            latency_summary(&to_frame),
        )
        .baseline(format!("bare pipeline p99 {}", us(floor_p99)), frame_ratio)
        .goal("p99 ≤ 1.2×", frame_ratio <= 1.2),
        Row::new(
            "end to end",
            &format!("POST→committed row ({figure})"),
            latency_summary(&to_row),
        )
        .baseline(format!("its own p50; p99.9 {stall_999:.1}× p50"), stall_99)
        .goal(
            "no stall: p99 ≤ 4× p50, p99.9 ≤ 10× p50",
            stall_99 <= 4.0 && stall_999 <= 10.0,
        ),
    ])
}
