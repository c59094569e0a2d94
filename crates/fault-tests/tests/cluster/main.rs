//! Relay as it is deployed at scale: on a Redis Cluster of the test's own (three primaries, three
//! replicas), through the failover of the primary that holds the stream, with the environment the compose
//! file gives the containers, and through a rolling deploy of persister replicas. Every test is bounded
//! in time and asserts the 202 promise: each accepted message in Postgres exactly once.
#![allow(clippy::unwrap_used)]

#[path = "../faults/load.rs"]
mod load;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use load::{assert_exactly_once, post_to};
use testkit::procs::{env_for, signal, wait_until, with_env, OwnCluster, OwnRedis, Service};
use testkit::{Cleanup, Ws};

/// How long the persister gets to store what was accepted, once the fault is over.
const DRAIN: Duration = Duration::from_secs(30);

/// A test's settings on `cluster`: its own database, and its own stream key in a hash tag (the cluster
/// needs every key of the stream in one slot).
fn cluster_settings(cluster: &OwnCluster) -> (service::Settings, Cleanup) {
    let mut settings = testkit::test_settings();
    settings.redis_url = cluster.url();
    settings.stream_key = format!("{{{}}}", settings.stream_key);
    (settings.clone(), Cleanup(settings))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `POST /messages` of `body`, with an `Idempotency-Key` when given: the status and the JSON answer.
fn post(ingest: &Service, body: &str, key: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = client()
        .post(format!("{}/messages", ingest.url()))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let res = req.send().unwrap();
    let status = res.status().as_u16();
    (status, res.json().unwrap_or_default())
}

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

    // Round trip, with one message posted twice under one Idempotency-Key (the Lua script touches the
    // stream and the record: both in the stream's slot) and once more with another body (409).
    let (status, first) = post(&ingest, r#"{"n":1}"#, None);
    assert_eq!(status, 202, "{first}");
    let (status, second) = post(&ingest, r#"{"n":2}"#, Some("key-2"));
    assert_eq!(status, 202, "{second}");
    let (status, again) = post(&ingest, r#"{"n":2}"#, Some("key-2"));
    assert_eq!(
        (status, &again),
        (202, &second),
        "a repeat answers the first 202"
    );
    let (status, conflict) = post(&ingest, r#"{"n":"other"}"#, Some("key-2"));
    assert_eq!(status, 409, "{conflict}");
    let (status, third) = post(&ingest, r#"{"n":3}"#, None);
    assert_eq!(status, 202, "{third}");
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

    // Dead letters: an undecodable entry written straight to the stream ends in `<STREAM_KEY>:dead`.
    let mut conn = cluster.connection();
    let poison = testkit::xadd_fields(
        &mut conn,
        &settings.stream_key,
        "*",
        [("v", "1"), ("id", "not-a-uuid")],
    );
    let dead_key = model::dead_letter_key(&settings.stream_key);
    let mut dead = Vec::new();
    wait_until("the poison entry to be dead-lettered", DRAIN, || {
        dead = testkit::stream::range(&mut conn, &dead_key);
        !dead.is_empty()
    });
    let letter = format!("{:?}", dead[0].map);
    assert!(letter.contains(&poison), "{letter}");
    drop((persister, ingest, gateway));
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

/// What a [`KeyedPoster`] saw.
#[derive(Debug, Default)]
struct KeyedLog {
    /// The ids of the 202s, one per key.
    accepted: Vec<String>,
    /// 503s with `Retry-After`, each followed by a retry with the same key.
    refused: usize,
    /// Connection errors (each followed by a retry with the same key).
    errors: usize,
    /// Any other answer.
    unexpected: Vec<String>,
}

/// Posts `{"n":…}` with `Idempotency-Key: n-…` from `workers` threads until stopped, as a careful client
/// does: a 503 or a connection error is retried with the same key until it gets its 202 (or the test
/// stops, leaving that one unacknowledged).
struct KeyedPoster {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<KeyedLog>>,
}

impl KeyedPoster {
    fn start(url: String, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicUsize::new(0));
        let workers = (0..workers)
            .map(|_| {
                let (stop, next, url) = (Arc::clone(&stop), Arc::clone(&next), url.clone());
                std::thread::spawn(move || {
                    let client = client();
                    let mut log = KeyedLog::default();
                    'posts: while !stop.load(Ordering::Relaxed) {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        loop {
                            let res = client
                                .post(format!("{url}/messages"))
                                .header("content-type", "application/json")
                                .header("idempotency-key", format!("n-{n}"))
                                .body(format!("{{\"n\":{n}}}"))
                                .send();
                            match res {
                                Ok(r) if r.status() == 202 => {
                                    let body: serde_json::Value = r.json().unwrap();
                                    log.accepted.push(body["id"].as_str().unwrap().to_owned());
                                    break;
                                }
                                Ok(r)
                                    if r.status() == 503
                                        && r.headers().contains_key("retry-after") =>
                                {
                                    log.refused += 1
                                }
                                Ok(r) => {
                                    log.unexpected.push(format!("status {}", r.status()));
                                    break;
                                }
                                Err(_) => log.errors += 1,
                            }
                            if stop.load(Ordering::Relaxed) {
                                break 'posts;
                            }
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    log
                })
            })
            .collect();
        Self { stop, workers }
    }

    fn accepted_so_far(log: &KeyedLog) -> usize {
        log.accepted.len()
    }

    fn finish(self) -> KeyedLog {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = KeyedLog::default();
        for w in self.workers {
            let log = w.join().unwrap();
            all.accepted.extend(log.accepted);
            all.refused += log.refused;
            all.errors += log.errors;
            all.unexpected.extend(log.unexpected);
        }
        all
    }
}

/// Posts for `for_how_long` and counts the 202s (a probe that the write path works again).
fn accepted_within(ingest: &Service, for_how_long: Duration) -> usize {
    let probe = KeyedPoster::start(ingest.url(), 1);
    std::thread::sleep(for_how_long);
    KeyedPoster::accepted_so_far(&probe.finish())
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

/// The environment the compose file gives every Relay container: the image's `ENV` lines, then the
/// service's `environment` (`x-relay-env`, which all three use unchanged), with `${VAR:-default}` as an
/// empty `.env` leaves it. Read from the files themselves, so a change to either is tested.
fn compose_environment() -> Vec<(String, String)> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let dockerfile = std::fs::read_to_string(format!("{root}/deploy/Dockerfile")).unwrap();
    let compose = std::fs::read_to_string(format!("{root}/docker-compose.yml")).unwrap();
    let substitute = |v: &str| -> String {
        let mut out = v.to_owned();
        while let Some(start) = out.find("${") {
            let end = start + out[start..].find('}').unwrap();
            let default = out[start + 2..end]
                .split_once(":-")
                .map_or("", |(_, d)| d)
                .to_owned();
            out.replace_range(start..=end, &default);
        }
        out
    };
    let mut env = Vec::new();
    // The runtime stage's ENV: `ENV A=1 \` continued on the following lines.
    let mut in_env = false;
    for line in dockerfile.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("ENV ") {
            in_env = true;
            env.clear(); // the last stage's ENV is the image's
            for pair in rest.trim_end_matches('\\').split_whitespace() {
                let (k, v) = pair.split_once('=').unwrap();
                env.push((k.to_owned(), substitute(v)));
            }
        } else if in_env {
            for pair in line.trim_end_matches('\\').split_whitespace() {
                let (k, v) = pair.split_once('=').unwrap();
                env.push((k.to_owned(), substitute(v)));
            }
        }
        in_env &= line.ends_with('\\');
    }
    env.retain(|(k, _)| k != "RELAY_SERVICE");
    // `x-relay-env`: the indented `KEY: value` lines under it (comments skipped).
    let block = compose
        .split("x-relay-env: &relay-env\n")
        .nth(1)
        .expect("docker-compose.yml has x-relay-env");
    for line in block
        .lines()
        .take_while(|l| l.starts_with("  ") || l.is_empty())
    {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once(": ").unwrap();
        env.retain(|(key, _)| key != k);
        env.push((k.to_owned(), substitute(v.trim())));
    }
    // Every Relay service takes exactly that environment, nothing of its own.
    for service in ["persister", "ingest-api", "push-gateway"] {
        let section = compose
            .split(&format!("\n  {service}:\n"))
            .nth(1)
            .unwrap()
            .split("\n\n")
            .next()
            .unwrap();
        assert!(
            section.contains("    environment: *relay-env\n"),
            "{service} has an environment of its own; teach this test about it"
        );
    }
    env
}

/// Maps the compose environment onto this machine: the hosts `redis` and `postgres` are loopback, the
/// ports and database are the test's own, and every service listens on a port the OS picks.
fn natively(
    compose: &[(String, String)],
    redis: &OwnRedis,
    database_url: &str,
) -> Vec<(&'static str, String)> {
    let database = store::url::database_name(database_url).unwrap();
    compose
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace("redis://redis:6379", &redis.url())
                .replace(
                    "@postgres:5432/relay",
                    &format!("@127.0.0.1:5432/{database}"),
                )
                .replace("0.0.0.0:8080", "127.0.0.1:0")
                .replace("0.0.0.0:8081", "127.0.0.1:0")
                .replace("0.0.0.0:8082", "127.0.0.1:0");
            (&*k.clone().leak(), v)
        })
        .collect()
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
