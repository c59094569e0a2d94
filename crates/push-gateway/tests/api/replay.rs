//! Replay edges: a `since` past the newest entry, equal to it, a replay of several pages, a trim that
//! passes the cursor mid-replay (filled from Postgres), and a foreign id no `StreamId` can hold.

use std::time::Duration;

use testkit::{stream_ids, test_settings, Relay, Seen, Ws};

#[tokio::test]
async fn a_since_after_the_newest_entry_starts_live_with_a_hello_naming_the_newest() {
    let relay = Relay::live(test_settings()).await;
    let accepted = stream_ids(&relay.publish_numbers(3).await);
    let mut ws = relay.ws_connect("?since=99999999999999-0").await;
    match ws.next_any().await {
        Seen::Frame(f) => assert_eq!(
            f,
            serde_json::json!({"type": "hello", "position": accepted[2]})
        ),
        other => panic!("{other:?}"),
    }
    // Live frames are not dropped as "already sent" until the clock passes `since`.
    let next = relay.publish("\"live\"".into()).await;
    assert_eq!(stream_ids(&ws.messages(1).await), stream_ids(&[next]));
}

#[tokio::test]
async fn a_since_equal_to_the_newest_entry_replays_nothing_and_goes_live() {
    let relay = Relay::live(test_settings()).await;
    let accepted = stream_ids(&relay.publish_numbers(3).await);
    let mut ws = relay.ws_connect(&format!("?since={}", accepted[2])).await;
    let next = relay.publish("\"live\"".into()).await;
    assert_eq!(stream_ids(&ws.messages(1).await), stream_ids(&[next]));
    ws.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_replay_of_several_pages_arrives_whole_in_order_and_once() {
    let relay = Relay::live(test_settings()).await;
    let accepted = stream_ids(&relay.publish_numbers(1_234).await);
    let mut ws = relay.ws_connect("?since=0-0").await;
    assert_eq!(stream_ids(&ws.messages(1_234).await), accepted);
    ws.assert_quiet(Duration::from_millis(300)).await;
}

/// The persister trims only what it has stored, so a trim that passes a replay's cursor costs the
/// client nothing: the rest comes from Postgres up to the stream's oldest entry, then from the stream —
/// every message once, in order, and no gap.
#[tokio::test]
async fn a_trim_that_passes_the_cursor_mid_replay_is_filled_from_postgres_without_a_gap() {
    let relay = testkit::spawn_relay(test_settings()).await;
    // 3,000 entries of 4 KB: 12 MB, far more than a slow client's socket buffers hold, so the replay is
    // still paging when the trim comes.
    let pad = "x".repeat(4_000);
    let mut accepted = Vec::new();
    for chunk in 0..3 {
        let lines: Vec<String> = (0..1_000)
            .map(|i| format!(r#"{{"n":{},"pad":"{pad}"}}"#, chunk * 1_000 + i))
            .collect();
        accepted.extend(stream_ids(&relay.publish_batch(&lines).await));
    }
    assert_eq!(testkit::wait_for_rows(&relay.settings, 3_000).await, 3_000);
    let mut ws = Ws(testkit::ws::connect_slow(&relay.gateway_addr(), "?since=0-0").await);
    let first = ws.messages(1).await;
    assert_eq!(stream_ids(&first), accepted[..1]);
    // The gateway is blocked on a send of an early page. A trim of stored entries passes the cursor now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    testkit::trim(&relay.settings, "MINID", &accepted[2_500]);
    let mut sent = stream_ids(&first);
    while sent.len() < 3_000 {
        let f = ws.frame().await;
        assert_eq!(f["type"], "message", "no gap: {f}");
        sent.push(f["data"]["stream_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(sent, accepted, "every message once, in order");
    ws.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_foreign_id_above_the_api_range_ends_a_replay_page_without_resending_it() {
    let relay = Relay::live(test_settings()).await;
    let accepted = stream_ids(&relay.publish_numbers(499).await);
    // The 500th entry, the last of the replay's first page: an id no StreamId holds (above i64::MAX).
    testkit::xadd_fields(
        &mut testkit::redis(&relay.settings),
        &relay.settings.stream_key,
        "9223372036854775808-0",
        [("v", "1")],
    );
    let mut ws = relay.ws_connect("?since=0-0").await;
    assert_eq!(stream_ids(&ws.messages(499).await), accepted);
    ws.assert_quiet(Duration::from_millis(500)).await;
}
