//! Channels: publishing over 1,000 channels against `POST /messages` on the same ingest-api in the same
//! run; and routing — 10,000 sockets each on a channel of its own plus 100 on `*` — against a firehose
//! (every socket on `*`) delivering the same frames per second, both measured as the gateway's CPU per
//! frame delivered.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::ensure;
use futures_util::future::try_join_all;

use super::wrk::{body_200, wrk, Script};
use super::{cpu_time, post_open_loop_to, wall_us, Env};
use crate::report::Row;
use crate::{progress, ws, Sizes};

/// Channels the publishing row spreads its posts over.
const PUBLISH_CHANNELS: usize = 1000;

/// The Lua `request` function both runs use after the ingest row's wrk script: to the next of 1,000
/// channels with `channels`, else to `/messages`. Both runs build their requests the same way, so wrk's
/// own cost (a Lua call per request, on the cores the server uses) is the same on both sides.
fn request_function(channels: bool) -> String {
    let path = if channels {
        format!(r#""/channels/c" .. (n % {PUBLISH_CHANNELS}) .. "/messages""#)
    } else {
        r#""/messages""#.to_owned()
    };
    format!(
        r#"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, {path})
end
"#
    )
}

/// `POST /channels/{c}/messages` over 1,000 channels against `POST /messages`, by wrk with 64
/// connections, one run after the other on the same ingest-api.
pub async fn publish_to_channels(env: &Env, sizes: Sizes) -> anyhow::Result<Vec<Row>> {
    super::require("wrk", "apt-get install -y wrk")?;
    let s = env.scenario("channels-publish");
    let body = body_200("channels");
    let plain_script = Script::write("plain", &body, &request_function(false))?;
    let channel_script = Script::write("channels", &body, &request_function(true))?;
    let ingest = env.start("ingest-api", &s, &[]);
    let mut redis = testkit::redis(&s);
    let (plain, channels) = tokio::task::block_in_place(|| -> anyhow::Result<_> {
        let mut run = |script: &Script| {
            wrk(
                &ingest.url(),
                script.path(),
                sizes.ingest_secs,
                &mut redis,
                &s.stream_key,
            )
        };
        Ok((run(&plain_script)?, run(&channel_script)?))
    })?;
    let ratio = channels.rate / plain.rate;
    Ok(vec![Row::new(
        "channels",
        &format!("accepted POST/s over {PUBLISH_CHANNELS} channels (200 B JSON, 64 conns)"),
        format!("{:.0}/s", channels.rate),
    )
    .baseline(format!("POST /messages {:.0}/s", plain.rate), ratio)
    .goal("≥ 0.9× (within noise)", ratio >= 0.9)])
}

/// What one routing run delivered.
struct Routed {
    frames: usize,
    cpu_per_frame_us: f64,
    frames_per_sec: f64,
}

/// 10,000 sockets each on its own channel plus 100 on `*`, 2,000 msg/s spread over the channels; against
/// a firehose of `*` sockets offered the same frames per second, on its own gateway.
pub async fn routing(env: &Env, sizes: Sizes) -> anyhow::Result<Vec<Row>> {
    let (channels, stars, rate) = if sizes.quick {
        (200, 10, 100)
    } else {
        (10_000, 100, 2000)
    };
    let secs = sizes.fanout_secs;
    progress(format!(
        "routing: {channels} sockets on a channel each + {stars} on *, {rate} msg/s over the channels"
    ));
    let mut queries: Vec<String> = (0..channels).map(|c| format!("?channels=r{c}")).collect();
    queries.extend((0..stars).map(|_| "?channels=*".to_owned()));
    let path = move |seq: usize| format!("/channels/r{}/messages", seq % channels);
    let wants = move |socket: usize, seq: usize| socket >= channels || seq % channels == socket;
    let routed = drive(env, "routing", &queries, path, (rate, secs), wants).await?;
    // The firehose at the same frames per second: every frame goes to every socket.
    let per_message = 1 + stars;
    let fire_clients = if sizes.quick { 10 } else { 1000 };
    let fire_rate = (rate as usize * per_message / fire_clients).max(1) as u32;
    progress(format!(
        "firehose: {fire_clients} sockets on *, {fire_rate} msg/s (the same frames/s)"
    ));
    let queries = vec!["?channels=*".to_owned(); fire_clients];
    let path = |_| "/messages".to_owned();
    let firehose = drive(
        env,
        "routing-firehose",
        &queries,
        path,
        (fire_rate, secs),
        |_, _| true,
    )
    .await?;
    let ratio = routed.cpu_per_frame_us / firehose.cpu_per_frame_us.max(f64::MIN_POSITIVE);
    Ok(vec![Row::new(
        "channels",
        &format!(
            "routing: gateway CPU per frame ({channels} sockets on own channels + {stars} on *, {rate} msg/s)"
        ),
        format!(
            "{:.2} µs · {} frames ({:.0}/s)",
            routed.cpu_per_frame_us, routed.frames, routed.frames_per_sec
        ),
    )
    .baseline(
        format!(
            "firehose {:.2} µs · {} frames ({:.0}/s)",
            firehose.cpu_per_frame_us, firehose.frames, firehose.frames_per_sec
        ),
        ratio,
    )
    .goal("≤ 1.2×", ratio <= 1.2)])
}

/// Starts an ingest-api and a gateway of `scenario`'s own, opens one socket per query (100 at a time),
/// posts `rate` msg/s for `secs` (message `seq` to `path(seq)`), and reads until each socket has every message `wants(socket, seq)` says is its own,
/// in stream order and once. Counts the gateway's CPU over the whole delivery.
async fn drive(
    env: &Env,
    scenario: &str,
    queries: &[String],
    path: impl Fn(usize) -> String,
    (rate, secs): (u32, u32),
    wants: impl Fn(usize, usize) -> bool + Copy + Send + Sync + 'static,
) -> anyhow::Result<Routed> {
    let s = env.scenario(scenario);
    let ingest = env.start("ingest-api", &s, &[]);
    let gateway = env.start("push-gateway", &s, &[]);
    let base = ingest.url();
    let post = move |seq: usize| format!("{base}{}", path(seq));
    let addr = format!("127.0.0.1:{}", gateway.port);
    let mut sockets = Vec::with_capacity(queries.len());
    for chunk in queries.chunks(100) {
        sockets.extend(try_join_all(chunk.iter().map(|q| ws::connect_to(&addr, q))).await?);
    }
    let total = (rate * secs) as usize;
    // (frames, problems, last arrival)
    let merged = Arc::new(Mutex::new((0usize, Vec::<String>::new(), 0u64)));
    let mut readers = Vec::with_capacity(sockets.len());
    for (index, mut socket) in sockets.into_iter().enumerate() {
        let merged = Arc::clone(&merged);
        let expected = (0..total).filter(|&seq| wants(index, seq)).count();
        readers.push(tokio::spawn(async move {
            let (mut previous, mut problem, mut last_at) = (None, None, 0);
            let end = ws::read_messages(&mut socket, expected, Duration::from_secs(15), |frame| {
                let (stream_id, seq, _) = ws::frame_fields(frame);
                let mine = seq.is_some_and(|seq| wants(index, seq as usize));
                if (!mine || stream_id.is_none() || stream_id <= previous) && problem.is_none() {
                    problem = Some(format!(
                        "socket {index}: seq {seq:?} not its own, or out of stream order"
                    ));
                }
                previous = stream_id;
                last_at = wall_us();
            })
            .await;
            if end.frames < expected && problem.is_none() {
                problem = Some(format!(
                    "socket {index}: {} of {expected} frames, then close {:?}",
                    end.frames, end.close_code
                ));
            }
            let mut m = merged.lock().unwrap();
            m.0 += end.frames;
            m.1.extend(problem);
            m.2 = m.2.max(last_at);
        }));
    }
    let cpu_before = cpu_time(gateway.pid());
    let started = wall_us();
    let (_, accepted) = post_open_loop_to(post, rate, secs).await?;
    for r in readers {
        r.await?;
    }
    let cpu = cpu_time(gateway.pid()).saturating_sub(cpu_before);
    let (frames, problems, last_at) = std::mem::take(&mut *merged.lock().unwrap());
    ensure!(accepted == total, "{accepted} of {total} posts accepted");
    ensure!(problems.is_empty(), "lost or reordered: {}", problems[0]);
    let secs = last_at.saturating_sub(started) as f64 / 1e6;
    Ok(Routed {
        frames,
        cpu_per_frame_us: cpu.as_secs_f64() * 1e6 / frames.max(1) as f64,
        frames_per_sec: frames as f64 / secs.max(1e-6),
    })
}
