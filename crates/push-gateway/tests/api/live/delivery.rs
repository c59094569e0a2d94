//! Live delivery in order with the payload unchanged, and resume with `since` after a reconnect or a
//! gateway restart: exactly the missing messages, then live ones, nothing twice.

use std::time::Duration;

use futures_util::StreamExt;
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
