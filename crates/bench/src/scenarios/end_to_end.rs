//! end to end: POST → WebSocket frame and POST → committed row, at a steady open-loop rate. The frame's
//! latency stands beside a bare POST → XADD → XREAD → WebSocket program (`relay-floor pipeline`) at the
//! same rate in the same run; the row's latency is judged by its own shape (no stall: p99 and p99.9 near
//! p50), and stands beside a bare program committing one single-row `INSERT` per message at the same
//! rate, timed the same way (to the transaction's `now()`): the floor of Postgres' commits on this disk.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use diesel::RunQueryDsl;
use service::Settings;
use testkit::db::{pg, try_count_rows};

/// Latencies in µs.
type Histogram = hdrhistogram::Histogram<u64>;

use super::{histogram, post_open_loop, wall_us, Env};
use crate::report::{latency_summary, us, Row};
use crate::{progress, ws, Sizes};

/// One frame's arrival at the client: the `seq` it carried, when (wall µs), and its stream id.
struct Arrival {
    seq: u64,
    at: u64,
    stream_id: Option<model::StreamId>,
}

/// What an open-loop run delivered to one WebSocket client.
struct Delivered {
    /// Send times by `seq`.
    sent: Vec<u64>,
    arrivals: Vec<Arrival>,
}

/// Connects one client to the WebSocket server on `ws_port`, posts the end-to-end rate to `post_url`
/// open loop, and reads the frames until all arrived or the stream went quiet; fails unless every post
/// was accepted and every frame arrived.
async fn deliver(
    what: &str,
    ws_port: u16,
    post_url: String,
    sizes: Sizes,
) -> anyhow::Result<Delivered> {
    let total = (sizes.e2e_rate * sizes.e2e_secs) as usize;
    let mut socket = ws::connect(&format!("127.0.0.1:{ws_port}")).await?;
    let reader = tokio::spawn(async move {
        let mut arrivals = Vec::with_capacity(total);
        let end = ws::read_messages(&mut socket, total, Duration::from_secs(15), |frame| {
            arrivals.push(Arrival {
                seq: ws::number_after(frame, b"\"seq\":").unwrap_or(u64::MAX),
                at: wall_us(),
                stream_id: ws::stream_id(frame),
            });
        })
        .await;
        (end.frames, arrivals)
    });
    progress(format!(
        "{what}: {} msg/s for {} s, open loop",
        sizes.e2e_rate, sizes.e2e_secs
    ));
    let (sent, accepted) = post_open_loop(post_url, sizes.e2e_rate, sizes.e2e_secs).await?;
    let (frames, arrivals) = reader.await?;
    ensure!(
        accepted == total,
        "{what}: {accepted} of {total} posts accepted"
    );
    ensure!(
        frames == total,
        "{what}: {frames} of {total} frames arrived"
    );
    Ok(Delivered { sent, arrivals })
}

/// POST → frame through the bare pipeline: the floor of Redis in between.
async fn floor_to_frame(env: &Env, sizes: Sizes) -> anyhow::Result<Histogram> {
    let s = env.scenario("e2e-floor");
    let floor = env.start_floor("pipeline", &s);
    let post = format!("{}/messages", floor.url());
    let run = deliver("bare pipeline", floor.port, post, sizes).await?;
    let mut h = histogram();
    for a in run.arrivals {
        let sent = run
            .sent
            .get(a.seq as usize)
            .context("bare pipeline: unknown seq")?;
        h.record(a.at.saturating_sub(*sent).max(1))?;
    }
    Ok(h)
}

/// The floor of POST → committed row: one `INSERT` and its commit per message, open loop at the same
/// rate, one connection, no HTTP or Redis in between. Latency runs from the message's scheduled time (so
/// a commit that falls behind delays the next, as a stalled persister would) to its transaction's
/// `now()`, the clock Relay's `persisted_at` reads.
async fn floor_to_commit(env: &Env, sizes: Sizes) -> anyhow::Result<Histogram> {
    let s = env.scenario_with_database("e2e-commit").await?;
    progress(format!(
        "bare INSERT + COMMIT: {} msg/s for {} s",
        sizes.e2e_rate, sizes.e2e_secs
    ));
    tokio::task::spawn_blocking(move || {
        #[derive(diesel::QueryableByName)]
        struct At {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            at: i64,
        }
        let mut conn = pg(&s.database_url)?;
        diesel::sql_query(
            "CREATE TABLE commit_floor (seq bigint PRIMARY KEY, payload json NOT NULL, \
             at timestamptz NOT NULL DEFAULT now())",
        )
        .execute(&mut conn)?;
        let total = u64::from(sizes.e2e_rate * sizes.e2e_secs);
        let (start, start_wall) = (Instant::now(), wall_us());
        let mut h = histogram();
        for seq in 0..total {
            let offset = Duration::from_secs_f64(seq as f64 / f64::from(sizes.e2e_rate));
            if let Some(wait) = offset.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            let payload = format!("{{\"seq\":{seq},\"pad\":\"{}\"}}", super::pad(120));
            let row: At = diesel::sql_query(
                "INSERT INTO commit_floor (seq, payload) VALUES ($1, $2::json) \
                 RETURNING (extract(epoch FROM at) * 1000000)::bigint AS at",
            )
            .bind::<diesel::sql_types::BigInt, _>(seq as i64)
            .bind::<diesel::sql_types::Text, _>(payload)
            .get_result(&mut conn)?;
            let scheduled = start_wall + offset.as_micros() as u64;
            h.record((row.at as u64).saturating_sub(scheduled).max(1))?;
        }
        Ok(h)
    })
    .await?
}

pub async fn end_to_end(env: &Env, sizes: Sizes) -> anyhow::Result<Vec<Row>> {
    progress("CHECKPOINT: what the earlier scenarios wrote, to disk before measuring");
    env.settle_postgres();
    let floor = floor_to_frame(env, sizes).await?;
    let commits = floor_to_commit(env, sizes).await?;
    let (to_frame, to_row) = relay_latencies(env, sizes).await?;
    Ok(rows(sizes, &floor, &commits, &to_frame, &to_row))
}

/// Relay's POST → frame and POST → committed row, from one run through all three services.
async fn relay_latencies(env: &Env, sizes: Sizes) -> anyhow::Result<(Histogram, Histogram)> {
    let s = env.scenario("e2e");
    let persister = env.start("persister", &s, &[("PERSISTER_BLOCK_MS", "1000")]);
    let ingest = env.start("ingest-api", &s, &[]);
    let gateway = env.start("push-gateway", &s, &[]);
    let total = (sizes.e2e_rate * sizes.e2e_secs) as usize;
    let post = format!("{}/messages", ingest.url());
    let run = deliver("Relay", gateway.port, post, sizes).await?;
    let to_frame = frame_latencies(&run, total)?;
    let to_row = row_latencies(&s, &run.sent, total).await?;
    drop((persister, ingest, gateway));
    Ok((to_frame, to_row))
}

/// POST → frame. Concurrent posts reach the stream in any order; frames must follow the stream's order,
/// and carry every post exactly once.
fn frame_latencies(run: &Delivered, total: usize) -> anyhow::Result<Histogram> {
    let mut to_frame = histogram();
    let mut seen = vec![false; total];
    let mut previous = None;
    for Arrival { seq, at, stream_id } in &run.arrivals {
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
        to_frame.record(at.saturating_sub(run.sent[*seq as usize]).max(1))?;
    }
    Ok(to_frame)
}

/// POST → committed row: each row's `persisted_at` against the time its post was sent, once all `total`
/// rows are in.
async fn row_latencies(s: &Settings, sent: &[u64], total: usize) -> anyhow::Result<Histogram> {
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
    Ok(to_row)
}

fn rows(
    sizes: Sizes,
    floor: &Histogram,
    commits: &Histogram,
    to_frame: &Histogram,
    to_row: &Histogram,
) -> Vec<Row> {
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
    vec![
        Row::new(
            "end to end",
            &format!("POST→WebSocket frame ({figure})"),
            latency_summary(to_frame),
        )
        .baseline(format!("bare pipeline p99 {}", us(floor_p99)), frame_ratio)
        .goal("p99 ≤ 1.2×", frame_ratio <= 1.2),
        Row::new(
            "end to end",
            &format!("POST→committed row ({figure})"),
            latency_summary(to_row),
        )
        .baseline(format!("its own p50; p99.9 {stall_999:.1}× p50"), stall_99)
        .goal(
            "no stall: p99 ≤ 4× p50, p99.9 ≤ 10× p50",
            stall_99 <= 4.0 && stall_999 <= 10.0,
        ),
        Row::new(
            "end to end",
            "POST→committed row, p99.9 against bare commits at the same rate",
            format!("p99 {} · p99.9 {}", us(row_p99), us(row_p999)),
        )
        .baseline(
            format!(
                "bare INSERT + COMMIT {}; p99.9 {:.1}× its p50",
                latency_summary(commits),
                commits.value_at_quantile(0.999) as f64
                    / commits.value_at_quantile(0.5).max(1) as f64
            ),
            row_p999 as f64 / commits.value_at_quantile(0.999).max(1) as f64,
        ),
    ]
}
