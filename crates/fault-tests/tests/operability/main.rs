//! Operability: what an operator reads — metrics (parsed, counted exactly), readiness as dependencies
//! come and go, one request id through the logs of all three services, `--help`, and the dashboard's
//! queries against what the services export.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use testkit::metrics::{scrape, scrape_blocking};
use testkit::procs::{env_for, wait_until, with_env, OwnPostgres, OwnRedis, Service};
use testkit::Relay;

/// The three services in this process on one stream, with a gateway client that has seen everything.
async fn relay_with_everything() -> Relay {
    let mut relay = Relay::pipeline(testkit::test_settings()).await;
    relay.start_gateway(None).await;
    relay
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_counter_says_exactly_how_many_posts_rows_and_frames_there_were() {
    let relay = relay_with_everything().await;
    for i in 0..3 {
        assert_eq!(
            relay.post_json(format!("{{\"n\":{i}}}")).await.status(),
            202
        );
    }
    assert_eq!(relay.post_ndjson("1\n2\n").await.status(), 202);
    assert_eq!(relay.post_json("{oops").await.status(), 400);
    assert_eq!(relay.post_as("text/plain", "1").await.status(), 415);
    assert_eq!(relay.post_ndjson("1\n{\n").await.status(), 400);
    relay.wait_for_messages(5).await;

    // A replay of the five, then one live frame.
    let mut ws = relay.ws_connect("?since=0-0").await;
    ws.messages(5).await;
    relay.publish("{\"live\":true}".into()).await;
    ws.messages(1).await;
    relay.wait_for_messages(6).await;

    let ingest = scrape(&relay.ingest_url()).await;
    let outcome = |o: &str| ingest.value("relay_ingest_messages_total", &[("outcome", o)]);
    assert_eq!(outcome("accepted"), 6.0);
    assert_eq!(outcome("malformed-json"), 1.0);
    assert_eq!(outcome("unsupported-media-type"), 1.0);
    assert_eq!(outcome("invalid-batch-line"), 1.0);
    let posts = |status: &str| {
        ingest.value(
            "relay_http_requests_total",
            &[("route", "/messages"), ("status", status)],
        )
    };
    assert_eq!(posts("202"), 5.0);
    assert_eq!(posts("400"), 2.0);
    assert_eq!(posts("415"), 1.0);
    assert!(
        ingest.value(
            "relay_http_request_duration_seconds",
            &[("route", "/messages")]
        ) >= 8.0
    );

    let persister = scrape(&relay.persister_url()).await;
    assert_eq!(persister.value("relay_persister_rows_total", &[]), 6.0);
    assert_eq!(
        persister.value("relay_persister_dead_letters_total", &[]),
        0.0
    );
    assert_eq!(
        persister.value("relay_persister_redeliveries_total", &[]),
        0.0
    );

    let gateway = scrape(&relay.gateway_url()).await;
    let frames = |kind: &str| gateway.value("relay_gateway_frames_total", &[("kind", kind)]);
    assert_eq!(frames("replay"), 5.0);
    assert_eq!(frames("live"), 1.0);
    assert_eq!(frames("gap"), 0.0);
    assert_eq!(gateway.value("relay_gateway_connections", &[]), 1.0);
    assert_eq!(
        gateway.value("relay_gateway_delivery_delay_seconds", &[]),
        6.0
    );
    assert!(gateway.families().contains("process_resident_memory_bytes"));
}

#[test]
fn lag_and_pending_rise_while_postgres_is_away_and_fall_back_to_zero() {
    let pg = OwnPostgres::start();
    let (mut settings, _cleanup) = testkit::setup();
    settings.database_url = pg.url("relay_lag");
    let env = with_env(&env_for(&settings), &[("PERSISTER_BATCH_SIZE", "50")]);
    let persister = Service::start("persister", &env);
    let ingest = Service::start("ingest-api", &env);
    pg.stop();
    let client = reqwest::blocking::Client::new();
    for i in 0..300 {
        let res = client
            .post(format!("{}/messages", ingest.url()))
            .header("content-type", "application/json")
            .body(format!("{{\"i\":{i}}}"))
            .send()
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    let gauges = || {
        let m = scrape_blocking(&persister.url());
        (
            m.value("relay_stream_lag", &[]),
            m.value("relay_stream_pending", &[]),
            m.value("relay_stream_length", &[]),
        )
    };
    wait_until(
        "lag and pending to show the backlog",
        Duration::from_secs(10),
        || {
            let (lag, pending, length) = gauges();
            lag > 0.0 && pending > 0.0 && lag + pending == 300.0 && length == 300.0
        },
    );
    pg.restart();
    wait_until("lag and pending back to 0", Duration::from_secs(30), || {
        let (lag, pending, _) = gauges();
        lag == 0.0 && pending == 0.0
    });
    assert_eq!(
        scrape_blocking(&persister.url()).value("relay_persister_rows_total", &[]),
        300.0
    );
}

fn status(service: &Service, path: &str) -> u16 {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!("{}{path}", service.url()))
        .send()
        .map_or(0, |r| r.status().as_u16())
}

#[test]
fn readiness_follows_redis_and_postgres_and_ingest_stays_ready_without_postgres() {
    let mut redis = OwnRedis::start();
    let pg = OwnPostgres::start();
    let (mut settings, _cleanup) = testkit::setup();
    settings.redis_url = redis.url();
    settings.database_url = pg.url("relay_ready");
    let env = env_for(&settings);
    let persister = Service::start("persister", &env);
    let ingest = Service::start("ingest-api", &env);
    let gateway = Service::start("push-gateway", &env);
    let all = [&ingest, &gateway, &persister];
    let limit = Duration::from_secs(15);

    redis.crash();
    for s in all {
        wait_until(&format!("{} unready without Redis", s.name), limit, || {
            status(s, "/readyz") == 503
        });
        let body = reqwest::blocking::get(format!("{}/readyz", s.url()))
            .unwrap()
            .text()
            .unwrap();
        assert!(
            body.contains(r#""redis":"unavailable""#),
            "{}: {body}",
            s.name
        );
        assert!(
            !body.contains("refused") && !body.contains("error"),
            "{}: {body}",
            s.name
        );
        assert_eq!(status(s, "/healthz"), 200, "{} is alive", s.name);
    }
    redis.restart();
    for s in all {
        wait_until(&format!("{} ready again", s.name), limit, || {
            status(s, "/readyz") == 200
        });
    }

    pg.stop();
    wait_until("the persister unready without Postgres", limit, || {
        status(&persister, "/readyz") == 503
    });
    assert_eq!(status(&ingest, "/readyz"), 200, "the stream is the buffer");
    assert_eq!(status(&gateway, "/readyz"), 200);
    pg.restart();
    wait_until("the persister ready again", limit, || {
        status(&persister, "/readyz") == 200
    });
}

#[test]
fn with_log_format_json_every_log_line_is_one_json_object() {
    let (settings, _cleanup) = testkit::setup();
    let env = with_env(&env_for(&settings), &[("LOG_FORMAT", "json")]);
    let ingest = Service::start("ingest-api", &env);
    let res = reqwest::blocking::Client::new()
        .post(format!("{}/messages", ingest.url()))
        .header("content-type", "application/json")
        .header("x-request-id", "json-log-1")
        .body("{\"log\":\"json\"}")
        .send()
        .unwrap();
    assert_eq!(res.status(), 202);
    wait_until("the access line", Duration::from_secs(10), || {
        ingest.log().contains("json-log-1")
    });
    let log = ingest.log();
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines.len() >= 3,
        "start-up, settings and access lines: {log}"
    );
    for line in lines {
        let object: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        for field in ["ts", "level", "target", "msg"] {
            assert!(object[field].is_string(), "{field} missing: {line}");
        }
    }
}

#[test]
fn one_request_id_appears_in_the_log_of_every_service() {
    let (settings, _cleanup) = testkit::setup();
    let env = with_env(&env_for(&settings), &[("RUST_LOG", "debug")]);
    let persister = Service::start("persister", &env);
    let gateway = Service::start("push-gateway", &env);
    let ingest = Service::start("ingest-api", &env);
    let res = reqwest::blocking::Client::new()
        .post(format!("{}/messages", ingest.url()))
        .header("content-type", "application/json")
        .header("x-request-id", "trace-me-1")
        .body("{\"follow\":\"me\"}")
        .send()
        .unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(res.headers()["x-request-id"], "trace-me-1");
    for s in [&ingest, &persister, &gateway] {
        wait_until(
            &format!("trace-me-1 in the log of {}", s.name),
            Duration::from_secs(10),
            || s.log().contains("request_id=trace-me-1"),
        );
    }
    // One without an id gets a generated one, echoed.
    let res = reqwest::blocking::Client::new()
        .get(format!("{}/healthz", ingest.url()))
        .send()
        .unwrap();
    assert!(!res.headers()["x-request-id"].is_empty());
}

#[test]
fn help_prints_every_setting_it_reads_and_binds_nothing() {
    use service::settings::defs::{DEFS, GATEWAY, INGEST, PERSISTER};
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    for (binary, users) in [
        ("ingest-api", INGEST),
        ("persister", PERSISTER),
        ("push-gateway", GATEWAY),
    ] {
        // Every listen address points at a port this test holds: binding it would fail the start.
        let out = testkit::procs::run_to_exit(
            binary,
            &["--help"],
            &[
                ("INGEST_ADDR", addr.as_str()),
                ("GATEWAY_ADDR", addr.as_str()),
                ("PERSISTER_ADDR", addr.as_str()),
                ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{binary}");
        let help = String::from_utf8_lossy(&out.stdout);
        for d in DEFS.iter().filter(|d| d.used_by & users != 0) {
            assert!(help.contains(d.name), "{binary} --help lacks {}", d.name);
            assert!(
                help.contains(d.meaning),
                "{binary} --help lacks the meaning of {}",
                d.name
            );
        }
        for d in DEFS.iter().filter(|d| d.used_by & users == 0) {
            assert!(
                !help.contains(&format!("  {} ", d.name)),
                "{binary} does not read {}",
                d.name
            );
        }
        assert!(
            out.stderr.is_empty(),
            "{binary}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every metric name in a PromQL expression (names of Relay's and the process collector's families).
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("relay_") || w.starts_with("process_"))
        .map(|w| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| w.strip_suffix(s))
                .unwrap_or(w)
                .to_owned()
        })
        .collect()
}

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match v {
                    serde_json::Value::String(s) if k == "expr" => out.push(s.clone()),
                    other => exprs(other, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| exprs(i, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_metrics_the_services_export() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/relay.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    assert!(queries.len() >= 10, "the dashboard has its panels");

    // Families with labels appear once they have a series: post, replay and go live first.
    let relay = relay_with_everything().await;
    relay.publish("1".into()).await;
    let mut ws = relay.ws_connect("?since=0-0").await;
    ws.messages(1).await;
    relay.publish("2".into()).await;
    ws.messages(1).await;
    relay.wait_for_messages(2).await;
    let mut exported = BTreeSet::new();
    for url in [
        relay.ingest_url(),
        relay.persister_url(),
        relay.gateway_url(),
    ] {
        exported.extend(scrape(&url).await.families());
    }
    for q in &queries {
        for name in metric_names(q) {
            assert!(
                exported.contains(&name),
                "the dashboard queries {name}, which no service exports"
            );
        }
    }
}
