//! Live delivery, resume without gap or duplicate, the gap frame, slow clients, and refusals.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use testkit::{stream_ids, test_settings, Relay, Seen};

#[tokio::test]
async fn every_posted_message_reaches_a_socket_in_order_with_its_payload() {
    let relay = Relay::live(test_settings()).await;
    let mut ws = relay.ws_connect("").await;
    let mut accepted = Vec::new();
    for i in 0..200 {
        accepted.push(
            relay
                .publish(format!(
                    r#"{{"i":{i},"big":123456789012345678901234567890}}"#
                ))
                .await,
        );
    }
    let got = ws.messages(200).await;
    assert_eq!(stream_ids(&got), stream_ids(&accepted));
    for (i, (m, a)) in got.iter().zip(&accepted).enumerate() {
        assert_eq!(m["id"], a["id"]);
        assert_eq!(m["received_at"], a["received_at"]);
        assert_eq!(m["payload"]["i"], i);
    }
    // The payload text itself is unchanged (no float rounding of the big number).
    relay
        .publish(r#"{"n":123456789012345678901234567890}"#.into())
        .await;
    let raw = match ws.0.next().await.unwrap().unwrap() {
        Message::Text(t) => t.to_string(),
        other => panic!("{other:?}"),
    };
    assert!(
        raw.ends_with(r#""payload":{"n":123456789012345678901234567890}}}"#),
        "{raw}"
    );
}

#[tokio::test]
async fn a_reconnect_with_since_gets_exactly_the_missing_messages_then_live_ones_while_posts_continue(
) {
    let relay = std::sync::Arc::new(Relay::live(test_settings()).await);
    let mut ws = relay.ws_connect("").await;
    let mut accepted = Vec::new();
    for i in 0..50 {
        accepted.push(relay.publish(format!("{i}")).await);
    }
    let first = ws.messages(50).await;
    let since = first.last().unwrap()["stream_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ws.close().await;

    for i in 50..100 {
        accepted.push(relay.publish(format!("{i}")).await);
    }
    // Keep posting while the client reconnects and replays, so live frames and the replay overlap.
    let poster = {
        let relay = std::sync::Arc::clone(&relay);
        tokio::spawn(async move {
            let mut more = Vec::new();
            for i in 100..400 {
                more.push(relay.publish(format!("{i}")).await);
            }
            more
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut ws = relay.ws_connect(&format!("?since={since}")).await;
    accepted.extend(poster.await.unwrap());
    let rest = ws.messages(350).await;
    assert_eq!(
        stream_ids(&rest),
        stream_ids(&accepted[50..]),
        "exactly the missing ones, then live, in order"
    );
    ws.assert_quiet(Duration::from_millis(300)).await;
}

/// `relay` (which must run a persister) with 20 messages stored in Postgres, of which the stream holds
/// only the last ten (trimmed as the persister's retention would once they are stored); their stream ids.
async fn twenty_stored_and_ten_trimmed(relay: Relay) -> (Relay, Vec<String>) {
    let accepted = relay.publish_numbers(20).await;
    let ids = stream_ids(&accepted);
    assert_eq!(testkit::wait_for_rows(&relay.settings, 20).await, 20);
    testkit::trim(&relay.settings, "MINID", &ids[10]);
    (relay, ids)
}

/// Deletes the stored messages up to and including `through`, and records how far it went, as
/// `HISTORY_RETENTION` does.
async fn delete_history_through(relay: &Relay, through: &str) {
    let (ms, seq) = through.split_once('-').unwrap();
    let deleted = format!("DELETE FROM messages WHERE (stream_ms, stream_seq) <= ({ms}, {seq})");
    testkit::db::execute(&relay.settings, deleted).await;
    let horizon =
        format!("INSERT INTO history_horizon (stream_ms, stream_seq) VALUES ({ms}, {seq})");
    testkit::db::execute(&relay.settings, horizon).await;
}

/// Resume from any point of history: what the stream no longer holds comes from Postgres, then the
/// stream, with no gap; only messages `HISTORY_RETENTION` deleted are a gap, announced first.
#[tokio::test]
async fn a_since_older_than_the_stream_is_replayed_from_postgres_and_only_deleted_history_is_a_gap()
{
    let (relay, ids) =
        twenty_stored_and_ten_trimmed(testkit::spawn_relay(test_settings()).await).await;

    let mut ws = relay.ws_connect(&format!("?since={}", ids[2])).await;
    let replayed = ws.messages(17).await;
    assert_eq!(
        stream_ids(&replayed),
        ids[3..],
        "from Postgres, then the stream: no gap"
    );
    ws.assert_quiet(Duration::from_millis(300)).await;

    // HISTORY_RETENTION deletes the oldest six rows.
    delete_history_through(&relay, &ids[5]).await;
    let mut ws = relay.ws_connect(&format!("?since={}", ids[2])).await;
    let gap = ws.frame().await;
    assert_eq!(
        gap,
        serde_json::json!({"type": "gap", "since": ids[2], "oldest": ids[6]})
    );
    assert_eq!(stream_ids(&ws.messages(14).await), ids[6..]);

    // A `since` inside what the stream still holds needs neither.
    let mut ws = relay.ws_connect(&format!("?since={}", ids[15])).await;
    assert_eq!(stream_ids(&ws.messages(4).await), ids[16..]);

    // A stream trimmed to nothing still knows it held entries: they all come from Postgres.
    testkit::trim(&relay.settings, "MAXLEN", 0);
    let mut ws = relay.ws_connect(&format!("?since={}", ids[10])).await;
    assert_eq!(stream_ids(&ws.messages(9).await), ids[11..]);
    ws.assert_quiet(Duration::from_millis(300)).await;
}

/// A replay from Postgres that fails after it read the history horizon, before its first page, tries
/// again and still starts with the `gap` for the deleted history: the retry must not start past it.
#[tokio::test]
async fn a_history_replay_that_fails_before_its_first_page_still_announces_the_gap() {
    let pipeline = Relay::pipeline(test_settings()).await;
    let (mut relay, ids) = twenty_stored_and_ten_trimmed(pipeline).await;
    delete_history_through(&relay, &ids[5]).await;
    let gate = relay
        .start_gateway_held(push_gateway::test_hooks::Seam::BeforeHistoryPage)
        .await;
    let mut ws = relay.ws_connect(&format!("?since={}", ids[2])).await;
    tokio::time::timeout(Duration::from_secs(10), gate.reached())
        .await
        .expect("the replay read the horizon");
    // Its first page fails: the table is away.
    testkit::db::execute(
        &relay.settings,
        "ALTER TABLE messages RENAME TO messages_away",
    )
    .await;
    gate.release();
    tokio::time::timeout(Duration::from_secs(10), gate.reached())
        .await
        .expect("the replay tried again");
    testkit::db::execute(
        &relay.settings,
        "ALTER TABLE messages_away RENAME TO messages",
    )
    .await;
    gate.release();
    assert_eq!(
        ws.frame().await,
        serde_json::json!({"type": "gap", "since": ids[2], "oldest": ids[6]})
    );
    assert_eq!(stream_ids(&ws.messages(14).await), ids[6..]);
}

/// A gateway whose Postgres is away stays ready and serves what the stream holds; a `since` older than
/// that waits a while for Postgres, then gets a 503 `error` frame and a 1013 close, on a connection or on
/// a subscribe frame — never a `gap` for messages that exist, never a silent skip.
#[tokio::test]
async fn with_postgres_away_an_older_since_gets_an_error_frame_and_1013_never_a_gap() {
    let (relay, ids) =
        twenty_stored_and_ten_trimmed(testkit::spawn_relay(test_settings()).await).await;
    let mut away = relay.settings.clone();
    away.database_url = "postgres://postgres@127.0.0.1:1/relay".into();
    away.gateway_addr = "127.0.0.1:0".parse().unwrap();
    let gateway = testkit::spawn_gateway(away).await; // ready: it waited for /readyz
    let addr = gateway.url().trim_start_matches("http://").to_owned();

    let started = std::time::Instant::now();
    let by_connection = async {
        let mut ws = testkit::Ws(
            testkit::ws::connect(&addr, &format!("?since={}", ids[2]))
                .await
                .unwrap(),
        );
        let error = ws.frame().await;
        assert_eq!(
            (&error["type"], &error["status"]),
            (&"error".into(), &503.into()),
            "{error}"
        );
        assert!(
            error["title"]
                .as_str()
                .unwrap()
                .contains("history unavailable"),
            "{error}"
        );
        assert!(error.get("channel").is_none(), "{error}");
        match ws.next().await {
            Seen::Closed(Some(c)) => assert_eq!(c.code, CloseCode::Again),
            other => panic!("expected a 1013 close, got {other:?}"),
        }
    };
    let by_frame = async {
        let mut ws = testkit::Ws(testkit::ws::connect(&addr, "?channels=").await.unwrap());
        let subscribe = serde_json::json!({"type": "subscribe", "channel": "*", "since": ids[2]});
        ws.0.send(Message::Text(subscribe.to_string().into()))
            .await
            .unwrap();
        assert_eq!(ws.frame().await["type"], "subscribed");
        let error = ws.frame().await;
        assert_eq!(
            (&error["status"], &error["channel"]),
            (&503.into(), &"*".into()),
            "{error}"
        );
        match ws.next().await {
            Seen::Closed(Some(c)) => assert_eq!(c.code, CloseCode::Again),
            other => panic!("expected a 1013 close, got {other:?}"),
        }
    };
    tokio::join!(by_connection, by_frame);
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "it waited for Postgres first: {:?}",
        started.elapsed()
    );

    // What the stream holds is served all the same.
    let mut ws = testkit::Ws(
        testkit::ws::connect(&addr, &format!("?since={}", ids[15]))
            .await
            .unwrap(),
    );
    assert_eq!(stream_ids(&ws.messages(4).await), ids[16..]);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_with_1013_and_others_get_everything() {
    let mut settings = test_settings();
    // Each batch below is published to the hub at once, so the queue must hold one batch: the fast client
    // drains it before the next; the slow one never does.
    settings.ws_send_queue = 600;
    // A client whose queue filled has this long to catch up; this one does not read in that time.
    settings.ws_catch_up_ms = 1_000;
    let relay = Relay::live(settings).await;
    // The slow client: a tiny receive buffer, and it reads nothing until the end.
    let mut slow = testkit::ws::connect_slow(&relay.gateway_addr(), "").await;
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

    // The slow client, still not reading past WS_CATCH_UP_MS, now reads what was buffered, and then the
    // 1013 close. (A deadline for the whole read: server pings would keep a per-frame one alive.)
    tokio::time::sleep(Duration::from_millis(1_500)).await;
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
    assert_eq!(code, Some(CloseCode::Again), "closed with 1013");
    assert!(
        frames < 10_000,
        "the slow client was cut off, not served everything ({frames})"
    );
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
async fn refusals_bad_since_foreign_origin_missing_key_and_the_connection_cap() {
    let mut settings = test_settings();
    settings.allowed_origins = "http://allowed.example".parse().unwrap();
    settings.api_keys = "sub:subscribe,pub:publish".parse().unwrap();
    settings.max_connections = 1;
    let relay = Relay::live(settings).await;
    let base = format!("http://{}/ws", relay.gateway_addr());
    let handshake = |url: String, origin: Option<&'static str>| {
        let mut req = relay
            .client
            .get(url)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        async move { req.send().await.unwrap() }
    };
    assert_eq!(handshake(base.clone(), None).await.status(), 401);
    assert_eq!(
        handshake(format!("{base}?access_token=pub"), None)
            .await
            .status(),
        403
    );
    assert_eq!(
        handshake(format!("{base}?access_token=sub&since=nope"), None)
            .await
            .status(),
        400
    );
    let foreign = handshake(
        format!("{base}?access_token=sub"),
        Some("http://evil.example"),
    )
    .await;
    assert_eq!(foreign.status(), 403);
    assert_eq!(
        foreign.headers()["content-type"],
        "application/problem+json"
    );

    let mut first = relay.ws_connect("?access_token=sub").await;
    let refused = handshake(
        format!("{base}?access_token=sub"),
        Some("http://allowed.example"),
    )
    .await;
    assert_eq!(refused.status(), 503, "over MAX_CONNECTIONS");
    let posted = relay.post_with_key("pub", "application/json", "1").await;
    assert_eq!(posted.status(), 202);
    assert!(matches!(first.next().await, Seen::Frame(_)));
    assert_eq!(
        relay
            .get_url(format!("http://{}/healthz", relay.gateway_addr()))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_gateway_restart_closes_clients_with_1001_and_they_resume_with_since() {
    let mut relay = Relay::live(test_settings()).await;
    let mut ws = relay.ws_connect("").await;
    let first = relay.publish("1".into()).await;
    assert_eq!(ws.messages(1).await[0]["stream_id"], first["stream_id"]);
    let port = relay.gateway_port();
    relay.stop_gateway().await;
    match ws.next().await {
        Seen::Closed(Some(c)) => assert_eq!(c.code, CloseCode::Away),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    let during: Vec<_> = relay.publish_numbers(10).await;
    relay.start_gateway(Some(port)).await;
    let mut ws = relay
        .ws_connect(&format!("?since={}", first["stream_id"].as_str().unwrap()))
        .await;
    assert_eq!(stream_ids(&ws.messages(10).await), stream_ids(&during));
    ws.assert_quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_client_that_saw_no_message_resumes_from_the_hello_position() {
    let relay = Relay::live(test_settings()).await;
    relay.publish("\"before\"".into()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ws = relay.ws_connect("").await;
    let hello = match ws.next_any().await {
        Seen::Frame(f) => f,
        other => panic!("{other:?}"),
    };
    assert_eq!(hello["type"], "hello");
    let position = hello["position"].as_str().unwrap().to_owned();
    ws.close().await;
    let missed = relay.publish("\"while away\"".into()).await;
    let mut ws = relay.ws_connect(&format!("?since={position}")).await;
    let got = ws.messages(1).await;
    assert_eq!(
        got[0]["id"], missed["id"],
        "exactly what was posted while away, nothing older"
    );
    ws.assert_quiet(Duration::from_millis(200)).await;
}
