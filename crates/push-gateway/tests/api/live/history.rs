//! Resume from further back than the stream holds: the history from Postgres, the `gap` frame for
//! deleted history, and what a client gets while Postgres is away.

use std::time::Duration;

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use testkit::{stream_ids, test_settings, Relay, Seen};

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

/// History pages end at 1 MiB of frames and size the next page by the rows just read: small messages,
/// then 400 kB ones (pages cut by bytes after a few rows), then small ones again, all from Postgres,
/// arrive complete and in order.
#[tokio::test]
async fn history_pages_cut_at_their_byte_bound_lose_nothing_when_message_sizes_change() {
    let relay = testkit::spawn_relay(test_settings()).await;
    let big = "x".repeat(400 * 1000);
    let mut accepted = relay.publish_numbers(30).await;
    for i in 0..8 {
        accepted.push(
            relay
                .publish(format!(r#"{{"big":{i},"fill":"{big}"}}"#))
                .await,
        );
    }
    accepted.extend(relay.publish_numbers(30).await);
    let ids = stream_ids(&accepted);
    assert_eq!(testkit::wait_for_rows(&relay.settings, 68).await, 68);
    testkit::trim(&relay.settings, "MAXLEN", 0);

    let mut ws = relay.ws_connect("?since=0-0").await;
    let replayed = ws.messages(68).await;
    assert_eq!(stream_ids(&replayed), ids, "every message, in order");
    assert_eq!(replayed[33]["payload"]["big"], 3);
    ws.assert_quiet(Duration::from_millis(300)).await;
}
