//! read all: `GET /messages` of the whole table, against psql `COPY … TO STDOUT`, and ingest-api's peak
//! memory meanwhile; both beside a bare streamed read (`relay-floor read`: one connection, one query,
//! no pages) of the same table in the same run.

use std::process::Command;
use std::time::Instant;

use anyhow::ensure;
use diesel::RunQueryDsl;
use service::Settings;
use testkit::db::pg;
use testkit::procs::{memory_kib, Service};

use super::{require, Env};
use crate::report::Row;
use crate::{progress, Sizes};

pub async fn read_all(env: &Env, sizes: Sizes) -> anyhow::Result<Vec<Row>> {
    require("psql", "apt-get install -y postgresql-client")?;
    let s = env.scenario_with_database("read").await?;
    let n = sizes.read_rows;
    fill_table(&s, n)?;
    let psql_secs = psql_ceiling(&s, n)?;
    // The same-run floor of a streamed read on this stack: one connection, one query, no pages.
    let floor = env.start_floor("read", &s);
    progress("bare streamed read (relay-floor)");
    let bare = get_all(&floor, n).await?;
    drop(floor);
    let ingest = env.start("ingest-api", &s, &[]);
    progress("GET /messages");
    let relay = get_all(&ingest, n).await?;
    let resumed = resume_after(env, &s, ingest, n).await?;
    Ok(rows(n, psql_secs, &bare, &relay, &resumed).into())
}

/// `n` rows in the scenario's table, vacuumed and analysed.
fn fill_table(s: &Settings, n: usize) -> anyhow::Result<()> {
    progress(format!("inserting {n} rows"));
    diesel::sql_query(format!(
        "INSERT INTO messages (stream_ms, stream_seq, id, received_at, payload) \
         SELECT 1700000000000 + i, 0, gen_random_uuid(), now(), json_build_object('i', i, 'pad', repeat('x', 170)) \
         FROM generate_series(1, {n}) AS i"
    ))
    .execute(&mut pg(&s.database_url)?)?;
    diesel::sql_query("VACUUM ANALYZE messages").execute(&mut pg(&s.database_url)?)?;
    Ok(())
}

/// The ceiling: psql `COPY (…) TO STDOUT` of the table, counted by `wc -l`; its seconds.
fn psql_ceiling(s: &Settings, n: usize) -> anyhow::Result<f64> {
    let query = "SELECT stream_ms, stream_seq, id, received_at, payload FROM messages ORDER BY stream_ms, stream_seq";
    progress("psql COPY (…) TO STDOUT");
    let started = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "psql '{}' -v ON_ERROR_STOP=1 -c \"COPY ({query}) TO STDOUT\" | wc -l",
            s.database_url
        ))
        .output()?;
    let psql_secs = started.elapsed().as_secs_f64();
    let lines: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    ensure!(lines == n, "psql returned {lines} rows of {n}");
    Ok(psql_secs)
}

/// Two messages on the stream after the rows, the first trimmed as the persister would have (posted
/// through `ingest`, which is then stopped): a client resuming from 0-0 gets the rows from Postgres, then
/// the stream's entry. One client resumes through a gateway of its own.
async fn resume_after(env: &Env, s: &Settings, ingest: Service, n: usize) -> anyhow::Result<Read> {
    for _ in 0..2 {
        let res = reqwest::Client::new()
            .post(format!("{}/messages", ingest.url()))
            .header("content-type", "application/json")
            .body(r#"{"resume":"bench"}"#)
            .send()
            .await?;
        ensure!(res.status() == 202, "POST answered {}", res.status());
    }
    drop(ingest);
    let _: usize = redis::cmd("XTRIM")
        .arg(&s.stream_key)
        .arg("MAXLEN")
        .arg(1)
        .query(&mut testkit::redis(s))?;
    let gateway = env.start("push-gateway", s, &[]);
    progress("resume from history: one client, since 0-0");
    resume_all(&gateway, n + 1).await
}

fn rows(n: usize, psql_secs: f64, bare: &Read, relay: &Read, resumed: &Read) -> [Row; 3] {
    let relay_secs = relay.secs;
    let ratio = psql_secs / relay_secs;
    let resume_ratio = relay_secs / resumed.secs;
    [
        Row::new(
            "read all",
            &format!("resume from history: one WebSocket from 0-0, {n} messages from Postgres"),
            format!(
                "{:.2} s ({:.0} msg/s) · gateway peak RSS {:.1} MiB",
                resumed.secs,
                n as f64 / resumed.secs,
                resumed.peak_kib as f64 / 1024.0
            ),
        )
        .baseline(
            format!(
                "GET /messages {relay_secs:.2} s ({:.0} rows/s)",
                n as f64 / relay_secs
            ),
            resume_ratio,
        )
        .goal("≥ 0.8×", resume_ratio >= 0.8),
        Row::new(
            "read all",
            &format!("GET /messages of {n} rows"),
            format!(
                "{relay_secs:.2} s ({:.0} rows/s, {} MiB)",
                n as f64 / relay_secs,
                relay.bytes >> 20
            ),
        )
        .baseline(
            format!(
                "psql COPY TO STDOUT {psql_secs:.2} s (bare streamed read {:.2} s, {:.2}×)",
                bare.secs,
                psql_secs / bare.secs
            ),
            ratio,
        )
        .goal("≥ 1.2×", ratio >= 1.2),
        Row::new(
            "read all",
            "ingest-api peak RSS",
            format!("{:.1} MiB", relay.peak_kib as f64 / 1024.0),
        )
        .baseline(
            format!(
                "bare streamed read {:.1} MiB",
                bare.peak_kib as f64 / 1024.0
            ),
            relay.peak_kib as f64 / bare.peak_kib.max(1) as f64,
        )
        .goal("≤ 16 MiB", relay.peak_kib <= 16 * 1024),
    ]
}

/// One full read over HTTP.
struct Read {
    secs: f64,
    bytes: usize,
    /// The server's peak RSS (its high-water mark since it started), KiB.
    peak_kib: u64,
}

/// `GET /messages` of the whole table from `server`, counting the messages as they arrive; fails unless there
/// are `n`.
async fn get_all(server: &Service, n: usize) -> anyhow::Result<Read> {
    let started = Instant::now();
    let mut res = reqwest::get(format!("{}/messages", server.url())).await?;
    ensure!(
        res.status() == 200,
        "GET /messages answered {}",
        res.status()
    );
    // Counting messages costs the client about what `wc -l` costs psql's: a SIMD substring search (a
    // byte-by-byte window compare took ~0.4 s of the 2 shared cores during the read it measures), and
    // only a key's first bytes are carried over a chunk boundary.
    let (mut items, mut bytes) = (0usize, 0usize);
    const KEY: &[u8] = b"{\"id\":\"";
    let finder = memchr::memmem::Finder::new(KEY);
    // The body's last KEY.len() - 1 bytes so far: a key cut by a chunk boundary starts there.
    let mut tail: Vec<u8> = Vec::new();
    let mut seam = Vec::new();
    while let Some(chunk) = res.chunk().await? {
        bytes += chunk.len();
        seam.clear();
        seam.extend_from_slice(&tail);
        seam.extend_from_slice(&chunk[..chunk.len().min(KEY.len() - 1)]);
        items += finder.find_iter(&seam).count() + finder.find_iter(&chunk).count();
        tail.extend_from_slice(&chunk[chunk.len().saturating_sub(KEY.len() - 1)..]);
        tail.drain(..tail.len().saturating_sub(KEY.len() - 1));
    }
    let secs = started.elapsed().as_secs_f64();
    let (_, peak_kib) = memory_kib(server.pid());
    ensure!(
        items == n,
        "GET /messages of {} returned {items} messages of {n}",
        server.url()
    );
    Ok(Read {
        secs,
        bytes,
        peak_kib,
    })
}

/// One client resuming from `0-0` until `n` message frames arrived, each after the last.
async fn resume_all(gateway: &Service, n: usize) -> anyhow::Result<Read> {
    let addr = format!("127.0.0.1:{}", gateway.port);
    let started = Instant::now();
    let mut socket = crate::ws::connect_to(&addr, "?since=0-0").await?;
    let (mut previous, mut ordered, mut bytes) = (None, true, 0);
    let end = crate::ws::read_messages(
        &mut socket,
        n,
        std::time::Duration::from_secs(15),
        |frame| {
            let id = crate::ws::stream_id(frame);
            ordered &= id.is_some() && id > previous;
            previous = id;
            bytes += frame.len();
        },
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    ensure!(
        end.frames == n,
        "resumed {} of {n} messages, then close {:?}",
        end.frames,
        end.close_code
    );
    ensure!(ordered, "resumed out of stream order");
    let (_, peak_kib) = memory_kib(gateway.pid());
    Ok(Read {
        secs,
        bytes,
        peak_kib,
    })
}
