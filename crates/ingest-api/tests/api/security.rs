//! Issue 10 against ingest-api, slow clients and hostile bodies: each attack performed for real over real
//! sockets, then a well-behaved client is served (the limits on rates and bytes are in `limits.rs`, the
//! credentials, origins and hosts in `access.rs`). `CLIENT_TIMEOUT_MS` is short here so the tests are quick; the mechanism is the one
//! production runs with 15 s.

use std::time::{Duration, Instant};

use testkit::raw::{post_head, Raw};
use testkit::{test_settings, Relay};

use crate::publish::{assert_detail_names, assert_problem};

fn addr(app: &Relay) -> String {
    app.ingest_url().trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn sixteen_stalled_bodies_and_heads_are_closed_within_client_timeout_while_a_normal_post_is_served(
) {
    let mut settings = test_settings();
    settings.client_timeout_ms = 1000;
    let app = Relay::ingest_only(settings).await;
    let timeout = Duration::from_millis(1000);

    // 16 bodies that promise 16 MiB, send 64 KiB, then go silent; and 4 requests stuck in their head.
    let mut stalled = Vec::new();
    for _ in 0..16 {
        let mut raw = Raw::connect(&addr(&app)).await;
        assert!(
            raw.send(post_head("application/x-ndjson", 16 * 1024 * 1024 - 1).as_bytes())
                .await
        );
        assert!(raw.send(&[b' '; 64 * 1024]).await);
        stalled.push((raw, Instant::now()));
    }
    for _ in 0..4 {
        let mut raw = Raw::connect(&addr(&app)).await;
        assert!(
            raw.send(b"POST /messages HTTP/1.1\r\nhost: localhost\r\n")
                .await
        );
        stalled.push((raw, Instant::now()));
    }

    let started = Instant::now();
    let res = app.post_json(r#"{"well":"behaved"}"#).await;
    assert_eq!(res.status(), 202);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a normal POST waited {:?} behind the stalled ones",
        started.elapsed()
    );

    for (i, (mut raw, stalled_at)) in stalled.into_iter().enumerate() {
        let answer = raw.answer(timeout * 4).await;
        let closed_at = answer
            .closed_at
            .unwrap_or_else(|| panic!("stalled connection {i} still open: {answer:?}"));
        let after = closed_at - stalled_at;
        // Answered 408 at CLIENT_TIMEOUT_MS after the last byte, closed after a linger of at most a
        // quarter of it (so the client can read the 408); allow for scheduling on a shared machine.
        assert!(
            after < timeout * 5 / 4 + Duration::from_millis(500),
            "stalled connection {i} closed after {after:?}"
        );
        assert_eq!(answer.status, Some(408), "{i}: {}", answer.text);
    }
    assert_eq!(app.stream_len().await, 1, "only the well-behaved message");
}

#[tokio::test]
async fn bodies_over_max_inflight_bytes_get_503_with_retry_after_and_room_comes_back() {
    let mut settings = test_settings();
    settings.client_timeout_ms = 1500;
    settings.max_inflight_bytes = 100 * 1024;
    let app = Relay::ingest_only(settings).await;

    // One slow client holds 64 KiB of the 100 KiB: 60 KiB received, in the 64 KiB buffer a body
    // starts with, which is what counts.
    let mut hog = Raw::connect(&addr(&app)).await;
    assert!(
        hog.send(post_head("application/x-ndjson", 1024 * 1024).as_bytes())
            .await
    );
    assert!(hog.send(&[b' '; 60 * 1024]).await);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let refused = app.post_ndjson(vec![b' '; 40 * 1024]).await;
    assert!(refused.headers().contains_key("retry-after"));
    let problem = assert_problem(refused, 503).await;
    assert_detail_names(&problem, "MAX_INFLIGHT_BYTES");
    assert_eq!(app.post_json("1").await.status(), 202, "small bodies fit");

    // Once the hog is timed out its bytes are free again.
    assert_eq!(hog.answer(Duration::from_secs(5)).await.status, Some(408));
    let mut body = vec![b' '; 20 * 1024];
    body.extend_from_slice(b"\n2\n");
    assert_eq!(app.post_ndjson(body).await.status(), 202);
    assert_eq!(app.stream_len().await, 2);
}

#[tokio::test]
async fn a_two_mebibyte_ndjson_line_is_413_naming_the_line_and_nothing_is_written() {
    let app = Relay::ingest_only(test_settings()).await;
    let huge = format!("\"{}\"", "x".repeat(2 * 1024 * 1024));
    let body = format!("1\n{huge}\n3\n");
    let problem = assert_problem(app.post_ndjson(body).await, 413).await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("line 2") && detail.contains("MAX_BODY_BYTES"),
        "{problem}"
    );
    assert_eq!(app.stream_len().await, 0);
}

#[tokio::test]
async fn the_hostile_corpus_each_gets_its_4xx_and_nothing_is_written() {
    let app = Relay::ingest_only(test_settings()).await;
    for (what, content_type, body, status, slug) in hostile_bodies() {
        let problem = assert_problem(app.post_as(content_type, body).await, status).await;
        assert_eq!(problem["type"], format!("/problems/{slug}"), "{what}");
        if slug == "invalid-batch-line" && what.contains("middle") {
            assert_detail_names(&problem, "line 3");
        }
    }

    lying_and_oversized_requests_are_refused_or_closed(&app).await;

    assert_eq!(app.stream_len().await, 0, "nothing was written");
    assert_eq!(
        app.post_json("{}").await.status(),
        202,
        "and others are served"
    );
}

/// Bodies each refused with its problem before anything is written: what, content type, body, status,
/// problem type.
fn hostile_bodies() -> Vec<(&'static str, &'static str, Vec<u8>, u16, &'static str)> {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    vec![
        (
            "a truncated body",
            "application/json",
            br#"{"a":[1,2"#.to_vec(),
            400,
            "malformed-json",
        ),
        (
            "overlong UTF-8",
            "application/json",
            b"{\"a\":\"\xC0\xAF\"}".to_vec(),
            400,
            "invalid-utf8",
        ),
        (
            "10,000-deep nesting",
            "application/json",
            deep.clone().into_bytes(),
            400,
            "nesting-too-deep",
        ),
        (
            "10,000-deep nesting in a batch",
            "application/x-ndjson",
            format!("1\n{deep}\n").into_bytes(),
            400,
            "invalid-batch-line",
        ),
        (
            "a bad NDJSON line in the middle",
            "application/x-ndjson",
            b"{\"n\":1}\n{\"n\":2}\n{\"n\":\n{\"n\":4}\n".to_vec(),
            400,
            "invalid-batch-line",
        ),
    ]
}

/// Requests that lie about or overrun their size, on raw sockets: each is refused or closed.
async fn lying_and_oversized_requests_are_refused_or_closed(app: &Relay) {
    // A body shorter than its Content-Length, then the client hangs up its sending side.
    let mut raw = Raw::connect(&addr(app)).await;
    raw.send(post_head("application/json", 100).as_bytes())
        .await;
    raw.send(br#"{"a":1}"#).await;
    raw.finish().await;
    let answer = raw.answer(Duration::from_secs(5)).await;
    assert!(answer.closed_at.is_some(), "{answer:?}");
    assert!(
        answer.status.is_none_or(|s| (400..500).contains(&s)),
        "{answer:?}"
    );

    // 1 GiB declared, a few bytes sent: refused at once, before any of it is read.
    let mut raw = Raw::connect(&addr(app)).await;
    raw.send(post_head("application/json", 1 << 30).as_bytes())
        .await;
    raw.send(br#"{"a":1}"#).await;
    let answer = raw.answer(Duration::from_secs(2)).await;
    assert_eq!(answer.status, Some(413), "{answer:?}");

    // A 1 MiB header.
    let mut raw = Raw::connect(&addr(app)).await;
    let head = format!(
        "POST /messages HTTP/1.1\r\nhost: localhost\r\nx-big: {}\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}",
        "a".repeat(1 << 20)
    );
    raw.send(head.as_bytes()).await;
    let answer = raw.answer(Duration::from_secs(5)).await;
    assert!(
        answer.status.is_some_and(|s| s == 431 || s == 400),
        "{:?}",
        answer.status
    );
    assert!(answer.closed_at.is_some());
}
