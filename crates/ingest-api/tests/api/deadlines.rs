//! The deadlines and the connection cap that every connection gets before actix sees it
//! (`service::connection`), attacked from raw sockets as a hostile client would: a second request head
//! left half-sent, a body trickled a byte at a time, responses never read, and more sockets than
//! `MAX_HTTP_CONNECTIONS`. Each test failed with its defence switched off.

use std::time::{Duration, Instant};

use testkit::db::with_connection;
use testkit::raw::{post_head, Raw};
use testkit::{test_settings, Relay};
use tokio::io::AsyncReadExt;

fn addr(app: &Relay) -> String {
    app.ingest_url().trim_start_matches("http://").to_owned()
}

/// Reads one response's bytes (enough to see its status line) without waiting for the connection to end.
async fn read_some(raw: &mut Raw) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.stream.read(&mut buf))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn a_half_sent_second_request_head_on_a_kept_alive_connection_is_closed_within_client_timeout(
) {
    let mut settings = test_settings();
    settings.client_timeout_ms = 1000;
    let app = Relay::ingest_only(settings).await;
    let mut raw = Raw::connect(&addr(&app)).await;
    assert!(
        raw.send(format!("{}1", post_head("application/json", 1)).as_bytes())
            .await
    );
    assert!(read_some(&mut raw).await.starts_with("HTTP/1.1 202"));
    // The next request starts, and then its head never ends: one header line every 300 ms.
    let started = Instant::now();
    assert!(raw.send(b"GET /messages HTTP/1.1\r\n").await);
    let mut answer = None;
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if !raw.send(format!("x-trickle-{i}: 1\r\n").as_bytes()).await {
            answer = Some(started.elapsed());
            break;
        }
        let closed = raw.answer(Duration::from_millis(1)).await.closed_at;
        if closed.is_some() {
            answer = Some(started.elapsed());
            break;
        }
    }
    let closed_after = answer.expect("the half-sent head still held its socket after 12 s");
    assert!(
        closed_after < Duration::from_millis(2500),
        "closed after {closed_after:?}, CLIENT_TIMEOUT_MS is 1 s"
    );
}

#[tokio::test]
async fn a_body_trickled_a_byte_at_a_time_is_cut_off_by_one_deadline_for_the_whole_body() {
    let mut settings = test_settings();
    settings.client_timeout_ms = 1000;
    let app = Relay::ingest_only(settings).await;
    let mut raw = Raw::connect(&addr(&app)).await;
    // Each byte comes well within CLIENT_TIMEOUT_MS of the last, so a per-chunk deadline never fires.
    assert!(
        raw.send(post_head("application/json", 100).as_bytes())
            .await
    );
    let started = Instant::now();
    let mut cut_off = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if !raw.send(b" ").await
            || raw
                .answer(Duration::from_millis(1))
                .await
                .closed_at
                .is_some()
        {
            cut_off = Some(started.elapsed());
            break;
        }
    }
    let after = cut_off.expect("a body trickled at 3 bytes/s was still being read after 12 s");
    assert!(
        after < Duration::from_millis(3000),
        "cut off after {after:?}"
    );
    assert_eq!(app.stream_len().await, 0, "nothing was written");
    // Everyone else is served.
    assert_eq!(app.post_json("1").await.status(), 202);
}

/// 16 clients ask for every message and never read a byte of the answer (4 KiB receive buffers). Each
/// is disconnected once its response has made no progress for CLIENT_TIMEOUT_MS: it then finds its
/// response cut short, not complete.
#[tokio::test]
async fn readers_that_never_read_their_response_are_disconnected_after_client_timeout() {
    let mut settings = test_settings();
    settings.client_timeout_ms = 1000;
    let app = Relay::ingest_only(settings).await;
    // 20,000 rows of 1 KB: far more than the socket buffers between a stalled reader and the server.
    with_connection(&app.settings, |conn| {
        crate::read::insert_rows(conn, 20_000, 1_000)
    })
    .await;
    let mut stalled = Vec::new();
    for _ in 0..16 {
        stalled.push(Raw::stalled_get(&addr(&app), "/messages").await);
    }
    // Other clients are served meanwhile.
    assert_eq!(app.get("/messages?limit=10").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    for (i, raw) in stalled.iter_mut().enumerate() {
        let answer = raw.answer(Duration::from_secs(10)).await;
        assert!(
            answer.closed_at.is_some(),
            "reader {i}: the connection is closed"
        );
        assert!(
            !answer.text.ends_with("0\r\n\r\n"),
            "reader {i} got its whole response ({} bytes): it was never disconnected",
            answer.text.len()
        );
    }
}

/// 8 clients pipeline requests for the OpenAPI document and never read an answer. actix-http's
/// dispatcher spins on such a connection (its read buffer holds 128 KiB of requests it cannot answer
/// yet) until CLIENT_TIMEOUT_MS, 30 s here: each is disconnected within a few seconds instead.
#[tokio::test]
async fn clients_that_pipeline_requests_and_never_read_are_disconnected_long_before_client_timeout()
{
    let mut settings = test_settings();
    settings.client_timeout_ms = 30_000;
    let app = Relay::ingest_only(settings).await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(Raw::pipelining_get(&addr(&app), "/openapi.json").await);
    }
    assert_eq!(app.post_json("1").await.status(), 202);
    // Unread until now: a connection the server still holds would start flowing again when read.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (i, raw) in clients.iter_mut().enumerate() {
        let answer = raw.answer(Duration::from_secs(5)).await;
        assert!(
            answer.closed_at.is_some(),
            "client {i} is still connected ({} bytes read)",
            answer.text.len()
        );
    }
}

/// Clients that pipeline 1,000 requests every 20 ms and each time read all the answers that arrived: the
/// server's writes make progress every 20 ms, so none waits for long, but between the reads the
/// dispatcher spins on requests it cannot answer yet. Each is disconnected too.
#[tokio::test]
async fn clients_that_pipeline_requests_faster_than_they_read_the_answers_are_disconnected() {
    let mut settings = test_settings();
    settings.client_timeout_ms = 30_000;
    let app = Relay::ingest_only(settings).await;
    let requests = "GET /openapi.json HTTP/1.1\r\nhost: localhost\r\n\r\n".repeat(1000);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let stream = tokio::net::TcpStream::connect(addr(&app)).await.unwrap();
        clients.push((stream, Some(0usize)));
    }
    let mut chunk = [0u8; 16 * 1024];
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        for (stream, read) in clients.iter_mut() {
            let Some(total) = read else { continue };
            let _ = stream.try_write(requests.as_bytes());
            let mut this_tick = 0;
            *read = loop {
                match stream.try_read(&mut chunk) {
                    Ok(0) => break None,
                    Ok(n) => this_tick += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        break Some(*total + this_tick)
                    }
                    Err(_) => break None,
                }
            };
        }
    }
    for (i, (_, read)) in clients.iter().enumerate() {
        assert_eq!(*read, None, "client {i} is still connected after 3 s");
    }
}

#[tokio::test]
async fn connections_over_max_http_connections_get_503_and_room_comes_back() {
    let mut settings = test_settings();
    settings.max_http_connections = 8;
    let app = Relay::ingest_only(settings).await;
    // Twelve sockets that send nothing: eight are held (fewer if the harness still holds one), and
    // every other one is told why at once and closed.
    let mut held = Vec::new();
    for _ in 0..12 {
        held.push(Raw::connect(&addr(&app)).await);
    }
    let answers = futures_util::future::join_all(
        held.iter_mut()
            .map(|raw| raw.answer(Duration::from_secs(1))),
    )
    .await;
    let refused: Vec<_> = answers.iter().filter(|a| a.closed_at.is_some()).collect();
    assert!(
        refused.len() >= 4,
        "{} of 12 refused: {answers:?}",
        refused.len()
    );
    for answer in refused {
        assert_eq!(answer.status, Some(503), "{}", answer.text);
        assert!(
            answer.text.contains("MAX_HTTP_CONNECTIONS"),
            "{}",
            answer.text
        );
    }
    drop(held);
    let served = testkit::poll_until(
        Duration::from_secs(5),
        || app.post_json("1"),
        |res| res.status() == 202,
    )
    .await;
    assert_eq!(served.status(), 202, "room comes back when sockets close");
}
