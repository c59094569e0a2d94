//! Fault tests: real service binaries and real stores, killed, stopped and restarted. Every test is
//! bounded in time and asserts the 202 promise: each accepted message in Postgres exactly once.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::procs::{env_for, wait_until, with_env, OwnPostgres, OwnRedis, Service};
use testkit::Cleanup;

mod channels;
mod load;

use load::{assert_exactly_once, post_to, prepare_logged_database, Poster};

/// A persister, then an ingest-api, on `settings`; and the environment they were started with.
fn start_write_path(
    settings: &service::Settings,
) -> (Vec<(&'static str, String)>, Service, Service) {
    let env = env_for(settings);
    prepare_logged_database(&settings.database_url);
    let persister = Service::start("persister", &env);
    let ingest = Service::start("ingest-api", &env);
    (env, persister, ingest)
}

/// How long the persister gets to store what was accepted, once the fault is over.
const DRAIN: Duration = Duration::from_secs(30);

fn shared_url(url: &str) -> Arc<Mutex<String>> {
    Arc::new(Mutex::new(url.to_owned()))
}

/// Arms the persister's test seam (`persister/src/test_hooks.rs`): its first batch with rows is held at
/// `moment` (`before-commit` or `after-commit`) and a marker line is logged.
fn held_at(env: &[(&'static str, String)], moment: &str) -> Vec<(&'static str, String)> {
    with_env(env, &[("PERSISTER_TEST_SEAM", moment)])
}

/// Waits until `persister` holds its batch at `moment`.
fn wait_held(persister: &Service, moment: &str) {
    persister.wait_for_log(
        &format!("test seam reached: {moment}"),
        Duration::from_secs(20),
    );
}

/// Entries pending on `consumer` in the persister group.
fn pending_on(settings: &service::Settings, consumer: &str) -> usize {
    let mut redis = testkit::redis(settings);
    let consumers: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&settings.stream_key)
        .arg(model::PERSISTER_GROUP)
        .query(&mut redis)
        .unwrap();
    consumers
        .iter()
        .find(|c| c.get("name") == Some(&redis::Value::BulkString(consumer.as_bytes().to_vec())))
        .and_then(|c| match c.get("pending") {
            Some(redis::Value::Int(n)) => Some(*n as usize),
            _ => None,
        })
        .unwrap_or(0)
}

#[test]
fn a_persister_sigkilled_twice_mid_batch_under_steady_load_stores_every_accepted_message_once() {
    let (settings, _cleanup) = testkit::setup();
    // No claims: what a killed run held can only be stored by the next run of the same replica (same
    // CONSUMER_NAME), reading its own pending entries first.
    let env = with_env(
        &env_for(&settings),
        &[
            ("CLAIM_IDLE_MS", "3600000"),
            ("PERSISTER_BATCH_SIZE", "200"),
        ],
    );
    prepare_logged_database(&settings.database_url);
    let ingest = Service::start("ingest-api", &env);
    let poster = post_to(&ingest, 5000, 1000, 4);
    // The first run dies with a batch committed and not acknowledged (stored *and* pending: the worst
    // moment), the second with its first batch — the first run's leftovers, read pending-first — read
    // and not committed.
    for moment in ["after-commit", "before-commit"] {
        let persister = Service::start("persister", &held_at(&env, moment));
        wait_held(&persister, moment);
        assert!(pending_on(&settings, &settings.consumer_name) > 0);
        persister.kill();
    }
    let persister = Service::start("persister", &env);
    let log = poster.finish(false);
    log.assert_none_failed("posts failed");
    assert_eq!(log.accepted.len(), 5000);
    assert_exactly_once(&settings.database_url, &log.accepted, true, DRAIN);
    wait_until(
        "the restarted replica to finish its own pending entries",
        Duration::from_secs(10),
        || pending_on(&settings, &settings.consumer_name) == 0,
    );
    drop(persister);
}

#[test]
fn entries_pending_on_a_sigkilled_replica_are_claimed_and_stored_by_the_other() {
    let (settings, _cleanup) = testkit::setup();
    let env = with_env(
        &env_for(&settings),
        // Small bodies: a fresh reader's first read expects entries of MAX_BODY_BYTES, and with this
        // one its first batch is a whole batch of 50.
        &[
            ("CLAIM_IDLE_MS", "1000"),
            ("PERSISTER_BATCH_SIZE", "50"),
            ("MAX_BODY_BYTES", "65536"),
        ],
    );
    prepare_logged_database(&settings.database_url);
    let ingest = Service::start("ingest-api", &env);
    let log = post_to(&ingest, 150, 2000, 2).finish(false);
    assert_eq!(log.accepted.len(), 150);
    // Replica A commits its first batch, reads the next one ahead, and dies before acknowledging either.
    let replica_a = Service::start(
        "persister",
        &held_at(
            &with_env(&env, &[("CONSUMER_NAME", "replica-a")]),
            "after-commit",
        ),
    );
    wait_held(&replica_a, "after-commit");
    replica_a.kill();
    let stranded = pending_on(&settings, "replica-a");
    assert!(stranded >= 50, "{stranded} pending on replica A");

    let replica_b = Service::start(
        "persister",
        &with_env(&env, &[("CONSUMER_NAME", "replica-b")]),
    );
    assert_exactly_once(&settings.database_url, &log.accepted, true, DRAIN);
    wait_until(
        "replica A's entries to be claimed",
        Duration::from_secs(10),
        || pending_on(&settings, "replica-a") == 0,
    );
    drop(replica_b);
}

#[test]
fn with_postgres_stopped_for_10_seconds_posts_keep_answering_202_and_all_arrive_once() {
    let pg = OwnPostgres::start();
    let mut settings = testkit::test_settings();
    settings.database_url = pg.url("relay");
    let _cleanup = Cleanup(settings.clone());
    let (_, persister, ingest) = start_write_path(&settings);
    let poster = post_to(&ingest, 3000, 200, 2);
    std::thread::sleep(Duration::from_secs(2));
    pg.stop();
    let stopped = Instant::now();
    // While it is down: reads are a clean 503, writes are still accepted.
    std::thread::sleep(Duration::from_secs(1));
    let read = ingest.get("/messages");
    assert_eq!(read.status(), 503);
    assert!(read.headers().contains_key("retry-after"));
    assert_eq!(ingest.get("/readyz").status(), 200);
    assert_eq!(persister.get("/readyz").status(), 503);
    std::thread::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed()));
    pg.restart();
    let log = poster.finish(true);
    log.assert_none_failed("posts failed while Postgres was down");
    assert!(
        log.accepted.len() > 2000,
        "only {} accepted",
        log.accepted.len()
    );
    assert_exactly_once(
        &settings.database_url,
        &log.accepted,
        true,
        Duration::from_secs(60),
    );
    drop(persister);
}

#[test]
fn a_redis_crash_and_restart_loses_no_accepted_post_and_no_post_hangs() {
    let mut redis_server = OwnRedis::start();
    let mut settings = testkit::test_settings();
    settings.redis_url = redis_server.url();
    let _cleanup = Cleanup(settings.clone());
    let (_, persister, ingest) = start_write_path(&settings);
    let poster = post_to(&ingest, 100_000, 300, 3);
    std::thread::sleep(Duration::from_secs(2));
    redis_server.crash();
    std::thread::sleep(Duration::from_secs(2));
    let down = reqwest::blocking::Client::new()
        .post(format!("{}/messages", ingest.url()))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(down.status(), 503);
    assert!(down.headers().contains_key("retry-after"));
    assert_eq!(ingest.get("/readyz").status(), 503);
    redis_server.restart();
    std::thread::sleep(Duration::from_secs(3));
    let log = poster.finish(true);
    assert!(log.refused > 0, "no post saw the outage");
    assert!(
        log.failed.is_empty(),
        "posts failed other than with 503 + Retry-After: {:?}",
        log.failed.first()
    );
    assert!(
        log.slowest < Duration::from_secs(3),
        "a post hung for {:?}",
        log.slowest
    );
    // Posts accepted after the restart prove ingest reconnected by itself.
    let before = log.accepted.len();
    let after = post_to(&ingest, 50, 500, 1).finish(false);
    assert_eq!(
        after.accepted.len(),
        50,
        "ingest did not recover: {:?}",
        after.failed.first()
    );
    let accepted: Vec<String> = log.accepted.into_iter().chain(after.accepted).collect();
    assert!(before > 0);
    assert_exactly_once(&settings.database_url, &accepted, false, DRAIN);
    drop(persister);
}

#[test]
fn sigterm_to_each_service_under_load_exits_0_and_loses_nothing() {
    let (settings, _cleanup) = testkit::setup();
    let (env, persister, ingest) = start_write_path(&settings);
    let gateway = Service::start("push-gateway", &env);
    let current = shared_url(&ingest.url());
    let url = Arc::clone(&current);
    let poster = Poster::start(move || url.lock().unwrap().clone(), 100_000, 500, 4);

    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        persister.terminate(Duration::from_secs(15)),
        Some(0),
        "persister exit code"
    );
    let persister = Service::start("persister", &env);

    std::thread::sleep(Duration::from_secs(1));
    let replacement = Service::start("ingest-api", &env);
    *current.lock().unwrap() = replacement.url();
    assert_eq!(
        ingest.terminate(Duration::from_secs(15)),
        Some(0),
        "ingest-api exit code"
    );

    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        gateway.terminate(Duration::from_secs(15)),
        Some(0),
        "push-gateway exit code"
    );

    std::thread::sleep(Duration::from_secs(1));
    let log = poster.finish(true);
    // Requests in flight to the old ingest-api finished; new ones went to the replacement. A request that
    // raced the switch may see a refused connection — never a 202 that is then lost.
    assert!(
        log.failed.len() <= 4,
        "too many failed posts: {:?}",
        log.failed
    );
    assert!(log.accepted.len() > 1000);
    assert_exactly_once(&settings.database_url, &log.accepted, true, DRAIN);
    assert_eq!(persister.terminate(Duration::from_secs(15)), Some(0));
    assert_eq!(replacement.terminate(Duration::from_secs(15)), Some(0));
}

#[test]
fn a_malformed_setting_stops_each_service_at_start_with_one_line_naming_it() {
    for service in ["ingest-api", "persister", "push-gateway"] {
        let out = testkit::procs::run_to_exit(service, &[], &[("WS_SEND_QUEUE", "lots")]);
        assert_eq!(out.status.code(), Some(2), "{service} exit code");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{service}: {stderr}");
        assert!(
            lines[0].contains("invalid setting WS_SEND_QUEUE=\"lots\""),
            "{service}: {stderr}"
        );
    }
}
