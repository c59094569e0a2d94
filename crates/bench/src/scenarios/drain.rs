//! drain: how fast the persister stores a backlog, against psql `\copy` of the same rows.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::ensure;
use diesel::RunQueryDsl;
use model::redis_stream::xadd_cmd;
use model::{now_micros, StreamEntry};
use service::Settings;
use testkit::db::{count, pg, try_count_rows};

use super::{pad, require, Env};
use crate::report::Row;
use crate::{progress, Sizes};

pub async fn drain(env: &Env, sizes: Sizes) -> anyhow::Result<Vec<Row>> {
    require("psql", "apt-get install -y postgresql-client")?;
    let s = env.scenario_with_database("drain").await?;
    let n = sizes.drain_rows;
    let copy_file = std::env::temp_dir().join(format!("relay-copy-{}.tsv", std::process::id()));
    let copy_secs = match fill(&s, n, &copy_file).await {
        Ok(()) => copy_ceiling(&s, n, &copy_file),
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&copy_file);
    let copy_secs = copy_secs?;
    let drain_secs = persister_drain(env, &s, n).await?;
    let rate = n as f64 / drain_secs;
    let copy_rate = n as f64 / copy_secs;
    let ratio = rate / copy_rate;
    Ok(vec![Row::new(
        "drain",
        &format!("rows/s storing a {n}-entry backlog"),
        format!("{rate:.0}/s"),
    )
    .baseline(format!("psql \\copy {copy_rate:.0}/s"), ratio)
    .goal("≥ 1.1×", ratio >= 1.1)])
}

/// Fills the stream with `n` entries, and `copy_file` with the same rows in `COPY`'s text format.
async fn fill(s: &Settings, n: usize, copy_file: &Path) -> anyhow::Result<()> {
    progress(format!(
        "filling the stream with {n} entries (and a COPY file of the same rows)"
    ));
    let mut file = std::io::BufWriter::new(std::fs::File::create(copy_file)?);
    let client = redis::Client::open(s.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let filler = pad(170);
    for chunk in 0..n.div_ceil(1000) {
        let entries: Vec<StreamEntry> = (chunk * 1000..((chunk + 1) * 1000).min(n))
            .map(|i| StreamEntry {
                id: uuid::Uuid::now_v7(),
                channel: model::ChannelName::default(),
                received_at: now_micros(),
                payload: serde_json::value::RawValue::from_string(format!(
                    "{{\"i\":{i},\"pad\":\"{filler}\"}}"
                ))
                .unwrap(),
                request_id: None,
            })
            .collect();
        let mut pipe = redis::pipe();
        for e in &entries {
            pipe.add_command(xadd_cmd(&s.stream_key, e));
        }
        let ids: Vec<String> = pipe.query_async(&mut conn).await?;
        for (e, id) in entries.iter().zip(ids) {
            let (ms, seq) = id.split_once('-').unwrap();
            writeln!(
                file,
                "{ms}\t{seq}\t{}\t{}\t{}",
                e.id,
                model::format_received_at(&e.received_at),
                e.payload.get()
            )?;
        }
    }
    file.flush()?;
    Ok(())
}

/// The ceiling: psql `\copy` of the same rows into an empty table of the same schema; its seconds.
fn copy_ceiling(s: &Settings, n: usize, copy_file: &Path) -> anyhow::Result<f64> {
    let mut db = pg(&s.database_url)?;
    diesel::sql_query("CREATE TABLE bench_copy (LIKE messages INCLUDING ALL)").execute(&mut db)?;
    progress("psql \\copy of the same rows");
    let started = Instant::now();
    let out = Command::new("psql")
        .arg(&s.database_url)
        .arg("-v")
        .arg("ON_ERROR_STOP=1")
        .arg("-c")
        .arg(format!(
            "\\copy bench_copy (stream_ms, stream_seq, id, received_at, payload) FROM '{}'",
            copy_file.display()
        ))
        .output()?;
    let copy_secs = started.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "psql \\copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copied = count(&mut db, "bench_copy")?;
    ensure!(copied == n as i64, "COPY stored {copied} of {n}");
    diesel::sql_query("DROP TABLE bench_copy").execute(&mut db)?;
    Ok(copy_secs)
}

/// Starts the persister on the filled stream and waits until its metrics count `n` rows stored; checks
/// the table holds `n` rows and nothing is left unacknowledged. Its seconds, from start to the last row.
async fn persister_drain(env: &Env, s: &Settings, n: usize) -> anyhow::Result<f64> {
    progress("persister draining the backlog");
    let started = Instant::now();
    let persister = env.start("persister", s, &[]);
    let metrics_url = format!("{}/metrics", persister.url());
    let stored = || -> u64 {
        reqwest::blocking::get(&metrics_url)
            .and_then(|r| r.text())
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("relay_persister_rows_total ")
                        .and_then(|v| v.parse().ok())
                })
            })
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last_report = Instant::now();
    loop {
        let done = tokio::task::block_in_place(stored);
        if done >= n as u64 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the persister stored {done} of {n} in 600 s"
        );
        if last_report.elapsed() > Duration::from_secs(5) {
            progress(format!("   {done} of {n} stored"));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_secs = started.elapsed().as_secs_f64();
    let rows = try_count_rows(&s.database_url)?;
    ensure!(rows == n as i64, "{rows} rows stored of {n}");
    all_acknowledged(s).await?;
    Ok(drain_secs)
}

/// Fails unless the persister's group has nothing pending. Acks go out right after each commit; the last
/// one gets a moment.
async fn all_acknowledged(s: &Settings) -> anyhow::Result<()> {
    let mut redis = testkit::redis(s);
    let mut pending = || -> anyhow::Result<u64> {
        let (count, _, _, _): (u64, redis::Value, redis::Value, redis::Value) =
            redis::cmd("XPENDING")
                .arg(&s.stream_key)
                .arg(model::PERSISTER_GROUP)
                .query(&mut redis)?;
        Ok(count)
    };
    let before = pending()?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = pending()?;
    ensure!(
        after == 0,
        "{after} entries still unacknowledged (was {before})"
    );
    Ok(())
}
