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
        let text = relay
            .get_url(format!("http://{}/metrics", relay.gateway_addr()))
            .await
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("relay_gateway_subscriptions "))
            .unwrap()
            .parse::<f64>()
            .unwrap()
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
    match testkit::ws::connect(&relay.gateway_addr(), query).await {
        Ok(_) => None,
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Some(res.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
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
