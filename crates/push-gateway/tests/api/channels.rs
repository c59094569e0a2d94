//! Channels on the gateway (contract v1.2, "Subscriptions"): a socket subscribes with `?channels=` to
//! patterns, gets exactly their messages — live, replayed and caught up — in stream order, and a set of
//! patterns that would send a message twice, or too many, refuses the upgrade.

use std::time::Duration;

use testkit::{test_settings, Relay};

fn channel_and_n(messages: &[serde_json::Value]) -> Vec<(String, i64)> {
    messages
        .iter()
        .map(|m| {
            (
                m["channel"].as_str().unwrap().to_owned(),
                m["payload"]["n"].as_i64().unwrap(),
            )
        })
        .collect()
}

async fn publish_mixed(relay: &Relay, from: i64) {
    for (i, channel) in ["chat.a", "other", "news", "chat.b", "default"]
        .iter()
        .enumerate()
    {
        relay
            .publish_to(channel, format!(r#"{{"n":{}}}"#, from + i as i64))
            .await;
    }
}

#[tokio::test]
async fn a_socket_on_patterns_gets_exactly_their_messages_in_stream_order() {
    let relay = Relay::live(test_settings()).await;
    let mut subscribed = relay.ws_connect("?channels=chat.*,news").await;
    let mut everything = relay.ws_connect("").await;
    publish_mixed(&relay, 0).await;
    let got = channel_and_n(&subscribed.messages(3).await);
    assert_eq!(
        got,
        [
            ("chat.a".into(), 0),
            ("news".into(), 2),
            ("chat.b".into(), 3)
        ]
    );
    subscribed.assert_quiet(Duration::from_millis(300)).await;
    let all = channel_and_n(&everything.messages(5).await);
    assert_eq!(
        all.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
        ["chat.a", "other", "news", "chat.b", "default"],
        "without ?channels= a socket gets every channel, each message naming its own"
    );
}

/// `relay_gateway_subscriptions` counts the patterns of every open socket.
#[tokio::test]
async fn the_subscriptions_gauge_counts_every_sockets_patterns() {
    let relay = Relay::live(test_settings()).await;
    let gauge = || async {
        testkit::metrics::scrape(&relay.gateway_url())
            .await
            .value("relay_gateway_subscriptions", &[])
    };
    let two = relay.ws_connect("?channels=a,b.*").await;
    let one = relay.ws_connect("").await;
    let seen = testkit::poll_until(Duration::from_secs(5), gauge, |n| *n == 3.0).await;
    assert_eq!(seen, 3.0);
    two.close().await;
    one.close().await;
    let seen = testkit::poll_until(Duration::from_secs(5), gauge, |n| *n == 0.0).await;
    assert_eq!(seen, 0.0);
}

#[tokio::test]
async fn a_socket_resumed_with_since_replays_only_its_channels_then_goes_live() {
    let relay = Relay::live(test_settings()).await;
    publish_mixed(&relay, 0).await;
    let mut ws = relay.ws_connect("?since=0-0&channels=news,default").await;
    assert_eq!(
        channel_and_n(&ws.messages(2).await),
        [("news".into(), 2), ("default".into(), 4)]
    );
    publish_mixed(&relay, 10).await;
    assert_eq!(
        channel_and_n(&ws.messages(2).await),
        [("news".into(), 12), ("default".into(), 14)]
    );
    ws.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn an_empty_channels_opens_a_socket_with_no_subscription() {
    let relay = Relay::live(test_settings()).await;
    let mut ws = relay.ws_connect("?channels=").await;
    let hello = ws.next_any().await;
    assert!(matches!(hello, testkit::ws::Seen::Frame(f) if f["type"] == "hello"));
    publish_mixed(&relay, 0).await;
    ws.assert_quiet(Duration::from_millis(300)).await;
}

async fn refused(relay: &Relay, query: &str) -> Option<u16> {
    testkit::ws::upgrade(format!("ws://{}/ws{query}", relay.gateway_addr()))
        .await
        .err()
}

#[tokio::test]
async fn overlapping_malformed_or_too_many_patterns_refuse_the_upgrade() {
    let mut settings = test_settings();
    settings.max_subscriptions = 2;
    let relay = Relay::live(settings).await;
    assert_eq!(
        refused(&relay, "?channels=chat.*,chat.room1").await,
        Some(409)
    );
    assert_eq!(refused(&relay, "?channels=*,news").await, Some(409));
    assert_eq!(refused(&relay, "?channels=a%20b").await, Some(400));
    assert_eq!(refused(&relay, "?channels=a*b").await, Some(400));
    assert_eq!(refused(&relay, "?channels=a,b,c").await, Some(429));
    assert_eq!(refused(&relay, "?channels=a,b").await, None);
}

/// A key whose patterns are `chat.*` may subscribe to what they cover and nothing else — not to
/// every channel, which a socket without `?channels=` asks for.
#[tokio::test]
async fn a_key_subscribes_only_to_patterns_its_own_cover() {
    let mut settings = test_settings();
    settings.api_keys = "sub:subscribe:chat.*,pub:publish".parse().unwrap();
    let relay = Relay::live(settings).await;
    assert_eq!(
        refused(&relay, "?access_token=sub&channels=chat.*").await,
        None
    );
    assert_eq!(
        refused(&relay, "?access_token=sub&channels=chat.room1,chat.b.*").await,
        None
    );
    assert_eq!(refused(&relay, "?access_token=sub").await, Some(403));
    assert_eq!(
        refused(&relay, "?access_token=sub&channels=news").await,
        Some(403)
    );
    assert_eq!(
        refused(&relay, "?access_token=sub&channels=chat*").await,
        Some(403)
    );
}

/// A socket opened with a token is closed with 4001 when the token's `exp` passes, so that the client
/// asks its back end for a new one; a token that does not cover the channels is refused at the upgrade.
#[tokio::test]
async fn a_socket_opened_with_a_token_is_closed_with_4001_when_it_expires() {
    let mut settings = test_settings();
    settings.token_secret = testkit::TOKEN_SECRET.parse().unwrap();
    let relay = Relay::live(settings).await;
    let token = testkit::token(
        2,
        serde_json::json!({"scope": "subscribe", "channels": ["chat.*"]}),
    );
    assert_eq!(
        refused(&relay, &format!("?access_token={token}")).await,
        Some(403),
        "* is not covered"
    );
    let mut ws = relay
        .ws_connect(&format!("?access_token={token}&channels=chat.*"))
        .await;
    let started = std::time::Instant::now();
    loop {
        match ws.next_any().await {
            testkit::ws::Seen::Frame(_) => continue,
            testkit::ws::Seen::Closed(close) => {
                let code: u16 = close.expect("a close frame").code.into();
                assert_eq!(code, 4001);
                break;
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed at expiry, not later"
    );
    let expired = testkit::token(
        -1,
        serde_json::json!({"scope": "subscribe", "channels": ["*"]}),
    );
    assert_eq!(
        refused(&relay, &format!("?access_token={expired}")).await,
        Some(401)
    );
}

async fn send_frame(ws: &mut testkit::Ws, frame: serde_json::Value) {
    use futures_util::SinkExt;
    ws.0.send(tokio_tungstenite::tungstenite::Message::Text(
        frame.to_string().into(),
    ))
    .await
    .unwrap();
}

/// Over an open socket, `subscribe` (with or without `since`) and `unsubscribe` frames change what it
/// gets: each answered, a subscription's history replayed then live with nothing twice, and after
/// `unsubscribed` no message of it.
#[tokio::test]
async fn subscribe_and_unsubscribe_frames_change_a_sockets_channels() {
    let relay = Relay::live(test_settings()).await;
    publish_mixed(&relay, 0).await; // chat.a 0, other 1, news 2, chat.b 3, default 4
    let mut ws = relay.ws_connect("?channels=").await;
    let hello = ws.next_any().await;
    assert!(matches!(hello, testkit::Seen::Frame(f) if f["type"] == "hello"));

    send_frame(
        &mut ws,
        serde_json::json!({"type": "subscribe", "channel": "chat.*"}),
    )
    .await;
    let answer = ws.frame().await;
    assert_eq!(answer["type"], "subscribed");
    assert_eq!(answer["channel"], "chat.*");
    send_frame(
        &mut ws,
        serde_json::json!({"type": "subscribe", "channel": "news", "since": "0-0"}),
    )
    .await;
    let answer = ws.frame().await;
    assert_eq!(
        answer,
        serde_json::json!({"type": "subscribed", "channel": "news", "position": "0-0"})
    );
    assert_eq!(
        channel_and_n(&ws.messages(1).await),
        [("news".into(), 2)],
        "news's history"
    );

    publish_mixed(&relay, 10).await;
    assert_eq!(
        channel_and_n(&ws.messages(3).await),
        [
            ("chat.a".into(), 10),
            ("news".into(), 12),
            ("chat.b".into(), 13)
        ],
        "both live, in stream order, nothing twice"
    );
    send_frame(
        &mut ws,
        serde_json::json!({"type": "unsubscribe", "channel": "chat.*"}),
    )
    .await;
    assert_eq!(
        ws.frame().await,
        serde_json::json!({"type": "unsubscribed", "channel": "chat.*"})
    );
    publish_mixed(&relay, 20).await;
    assert_eq!(channel_and_n(&ws.messages(1).await), [("news".into(), 22)]);
    ws.assert_quiet(Duration::from_millis(300)).await;
}

/// A refused frame gets an error frame naming its pattern and status, and the socket stays open.
#[tokio::test]
async fn a_refused_subscribe_gets_an_error_frame_and_the_socket_stays_open() {
    let mut settings = test_settings();
    settings.max_subscriptions = 2;
    settings.api_keys = "sub:subscribe:chat.*|news,pub:publish".parse().unwrap();
    let relay = Relay::live(settings).await;
    let mut ws = relay.ws_connect("?access_token=sub&channels=chat.*").await;
    let status =
        |f: serde_json::Value| (f["type"].clone(), f["status"].clone(), f["channel"].clone());
    for (frame, expected) in [
        (
            serde_json::json!({"type": "subscribe", "channel": "chat.room1"}),
            (409, "chat.room1"),
        ),
        (
            serde_json::json!({"type": "subscribe", "channel": "a b"}),
            (400, "a b"),
        ),
        (
            serde_json::json!({"type": "subscribe", "channel": "other"}),
            (403, "other"),
        ),
        (
            serde_json::json!({"type": "unsubscribe", "channel": "news"}),
            (404, "news"),
        ),
    ] {
        send_frame(&mut ws, frame).await;
        assert_eq!(
            status(ws.frame().await),
            (
                serde_json::json!("error"),
                serde_json::json!(expected.0),
                serde_json::json!(expected.1)
            )
        );
    }
    send_frame(
        &mut ws,
        serde_json::json!({"type": "subscribe", "channel": "news"}),
    )
    .await;
    assert_eq!(ws.frame().await["type"], "subscribed");
    send_frame(
        &mut ws,
        serde_json::json!({"type": "subscribe", "channel": "chat2"}),
    )
    .await;
    assert_eq!(ws.frame().await["status"], 429, "over MAX_SUBSCRIPTIONS");
    send_frame(&mut ws, serde_json::json!("not a command")).await;
    let f = ws.frame().await;
    assert_eq!(
        (f["type"].clone(), f["status"].clone()),
        (serde_json::json!("error"), serde_json::json!(400))
    );
    assert!(f.get("channel").is_none(), "{f}");
    // Still open, and subscribed to news.
    let posted = relay
        .client
        .post(format!("{}/channels/news/messages", relay.ingest_url()))
        .bearer_auth("pub")
        .header("content-type", "application/json")
        .body(r#"{"n":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    assert_eq!(channel_and_n(&ws.messages(1).await), [("news".into(), 1)]);
}

/// A subscription with `since` while messages keep coming: its history, then live, each once and in
/// order across the switch, while another channel's messages flow past.
#[tokio::test]
async fn a_subscribe_frame_with_since_switches_from_history_to_live_without_gap_or_duplicate() {
    let relay = Relay::live(test_settings()).await;
    let mut ws = relay.ws_connect("?channels=").await;
    // A long history (2,000 messages of 2 KB), so the replay is still running while more arrive.
    let pad = "x".repeat(2_000);
    for chunk in 0..4 {
        for channel in ["news", "other"] {
            let lines: Vec<String> = (0..250)
                .map(|i| {
                    let n = chunk * 500 + i * 2 + usize::from(channel == "other");
                    format!(r#"{{"n":{n},"pad":"{pad}"}}"#)
                })
                .collect();
            let res = relay
                .post_to(channel, "application/x-ndjson", lines.join("\n"))
                .await;
            assert_eq!(res.status(), 202);
        }
    }
    let url = relay.ingest_url();
    let more = tokio::spawn(async move {
        let client = reqwest::Client::new();
        for n in 2000..2200 {
            let channel = if n % 2 == 0 { "news" } else { "other" };
            let res = client
                .post(format!("{url}/channels/{channel}/messages"))
                .header("content-type", "application/json")
                .body(format!(r#"{{"n":{n}}}"#))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 202);
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    send_frame(
        &mut ws,
        serde_json::json!({"type": "subscribe", "channel": "news", "since": "0-0"}),
    )
    .await;
    let mut got = Vec::new();
    while got.len() < 1_100 {
        let f = ws.frame().await;
        match f["type"].as_str() {
            Some("message") => got.push(f["data"]["payload"]["n"].as_i64().unwrap()),
            Some("subscribed") | Some("hello") => {}
            _ => panic!("{f}"),
        }
    }
    more.await.unwrap();
    let mut expected: Vec<i64> = Vec::new();
    for chunk in 0..4 {
        expected.extend((0..250).map(|i| (chunk * 500 + i * 2) as i64));
    }
    expected.extend((2000..2200).step_by(2));
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected, "each news message once, in stream order");
    ws.assert_quiet(Duration::from_millis(300)).await;
}
