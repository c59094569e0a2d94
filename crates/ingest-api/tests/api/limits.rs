//! The limits on rates and bytes (issue 10): `PUBLISH_RATE`, `MAX_STREAM_BYTES` and
//! `MAX_IDEMPOTENCY_BYTES`. Over each, a 429 or 503 with `Retry-After`, and nothing of the refused request
//! is written.

use std::time::Duration;

use testkit::{test_settings, Relay};

use crate::publish::{assert_detail_names, assert_problem};

#[tokio::test]
async fn a_burst_over_publish_rate_gets_429_with_retry_after_while_another_key_is_unaffected() {
    let mut settings = test_settings();
    settings.publish_rate = 5;
    settings.api_keys = "key-a:publish,key-b:publish".parse().unwrap();
    let app = Relay::ingest_only(settings).await;
    let post = |key: &'static str, content_type: &'static str, body: &'static str| {
        app.post_with_key(key, content_type, body)
    };
    assert_eq!(
        post("key-a", "application/x-ndjson", "1\n2\n3\n")
            .await
            .status(),
        202
    );
    for _ in 0..2 {
        assert_eq!(post("key-a", "application/json", "1").await.status(), 202);
    }
    let refused = post("key-a", "application/json", "6").await;
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let problem = assert_problem(refused, 429).await;
    assert_detail_names(&problem, "PUBLISH_RATE");
    assert_problem(post("key-a", "application/x-ndjson", "1\n2\n").await, 429).await;
    assert_eq!(
        post("key-b", "application/x-ndjson", "1\n2\n3\n4\n5\n")
            .await
            .status(),
        202,
        "another key has its own budget"
    );
    assert_eq!(app.stream_len().await, 10, "nothing of a refused request");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        post("key-a", "application/json", "7").await.status(),
        202,
        "the budget refills"
    );
}

#[tokio::test]
async fn without_api_keys_the_rate_is_per_client_address() {
    let app = with_rate(3).await;
    assert_eq!(app.post_ndjson("1\n2\n3").await.status(), 202);
    assert_problem(app.post_json("4").await, 429).await;
    assert_eq!(app.stream_len().await, 3);
}

/// The rate is checked from the line count, before any line is parsed: a client over its rate costs a
/// scan for newlines, not the parse of a 16 MiB batch. A batch over the rate with a broken line is
/// therefore a 429, not the 400 its parse would give.
#[tokio::test]
async fn a_batch_over_the_rate_is_refused_before_any_line_is_parsed() {
    let app = with_rate(2).await;
    let refused = app.post_ndjson("1\n2\n3\n{broken\n").await;
    assert_problem(refused, 429).await;
    assert_eq!(app.stream_len().await, 0);
}

/// An ingest-api whose `PUBLISH_RATE` is `per_second`.
async fn with_rate(per_second: u32) -> Relay {
    let mut settings = test_settings();
    settings.publish_rate = per_second;
    Relay::ingest_only(settings).await
}

#[tokio::test]
async fn posts_get_503_with_retry_after_while_the_stream_is_over_max_stream_bytes() {
    let mut settings = test_settings();
    settings.max_stream_bytes = 4096;
    let app = Relay::ingest_only(settings).await;
    let big = format!("\"{}\"", "x".repeat(8 * 1024));
    assert_eq!(app.post_json(big).await.status(), 202);
    let refused = testkit::poll_until(
        Duration::from_secs(3),
        || app.post_json("1"),
        |res| res.status() == 503,
    )
    .await;
    assert!(refused.headers().contains_key("retry-after"));
    let problem = assert_problem(refused, 503).await;
    assert_detail_names(&problem, "MAX_STREAM_BYTES");
    // Posts accepted before the sampler saw the stream over the limit are fine; refused ones write
    // nothing, however many.
    let before = app.stream_len().await;
    for _ in 0..5 {
        assert_eq!(app.post_json("1").await.status(), 503);
    }
    assert_eq!(
        app.stream_len().await,
        before,
        "refused posts write nothing"
    );
}

/// `MEMORY USAGE` without `SAMPLES 0` looks at five nodes, the oldest, and extrapolates: a stream of
/// many small entries followed by large ones is undercounted by orders of magnitude, and
/// `MAX_STREAM_BYTES` would not hold. Here 50,000 small entries then 24 of 1 MiB: sampled, about 3 MB;
/// exactly, about 28 MB.
#[tokio::test]
async fn max_stream_bytes_holds_for_large_entries_behind_many_small_ones() {
    let mut settings = test_settings();
    settings.max_stream_bytes = 16 * 1024 * 1024;
    let app = Relay::ingest_only(settings.clone()).await;
    let mut conn = testkit::redis(&settings);
    let mut small = redis::pipe();
    for i in 0..50_000 {
        small
            .xadd(
                &settings.stream_key,
                "*",
                &[("v", "1"), ("n", &i.to_string())],
            )
            .ignore();
    }
    small.query::<()>(&mut conn).unwrap();
    let big = "x".repeat(1024 * 1024);
    for _ in 0..24 {
        let _: String = redis::cmd("XADD")
            .arg(&settings.stream_key)
            .arg("*")
            .arg("pad")
            .arg(&big)
            .query(&mut conn)
            .unwrap();
    }
    assert!(
        testkit::stream::memory_usage(&settings) > settings.max_stream_bytes,
        "the set-up puts the stream over the limit"
    );
    let refused = testkit::poll_until(
        Duration::from_secs(3),
        || app.post_json("1"),
        |res| res.status() == 503,
    )
    .await;
    assert_problem(refused, 503).await;
}

/// Each Idempotency-Key record is kept 24 hours: without a bound, one credential posting with fresh
/// keys fills Redis with them. Over MAX_IDEMPOTENCY_BYTES a new key is refused (429, nothing written)
/// while repeats of kept keys, posts without a key and other credentials go on.
#[tokio::test]
async fn one_credentials_idempotency_records_are_bounded_in_bytes() {
    let mut settings = test_settings();
    settings.max_idempotency_bytes = 4096;
    settings.api_keys = "a:publish,b:publish".parse().unwrap();
    let app = Relay::ingest_only(settings).await;
    let post = |key: &'static str, idem: String| {
        app.client
            .post(format!("{}/messages", app.ingest_url()))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .header("idempotency-key", idem)
            .body("1")
            .send()
    };
    let mut accepted = 0;
    let refused = loop {
        let res = post("a", format!("key-{accepted}")).await.unwrap();
        if res.status() != 202 {
            break res;
        }
        accepted += 1;
        assert!(
            accepted < 100,
            "100 records of a 4 KiB budget were all kept"
        );
    };
    assert!(accepted >= 4, "only {accepted} records fit 4 KiB");
    assert!(refused.headers().contains_key("retry-after"));
    let problem = assert_problem(refused, 429).await;
    assert_detail_names(&problem, "MAX_IDEMPOTENCY_BYTES");
    assert_eq!(
        app.stream_len().await,
        accepted,
        "the refused post wrote nothing"
    );
    let repeat = post("a", "key-0".into()).await.unwrap();
    assert_eq!(
        repeat.status(),
        202,
        "a kept key still answers its first 202"
    );
    assert_eq!(
        post("b", "key-x".into()).await.unwrap().status(),
        202,
        "another credential has its own budget"
    );
    assert_eq!(app.stream_len().await, accepted + 1);
}
