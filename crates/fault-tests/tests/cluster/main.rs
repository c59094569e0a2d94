//! Relay as it is deployed at scale: on a Redis Cluster of the test's own (three primaries, three
//! replicas), through the failover of the primary that holds the stream, with the environment the compose
//! file gives the containers, and through a rolling deploy of persister replicas. Every test is bounded
//! in time and asserts the 202 promise: each accepted message in Postgres exactly once.
#![allow(clippy::unwrap_used)]

#[path = "../faults/load.rs"]
mod load;

mod compose;
mod keyed_poster;
mod setup;

use std::time::{Duration, Instant};

use compose::{compose_environment, natively};
use keyed_poster::{accepted_within, KeyedPoster};
use load::{assert_exactly_once, post_to};
use setup::{client, cluster_settings, post, runtime};
use testkit::procs::{env_for, signal, wait_until, with_env, OwnCluster, OwnRedis, Service};
use testkit::Ws;

/// How long the persister gets to store what was accepted, once the fault is over.
const DRAIN: Duration = Duration::from_secs(30);

#[test]
fn on_a_redis_cluster_messages_round_trip_once_dead_letters_land_on_the_stream_slot_and_clients_resume(
) {
    let cluster = OwnCluster::start();
    let (settings, _cleanup) = cluster_settings(&cluster);
    let env = env_for(&settings);
    load::prepare_logged_database(&settings.database_url);
    let persister = Service::start("persister", &env);
    let ingest = Service::start("ingest-api", &env);
    let gateway = Service::start("push-gateway", &env);
    let gateway_addr = format!("127.0.0.1:{}", gateway.port);
    let rt = runtime();
    let mut live =
        rt.block_on(async { Ws(testkit::ws::connect(&gateway_addr, "").await.unwrap()) });

    // Round trip, with one message posted twice under one Idempotency-Key and once more with another
    // body (409).
    let [first, second, third] = post_three_one_of_them_again_under_its_key(&ingest);
    let sent = [&first, &second, &third];

    let pushed = rt.block_on(live.messages(3));
    for (frame, accepted) in pushed.iter().zip(sent) {
        assert_eq!(frame["id"], accepted["id"]);
        assert_eq!(frame["stream_id"], accepted["stream_id"]);
    }
    assert_exactly_once(
        &settings.database_url,
        &sent.map(|a| a["id"].as_str().unwrap().to_owned()),
        true,
        DRAIN,
    );
    assert_listed_in_stream_order(&ingest, sent);

    // Resume: a client that saw the first message gets the two after it, then live ones.
    let since = first["stream_id"].as_str().unwrap();
    let mut resumed = rt.block_on(async {
        Ws(
            testkit::ws::connect(&gateway_addr, &format!("?since={since}"))
                .await
                .unwrap(),
        )
    });
    let replayed = rt.block_on(resumed.messages(2));
    assert_eq!(replayed[0]["id"], second["id"]);
    assert_eq!(replayed[1]["id"], third["id"]);
    let (status, fourth) = post(&ingest, r#"{"n":4}"#, None);
    assert_eq!(status, 202, "{fourth}");
    assert_eq!(rt.block_on(resumed.messages(1))[0]["id"], fourth["id"]);

    assert_a_poison_entry_is_dead_lettered(&cluster, &settings.stream_key);
    drop((persister, ingest, gateway));
}

/// Posts `{"n":1}`, `{"n":2}` under `Idempotency-Key: key-2` (twice: the repeat answers the first 202;
/// the Lua script touches the stream and the record, both in the stream's slot), `{"n":"other"}` under
/// the same key (409), and `{"n":3}`: the three 202 answers.
fn post_three_one_of_them_again_under_its_key(ingest: &Service) -> [serde_json::Value; 3] {
    let (status, first) = post(ingest, r#"{"n":1}"#, None);
    assert_eq!(status, 202, "{first}");
    let (status, second) = post(ingest, r#"{"n":2}"#, Some("key-2"));
    assert_eq!(status, 202, "{second}");
    let (status, again) = post(ingest, r#"{"n":2}"#, Some("key-2"));
    assert_eq!(
        (status, &again),
        (202, &second),
        "a repeat answers the first 202"
    );
    let (status, conflict) = post(ingest, r#"{"n":"other"}"#, Some("key-2"));
    assert_eq!(status, 409, "{conflict}");
    let (status, third) = post(ingest, r#"{"n":3}"#, None);
    assert_eq!(status, 202, "{third}");
    [first, second, third]
}

/// `GET /messages` lists exactly `sent`, in stream order.
fn assert_listed_in_stream_order(ingest: &Service, sent: [&serde_json::Value; 3]) {
    let listed: Vec<serde_json::Value> = client()
        .get(format!("{}/messages", ingest.url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let listed_ids: Vec<&serde_json::Value> = listed.iter().map(|m| &m["id"]).collect();
    assert_eq!(
        listed_ids,
        sent.map(|a| &a["id"]),
        "GET /messages in stream order"
    );
}

/// Dead letters: an undecodable entry written straight to the stream ends in `<STREAM_KEY>:dead` (on the
/// stream's slot, thanks to the hash tag).
fn assert_a_poison_entry_is_dead_lettered(cluster: &OwnCluster, stream_key: &str) {
    let mut conn = cluster.connection();
    let poison = testkit::xadd_fields(
        &mut conn,
        stream_key,
        "*",
        [("v", "1"), ("id", "not-a-uuid")],
    );
    let dead_key = model::dead_letter_key(stream_key);
    let mut dead = Vec::new();
    wait_until("the poison entry to be dead-lettered", DRAIN, || {
        dead = testkit::stream::range(&mut conn, &dead_key);
        !dead.is_empty()
    });
    let letter = format!("{:?}", dead[0].map);
    assert!(letter.contains(&poison), "{letter}");
}

/// A STREAM_KEY without a hash tag cannot be used on a cluster: each service refuses to start, in one line.
#[test]
fn on_a_redis_cluster_a_stream_key_without_a_hash_tag_stops_each_service_at_start() {
    for name in ["ingest-api", "persister", "push-gateway"] {
        let out = testkit::procs::run_to_exit(
            name,
            &[],
            &[
                ("REDIS_URL", "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"),
                ("STREAM_KEY", "messages"),
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{name}: {stderr}");
        assert!(
            stderr.contains("STREAM_KEY") && stderr.contains("{messages}"),
            "{name}: {stderr}"
        );
    }
}

/// The replica of the stream's primary falls behind (frozen, its link cut, as a network partition or a
/// busy replica would leave it), then the primary crashes and the lagging replica is promoted. Without `REDIS_ACK_REPLICAS`, what the
/// primary acknowledged in that time is gone with it (set it to "0" below to watch this test fail); with
/// it, those posts got 503s, were retried with their keys, and every 202 is stored once.
#[test]
fn with_redis_ack_replicas_1_every_202_survives_the_failover_of_the_streams_primary_exactly_once() {
    let mut cluster = OwnCluster::start();
    let (settings, _cleanup) = cluster_settings(&cluster);
    let env = with_env(
        &env_for(&settings),
        &[
            ("REDIS_ACK_REPLICAS", "1"),
            ("REDIS_ACK_TIMEOUT_MS", "300"),
            ("CLAIM_IDLE_MS", "1000"),
        ],
    );
    load::prepare_logged_database(&settings.database_url);
    let persister = Service::start("persister", &env);
    let ingest = Service::start("ingest-api", &env);
    let poster = KeyedPoster::start(ingest.url(), 4);
    std::thread::sleep(Duration::from_secs(1));

    let primary = cluster.primary_of(&settings.stream_key).unwrap();
    let replica = cluster.replica_of(primary);
    // The persister stops too, so that what the primary accepted is not stored before it dies: a lagging
    // persister is normal, and it is what makes an unreplicated 202 a lost message.
    signal(persister.pid(), "STOP");
    // Replication stops: the replica is frozen and its link cut from the primary's side (a frozen replica
    // alone would still find everything in its socket buffer when it wakes), so what the primary accepts
    // from now on is on the primary only.
    cluster.signal(replica, "STOP");
    let mut conn = cluster.nodes[primary].connection().unwrap();
    let cut: u32 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query(&mut conn)
        .unwrap();
    assert_eq!(cut, 1, "the primary had one replica link");
    std::thread::sleep(Duration::from_millis(1500));
    cluster.kill(primary);
    cluster.signal(replica, "CONT");
    let failover = Instant::now();
    while cluster.primary_of(&settings.stream_key) != Some(replica) {
        assert!(
            failover.elapsed() < Duration::from_secs(30),
            "node {} was not promoted within 30 s:\n{}",
            cluster.nodes[replica].port,
            cluster.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("failover took {:?}", failover.elapsed());
    signal(persister.pid(), "CONT");
    // The old primary comes back as the new primary's replica, so WAIT can be satisfied again.
    cluster.restart(primary);
    cluster.wait_ok(Duration::from_secs(30));
    wait_until(
        "posts to be accepted again",
        Duration::from_secs(30),
        || accepted_within(&ingest, Duration::from_millis(500)) > 0,
    );
    std::thread::sleep(Duration::from_secs(1));
    let log = poster.finish();
    eprintln!(
        "accepted {}, refused {} (retried), connection errors {}",
        log.accepted.len(),
        log.refused,
        log.errors
    );
    assert!(log.unexpected.is_empty(), "{:?}", log.unexpected);
    assert!(
        log.refused > 0,
        "the failover was not felt: the test proves nothing"
    );
    // Not `only`: a post answered 503 may still have been stored (its entry reached the stream before
    // the primary died, and its retry became another entry when the record did not survive).
    assert_exactly_once(&settings.database_url, &log.accepted, false, DRAIN);
    drop((persister, ingest));
}

#[test]
fn the_binaries_with_the_compose_environment_two_persisters_and_two_gateways_push_every_message_to_both_and_store_it_once(
) {
    let compose = compose_environment();
    let names: Vec<&str> = compose.iter().map(|(k, _)| k.as_str()).collect();
    for expected in [
        "REDIS_URL",
        "DATABASE_URL",
        "STREAM_KEY",
        "INGEST_ADDR",
        "GATEWAY_ADDR",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let redis = OwnRedis::start();
    let (settings, _cleanup) = testkit::setup();
    let env = natively(&compose, &redis, &settings.database_url);
    load::prepare_logged_database(&settings.database_url);
    // Docker gives each container its own host name, the persister's default CONSUMER_NAME; processes
    // on one machine share one, so each replica gets the name its container's host name would give it —
    // unless the compose file sets CONSUMER_NAME, which then wins, as it would in the containers.
    let persisters = ["3f2a9c1d7e60", "b81c04e2a9f3"].map(|host| {
        let mut own = env.clone();
        if !own.iter().any(|(k, _)| *k == "CONSUMER_NAME") {
            own.push(("CONSUMER_NAME", host.to_owned()));
        }
        Service::start("persister", &own)
    });
    let ingest = Service::start("ingest-api", &env);
    let gateways = [
        Service::start("push-gateway", &env),
        Service::start("push-gateway", &env),
    ];
    let rt = runtime();
    let mut sockets: Vec<Ws> = gateways
        .iter()
        .map(|g| {
            let addr = format!("127.0.0.1:{}", g.port);
            rt.block_on(async { Ws(testkit::ws::connect(&addr, "").await.unwrap()) })
        })
        .collect();
    let log = post_to(&ingest, 300, 1000, 4).finish(false);
    log.assert_none_failed("posts failed");
    let accepted: std::collections::HashSet<&String> = log.accepted.iter().collect();
    for (i, ws) in sockets.iter_mut().enumerate() {
        let seen = rt.block_on(ws.messages(300));
        let ids: std::collections::HashSet<String> = seen
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), 300, "gateway {i} pushed a message twice");
        assert!(
            ids.iter().all(|id| accepted.contains(id)),
            "gateway {i} pushed a message nobody posted"
        );
    }
    assert_exactly_once(&settings.database_url, &log.accepted, true, DRAIN);
    drop((persisters, ingest, gateways));
}

/// A Kubernetes rollout of the persister: a new pod (a new name) starts, an old one gets SIGTERM, and
/// again, under steady load. Each stopped replica commits and acknowledges its batch or leaves it
/// pending, where a live replica claims it after CLAIM_IDLE_MS.
#[test]
fn a_rolling_deploy_of_persister_replicas_under_steady_load_loses_and_doubles_nothing() {
    let (settings, _cleanup) = testkit::setup();
    let env = with_env(
        &env_for(&settings),
        &[("CLAIM_IDLE_MS", "1000"), ("PERSISTER_BATCH_SIZE", "100")],
    );
    let pod = |n: usize| {
        Service::start(
            "persister",
            &with_env(&env, &[("CONSUMER_NAME", &format!("persister-7d9f8-{n}x"))]),
        )
    };
    load::prepare_logged_database(&settings.database_url);
    let mut running = std::collections::VecDeque::from([pod(0), pod(1)]);
    let ingest = Service::start("ingest-api", &env);
    let poster = post_to(&ingest, 6000, 1000, 4);
    for n in 2..6 {
        std::thread::sleep(Duration::from_millis(800));
        running.push_back(pod(n));
        let old = running.pop_front().unwrap();
        assert_eq!(old.terminate(Duration::from_secs(15)), Some(0));
    }
    let log = poster.finish(false);
    log.assert_none_failed("posts failed");
    assert_eq!(log.accepted.len(), 6000);
    assert_exactly_once(&settings.database_url, &log.accepted, true, DRAIN);
    drop((running, ingest));
}
