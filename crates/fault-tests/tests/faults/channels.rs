//! Channels under faults: a load spread over several channels through a persister killed with SIGKILL
//! and a Redis crash and restart. Each channel's messages are stored exactly once and read back in
//! order, the channels table agrees with the rows, and a subscriber resumed from before the trim gets
//! every message of its pattern from Postgres and then the stream, once, in order.

use std::collections::HashMap;
use std::time::Duration;

use testkit::procs::{env_for, wait_until, with_env, OwnRedis, Service};
use testkit::Cleanup;

use crate::load::{assert_exactly_once, prepare_logged_database, PostLog, Poster};
use crate::DRAIN;

const CHANNELS: [&str; 3] = ["chat.a", "chat.b", "news"];

fn channel_path(n: usize) -> String {
    format!("/channels/{}/messages", CHANNELS[n % CHANNELS.len()])
}

#[test]
fn a_mixed_channel_load_through_a_sigkilled_persister_and_a_redis_restart_is_stored_once_per_channel_and_resumable(
) {
    let mut redis_server = OwnRedis::start();
    let mut settings = testkit::test_settings();
    settings.redis_url = redis_server.url();
    let _cleanup = Cleanup(settings.clone());
    // A short stream retention, so the resumed subscriber below needs Postgres for most of its history.
    // Entries whose acknowledgement the crash lost are claimed again after 2 s, not the default wait.
    let env = with_env(
        &env_for(&settings),
        &[("STREAM_RETENTION", "200"), ("CLAIM_IDLE_MS", "2000")],
    );
    prepare_logged_database(&settings.database_url);
    let persister = Service::start("persister", &env);
    let ingest = Service::start("ingest-api", &env);
    let url = ingest.url();
    let poster = Poster::start_to(move || url.clone(), 4000, 500, 4, channel_path);

    std::thread::sleep(Duration::from_secs(2));
    persister.kill();
    std::thread::sleep(Duration::from_secs(1));
    let persister = Service::start("persister", &env);
    std::thread::sleep(Duration::from_secs(1));
    redis_server.crash();
    std::thread::sleep(Duration::from_secs(2));
    redis_server.restart();
    let log = poster.finish(false);
    assert!(
        log.failed.is_empty(),
        "posts failed other than with 503 + Retry-After: {:?}",
        log.failed.first()
    );
    assert!(log.refused > 0, "no post saw the Redis outage");
    assert!(log.accepted.len() > 3000, "{} accepted", log.accepted.len());
    assert_exactly_once(&settings.database_url, &log.accepted, false, DRAIN);
    // Reads show only what can no longer change (below the oldest pending entry): once nothing is
    // pending, that is everything.
    let mut redis = testkit::redis(&settings);
    wait_until("nothing pending in the group", DRAIN, || {
        testkit::pending(&settings) == 0
    });

    // Each channel, read back: exactly its accepted messages, each once, in stream order; the channels
    // table (kept in the persister's transactions, through the kill) agrees.
    let stored = read_back_each_channel(&ingest, &log);

    // The persister trims down to STREAM_RETENTION once everything is stored.
    wait_until("the stream to be trimmed", Duration::from_secs(20), || {
        redis::cmd("XLEN")
            .arg(&settings.stream_key)
            .query::<usize>(&mut redis)
            .is_ok_and(|len| len <= 200)
    });
    // A subscriber resumed from before the first message gets every `chat.*` message, from Postgres
    // and then the stream, once, in stream order, and nothing of `news`.
    let gateway = Service::start("push-gateway", &env);
    assert_every_chat_message_once_in_order_from_the_start(&gateway, &stored);
    drop((persister, gateway));
}

/// Each channel read back through ingest-api: exactly the messages `log` got accepted on it, each once,
/// in stream order, and `GET /channels` agrees with the rows. The rows of each channel.
fn read_back_each_channel(
    ingest: &Service,
    log: &PostLog,
) -> HashMap<&'static str, Vec<serde_json::Value>> {
    let mut sent: HashMap<&str, Vec<&str>> = HashMap::new();
    for (id, channel) in log.accepted.iter().zip(&log.channels) {
        sent.entry(channel.as_str()).or_default().push(id);
    }
    let table: Vec<serde_json::Value> = ingest.get("/channels").json().unwrap();
    let mut stored = HashMap::new();
    for channel in CHANNELS {
        let rows: Vec<serde_json::Value> = ingest
            .get(&format!("/channels/{channel}/messages"))
            .json()
            .unwrap();
        assert!(
            rows.iter().all(|r| r["channel"] == channel),
            "{channel}: another channel's row"
        );
        let positions: Vec<(u64, u64)> = rows.iter().map(|r| position(&r["stream_id"])).collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "{channel}: not in stream order"
        );
        let ids: std::collections::HashSet<&str> =
            rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), rows.len(), "{channel}: a message twice");
        let want = &sent[channel];
        let missing = want.iter().filter(|id| !ids.contains(**id)).count();
        assert_eq!(
            missing,
            0,
            "{channel}: {missing} of {} accepted messages missing",
            want.len()
        );
        let listed = table
            .iter()
            .find(|c| c["channel"] == channel)
            .unwrap_or_else(|| panic!("{channel} not in GET /channels: {table:?}"));
        assert_eq!(
            listed["messages"],
            rows.len(),
            "{channel}: the channels table's count"
        );
        assert_eq!(
            listed["last_stream_id"],
            rows.last().unwrap()["stream_id"],
            "{channel}"
        );
        stored.insert(channel, rows);
    }
    stored
}

/// A subscriber to `chat.*` resumed from before the first message gets every `chat.*` message of
/// `stored`, from Postgres and then the stream, once, in stream order, and nothing of `news`.
fn assert_every_chat_message_once_in_order_from_the_start(
    gateway: &Service,
    stored: &HashMap<&'static str, Vec<serde_json::Value>>,
) {
    let mut want: Vec<&serde_json::Value> =
        stored["chat.a"].iter().chain(&stored["chat.b"]).collect();
    want.sort_by_key(|r| position(&r["stream_id"]));
    let want: Vec<&str> = want
        .iter()
        .map(|r| r["stream_id"].as_str().unwrap())
        .collect();
    let addr = gateway.url().trim_start_matches("http://").to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let got = runtime.block_on(async {
        let socket = testkit::ws::connect(&addr, "?channels=chat.*&since=0-0")
            .await
            .unwrap();
        let mut ws = testkit::Ws(socket);
        let got = ws.messages(want.len()).await;
        ws.assert_quiet(Duration::from_millis(500)).await;
        got
    });
    let got: Vec<&str> = got
        .iter()
        .map(|m| m["stream_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, want, "every chat.* message once, in order");
}

/// A stream id as a comparable pair.
fn position(id: &serde_json::Value) -> (u64, u64) {
    let (ms, seq) = id.as_str().unwrap().split_once('-').unwrap();
    (ms.parse().unwrap(), seq.parse().unwrap())
}
