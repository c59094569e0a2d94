//! Slow clients: one that stops reading is closed with 1013 while the others get everything; one on a
//! slow link catches up, from the gateway's recent frames or from the stream, and stays live.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use testkit::{stream_ids, test_settings, Relay};

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_with_1013_and_others_get_everything() {
    let mut settings = test_settings();
    // Each batch below is published to the hub at once, so the queue must hold one batch: the fast client
    // drains it before the next; the slow one never does.
    settings.ws_send_queue = 600;
    // A client whose queue filled has this long to catch up; this one does not read in that time.
    settings.ws_catch_up_ms = 1_000;
    let relay = Relay::live(settings).await;
    // The slow client: a tiny receive buffer, and it reads nothing until the gateway has judged it too
    // slow (past WS_CATCH_UP_MS). Then it reads what was buffered, and the 1013 close: at once, because a
    // client that still has not read within the close linger (at most 1 s) gets no close frame at all.
    // (Reading after a fixed sleep made this test fail under load: the publishing below took longer than
    // catch-up window + linger after the client fell behind.)
    let slow = testkit::ws::connect_slow(&relay.gateway_addr(), "").await;
    let slow = tokio::spawn(read_after_judged_too_slow(relay.gateway_url(), slow));
    let mut fast = relay.ws_connect("").await;

    // 20 × 500 messages of 1 KB: far more than the slow client's socket buffers and queue can hold.
    let (mut accepted, mut got) = (Vec::new(), Vec::new());
    for chunk in 0..20 {
        let lines = kilobyte_lines(chunk * 500..(chunk + 1) * 500);
        accepted.extend(relay.publish_batch(&lines).await);
        got.extend(fast.messages(500).await);
    }
    assert_eq!(
        stream_ids(&got),
        stream_ids(&accepted),
        "the fast client got everything, in order"
    );

    let (code, frames) = slow.await.unwrap();
    assert_eq!(code, Some(CloseCode::Again), "closed with 1013");
    assert!(
        frames < 10_000,
        "the slow client was cut off, not served everything ({frames})"
    );
}

/// Waits (up to 30 s) until the gateway counts a client too slow, then reads `slow` to its close: the
/// close code and the text frames before it. (A deadline for the whole read: server pings would keep a
/// per-frame one alive.)
async fn read_after_judged_too_slow(
    gateway_url: String,
    mut slow: testkit::ws::Socket,
) -> (Option<CloseCode>, usize) {
    let judged = tokio::time::Instant::now() + Duration::from_secs(30);
    while testkit::metrics::scrape(&gateway_url)
        .await
        .value("relay_gateway_slow_clients_total", &[])
        < 1.0
    {
        assert!(
            tokio::time::Instant::now() < judged,
            "the client that stopped reading was never judged too slow"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut frames = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let code = loop {
        match tokio::time::timeout_at(deadline, slow.next())
            .await
            .expect("the slow client was never closed")
        {
            Some(Ok(Message::Text(_))) => frames += 1,
            Some(Ok(Message::Close(c))) => break c.map(|c| c.code),
            Some(Ok(_)) => {}
            other => {
                panic!("connection ended without a close frame after {frames} frames: {other:?}")
            }
        }
    };
    (code, frames)
}

/// Messages `{"n":<i>,"pad":"xxx…"}` of about 1 KB, one line each.
fn kilobyte_lines(numbers: std::ops::Range<usize>) -> Vec<String> {
    let pad = "x".repeat(1000);
    numbers
        .map(|i| format!(r#"{{"n":{i},"pad":"{pad}"}}"#))
        .collect()
}

/// The next message posted reaches `ws` exactly once, after everything before it: it is live again.
async fn assert_live_again(relay: &Relay, ws: &mut testkit::ws::Ws) {
    let next = relay.publish(r#"{"after":"burst"}"#.into()).await;
    assert_eq!(stream_ids(&ws.messages(1).await), stream_ids(&[next]));
    ws.assert_quiet(Duration::from_millis(200)).await;
}

/// Reads `n` message frames the way a client on a slow link does: a pause every `pause_every` frames.
/// Panics on a close (a client cut off by the burst).
async fn read_slowly(
    ws: &mut testkit::ws::Ws,
    n: usize,
    pause_every: usize,
) -> Vec<serde_json::Value> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        got.extend(ws.messages(pause_every.min(n - got.len())).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    got
}

#[tokio::test]
async fn one_post_of_10000_lines_reaches_a_client_on_a_slow_link_whole_and_it_stays_live() {
    // The default WS_SEND_QUEUE (1,024): the post reaches the hub as ten reads of 1,000 back to back.
    let relay = Relay::live(test_settings()).await;
    let mut far = testkit::ws::Ws(testkit::ws::connect_slow(&relay.gateway_addr(), "").await);
    // 10 MB: more than the kernel's socket buffers absorb at once, as on a link far away.
    let accepted = relay.publish_batch(&kilobyte_lines(0..10_000)).await;

    let got = read_slowly(&mut far, 10_000, 500).await;
    assert_eq!(
        stream_ids(&got),
        stream_ids(&accepted),
        "every line, in order, once"
    );
    let scrape = testkit::metrics::scrape(&relay.gateway_url()).await;
    assert!(
        scrape.value("relay_gateway_catch_ups_total", &[]) >= 1.0,
        "the client fell behind and caught up (else this test proves nothing)"
    );
    assert_eq!(scrape.value("relay_gateway_slow_clients_total", &[]), 0.0);
    // Live again, exactly after the burst.
    assert_live_again(&relay, &mut far).await;
}

#[tokio::test]
async fn a_client_behind_more_than_the_recent_frames_catches_up_from_the_stream() {
    let mut settings = test_settings();
    // A queue of 20 keeps the 320 newest frames: a post of 5,000 reaches back further.
    settings.ws_send_queue = 20;
    let relay = Relay::live(settings).await;
    let mut far = testkit::ws::Ws(testkit::ws::connect_slow(&relay.gateway_addr(), "").await);
    let mut near = relay.ws_connect("").await;
    // 5 MB: more than the kernel's socket buffers hold for the far client, which reads nothing until the
    // near one has it all — by then the history no longer reaches back to where the far one stopped.
    let accepted = relay.publish_batch(&kilobyte_lines(0..5_000)).await;
    assert_eq!(
        stream_ids(&near.messages(5_000).await),
        stream_ids(&accepted)
    );

    let got = read_slowly(&mut far, 5_000, 500).await;
    assert_eq!(
        stream_ids(&got),
        stream_ids(&accepted),
        "every line, in order, once"
    );
    let replayed = testkit::metrics::scrape(&relay.gateway_url())
        .await
        .value("relay_gateway_frames_total", &[("kind", "replay")]);
    assert!(replayed > 0.0, "part of it came from the stream");
    assert_live_again(&relay, &mut far).await;
}

#[tokio::test]
async fn clients_that_all_fall_behind_at_once_are_closed_a_few_at_a_time() {
    let mut settings = test_settings();
    settings.ws_send_queue = 20;
    settings.ws_catch_up_ms = 500;
    let relay = Relay::live(settings).await;
    // Eight clients that read nothing: all fall behind with the same posts (10 MB, more than socket
    // buffers hold), all run out of window together.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        stalled.push(testkit::ws::connect_slow(&relay.gateway_addr(), "").await);
    }
    for chunk in 0..10 {
        relay
            .publish_batch(&kilobyte_lines(chunk * 1_000..(chunk + 1) * 1_000))
            .await;
    }
    // Eight sockets: one close per 100 ms step, so the eighth comes at least 700 ms after the first
    // (all at once, without the ration).
    let count = || async {
        testkit::metrics::scrape(&relay.gateway_url())
            .await
            .value("relay_gateway_slow_clients_total", &[])
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while count().await < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "nobody was closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = tokio::time::Instant::now();
    while count().await < 8.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all were closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let spread = first.elapsed();
    assert!(
        spread >= Duration::from_millis(500),
        "eight closes came within {spread:?} of each other"
    );
    drop(stalled);
}
