//! `POST /messages`: what is accepted, and every bad input of the contract.

use testkit::{test_settings, Relay};

pub async fn assert_problem(res: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(res.status(), status);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], status);
    for field in ["type", "title", "detail"] {
        assert!(
            body[field].as_str().is_some_and(|s| !s.is_empty()),
            "problem without {field}: {body}"
        );
    }
    body
}

/// The problem's `detail` names `text` (a setting, a line).
pub fn assert_detail_names(problem: &serde_json::Value, text: &str) {
    assert!(
        problem["detail"].as_str().unwrap().contains(text),
        "{problem}"
    );
}

#[tokio::test]
async fn a_json_message_is_accepted_with_202_location_and_its_ids() {
    let app = Relay::ingest_only(test_settings()).await;
    let res = app.post_json(r#"{"hello":"world"}"#).await;
    assert_eq!(res.status(), 202);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let body: serde_json::Value = res.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    assert_eq!(location, format!("/messages/{id}"));
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    assert!(body["stream_id"]
        .as_str()
        .unwrap()
        .parse::<model::StreamId>()
        .is_ok());
    let at = body["received_at"].as_str().unwrap();
    assert!(
        at.ends_with('Z') && at.len() == "2026-11-24T20:00:00.123456Z".len(),
        "{at}"
    );
    assert_eq!(app.stream_len().await, 1);
}

#[tokio::test]
async fn a_charset_utf8_parameter_is_allowed() {
    let app = Relay::ingest_only(test_settings()).await;
    let res = app
        .post_as("application/json; charset=UTF-8", "[1,2]")
        .await;
    assert_eq!(res.status(), 202);
}

#[tokio::test]
async fn every_bad_input_answers_its_problem_and_writes_nothing() {
    let mut settings = test_settings();
    settings.max_body_bytes = 1024;
    let app = Relay::ingest_only(settings).await;
    let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
    let cases: Vec<(&str, Option<&str>, Vec<u8>, u16)> = vec![
        (
            "malformed JSON",
            Some("application/json"),
            b"{\"a\":".to_vec(),
            400,
        ),
        (
            "two values",
            Some("application/json"),
            b"{} {}".to_vec(),
            400,
        ),
        ("empty body", Some("application/json"), b"".to_vec(), 400),
        (
            "invalid UTF-8",
            Some("application/json"),
            b"\"\xff\xfe\"".to_vec(),
            400,
        ),
        (
            "nesting deeper than 128",
            Some("application/json"),
            deep.into_bytes(),
            400,
        ),
        (
            "over the size limit",
            Some("application/json"),
            format!("\"{}\"", "x".repeat(2000)).into_bytes(),
            413,
        ),
        ("no content type", None, b"{}".to_vec(), 415),
        ("text/plain", Some("text/plain"), b"{}".to_vec(), 415),
        (
            "another charset",
            Some("application/json; charset=latin1"),
            b"{}".to_vec(),
            415,
        ),
        (
            "a bad NDJSON line",
            Some("application/x-ndjson"),
            b"1\n{\"ok\":true}\n{oops\n".to_vec(),
            400,
        ),
    ];
    for (what, content_type, body, status) in cases {
        let mut req = app.post().body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let problem = assert_problem(req.send().await.unwrap(), status).await;
        if what == "a bad NDJSON line" {
            assert_detail_names(&problem, "line 3");
        }
    }
    assert_eq!(
        app.stream_len().await,
        0,
        "a rejected request wrote to the stream"
    );
}

#[tokio::test]
async fn nesting_of_exactly_128_levels_is_accepted() {
    let app = Relay::ingest_only(test_settings()).await;
    let res = app
        .post_json(format!("{}{}", "[".repeat(128), "]".repeat(128)))
        .await;
    assert_eq!(res.status(), 202);
}

#[tokio::test]
async fn an_ndjson_batch_is_accepted_in_line_order() {
    let app = Relay::ingest_only(test_settings()).await;
    let res = app.post_ndjson("{\"n\":1}\n\n[2]\r\n\"three\"\n").await;
    assert_eq!(res.status(), 202);
    let accepted: Vec<model::Accepted> = res.json().await.unwrap();
    assert_eq!(accepted.len(), 3);
    assert!(accepted.windows(2).all(|w| w[0].stream_id < w[1].stream_id));
    assert_eq!(app.stream_len().await, 3);
}

#[tokio::test]
async fn a_batch_over_the_line_limit_is_refused_whole() {
    let mut settings = test_settings();
    settings.max_batch_lines = 3;
    let app = Relay::ingest_only(settings).await;
    let res = app.post_ndjson("1\n2\n3\n4\n").await;
    assert_problem(res, 413).await;
    assert_eq!(app.stream_len().await, 0);
}

#[tokio::test]
async fn redis_unreachable_is_a_503_with_retry_after_not_a_hang() {
    let mut settings = test_settings();
    // A port where nothing listens.
    let free = testkit::procs::free_port();
    settings.redis_url = format!("redis://127.0.0.1:{free}");
    settings.redis_timeout_ms = 500;
    let app = Relay::ingest_only(settings).await;
    let started = std::time::Instant::now();
    let res = app.post_json("{}").await;
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert!(res.headers().contains_key("retry-after"));
    assert_problem(res, 503).await;
    assert_eq!(app.get("/readyz").await.status(), 503);
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn api_keys_guard_publish_and_read_by_scope() {
    let mut settings = test_settings();
    settings.api_keys = "pub-key:publish,read-key:read".parse().unwrap();
    let app = Relay::ingest_only(settings).await;
    let post = |key: Option<&'static str>| {
        let mut req = app
            .post()
            .header("content-type", "application/json")
            .body("{}");
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send()
    };
    assert_problem(post(None).await.unwrap(), 401).await;
    assert_problem(post(Some("wrong")).await.unwrap(), 401).await;
    assert_problem(post(Some("read-key")).await.unwrap(), 403).await;
    assert_eq!(post(Some("pub-key")).await.unwrap().status(), 202);
    let read = |key: &'static str| {
        app.client
            .get(format!("{}/messages", app.ingest_url()))
            .bearer_auth(key)
            .send()
    };
    assert_problem(read("pub-key").await.unwrap(), 403).await;
    assert_eq!(read("read-key").await.unwrap().status(), 200);
    assert_eq!(app.get("/healthz").await.status(), 200, "health stays open");
    assert_eq!(app.get("/metrics").await.status(), 200, "metrics stay open");
}

#[tokio::test]
async fn concurrent_repeats_of_one_idempotency_key_store_one_message_and_answer_one_id() {
    let app = std::sync::Arc::new(Relay::pipeline(test_settings()).await);
    let post = |key: &'static str, body: &'static str| {
        let app = std::sync::Arc::clone(&app);
        async move {
            app.post()
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let answers =
        futures_util::future::join_all((0..20).map(|_| post("order-42", r#"{"order":42}"#))).await;
    let mut bodies = Vec::new();
    for res in answers {
        assert_eq!(res.status(), 202);
        bodies.push(res.json::<serde_json::Value>().await.unwrap());
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every answer is the first one: {bodies:?}"
    );
    assert_eq!(app.stream_len().await, 1);

    let conflict = post("order-42", r#"{"order":43}"#).await;
    assert_problem(conflict, 409).await;
    let other = post("order-43", r#"{"order":42}"#).await;
    assert_eq!(other.status(), 202);
    assert_ne!(
        other.json::<serde_json::Value>().await.unwrap()["id"],
        bodies[0]["id"]
    );
    let stored = app.wait_for_messages(2).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0]["id"], bodies[0]["id"]);
    assert_eq!(app.row_count(), 2, "one row per key");

    let bad = app
        .post()
        .header("content-type", "application/json")
        .header("idempotency-key", "")
        .body("1")
        .send()
        .await
        .unwrap();
    assert_problem(bad, 400).await;
}

#[tokio::test]
async fn a_repeated_batch_with_its_idempotency_key_answers_the_first_array() {
    let app = Relay::ingest_only(test_settings()).await;
    let send = || {
        app.post()
            .header("content-type", "application/x-ndjson")
            .header("idempotency-key", "batch-1")
            .body("1\n2\n3\n")
            .send()
    };
    let first: serde_json::Value = send().await.unwrap().json().await.unwrap();
    let again = send().await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.json::<serde_json::Value>().await.unwrap(), first);
    assert_eq!(app.stream_len().await, 3);
}

#[tokio::test]
async fn posts_get_503_while_the_backlog_is_over_max_backlog_and_202_once_drained() {
    let mut settings = test_settings();
    settings.max_backlog = 5;
    let mut app = Relay::ingest_only(settings).await;
    for i in 0..8 {
        assert_eq!(app.post_json(i.to_string()).await.status(), 202);
    }
    tokio::time::sleep(ingest_api::publish::BACKLOG_REFRESH * 3).await;
    let refused = app.post_json("9").await;
    assert!(refused.headers().contains_key("retry-after"));
    let problem = assert_problem(refused, 503).await;
    assert_detail_names(&problem, "MAX_BACKLOG");
    assert_eq!(app.stream_len().await, 8, "nothing written while refused");

    app.start_persister().await;
    assert_eq!(app.wait_for_messages(8).await.len(), 8);
    tokio::time::sleep(ingest_api::publish::BACKLOG_REFRESH * 3).await;
    assert_eq!(app.post_json("10").await.status(), 202);
}
