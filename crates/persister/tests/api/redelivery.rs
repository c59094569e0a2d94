//! Entries that keep coming back: a newer format version no replica understands, and an entry that
//! crashed whoever held it. Neither may circle forever, nor hold the trim below it.

use std::time::Duration;

use persister::claim;
use persister::group::{self, Cursor};

use crate::small_entries;
use redis::aio::ConnectionManager;
use service::Settings;
use testkit::{
    entry, pending, poll_until, setup, spawn_persister, stream_len, wait_for_rows, xadd,
    xadd_fields,
};

/// Claims every 500 ms, and at most two deliveries.
fn quick_claims(settings: &mut Settings) {
    settings.claim_idle_ms = 200;
    settings.max_deliveries = 2;
}

#[tokio::test]
async fn an_entry_of_a_newer_version_is_dead_lettered_after_max_deliveries_and_trimming_goes_on() {
    let (mut settings, _cleanup) = setup();
    quick_claims(&mut settings);
    settings.stream_retention = 0;
    // What a v2 ingest-api writes before a rollback to this build.
    let mut conn = testkit::redis(&settings);
    let id = uuid::Uuid::now_v7().to_string();
    let v2 = xadd_fields(
        &mut conn,
        &settings.stream_key,
        "*",
        [("v", "3"), ("id", id.as_str())],
    );
    xadd(
        &settings,
        &(0..20).map(|i| entry(&i.to_string())).collect::<Vec<_>>(),
    );
    let persister = spawn_persister(settings.clone()).await;
    assert_eq!(wait_for_rows(&settings, 20).await, 20);
    let dead = testkit::dead_letters(&settings, 1).await;
    // dead_letters waits 5 s; the entry needs MAX_DELIVERIES claims of CLAIM_IDLE_MS first.
    let dead = if dead.is_empty() {
        testkit::dead_letters(&settings, 1).await
    } else {
        dead
    };
    assert_eq!(dead.len(), 1, "the v2 entry was dead-lettered");
    let source: String = redis::from_redis_value(dead[0].map["source_id"].clone()).unwrap();
    let reason: String = redis::from_redis_value(dead[0].map["reason"].clone()).unwrap();
    assert_eq!(source, v2);
    assert!(reason.contains("version 3"), "{reason}");
    // Nothing pins the trim any more: with no retention, every stored entry is trimmed (one pass per 5 s).
    let left = poll_until(
        Duration::from_secs(15),
        || std::future::ready(stream_len(&settings)),
        |n| *n == 0,
    )
    .await;
    assert_eq!(left, 0, "the stream is trimmed past the v2 entry");
    persister.stop().await;
    assert_eq!(pending(&settings), 0);
}

#[tokio::test]
async fn an_entry_delivered_more_than_max_deliveries_times_is_dead_lettered_not_redelivered_forever(
) {
    let (mut settings, _cleanup) = setup();
    quick_claims(&mut settings);
    let ids = xadd(&settings, &[entry("\"crashes whoever reads it\"")]);
    // A replica read it and died, three times over (XCLAIM's RETRYCOUNT stands for the two restarts).
    let client = redis::Client::open(settings.redis_url.as_str()).unwrap();
    let mut conn: ConnectionManager = client.get_connection_manager().await.unwrap();
    let key = &settings.stream_key;
    group::ensure_group(&mut conn, key).await.unwrap();
    group::read(
        &mut conn,
        key,
        "crashed",
        &Cursor::New,
        10,
        100,
        small_entries(),
    )
    .await
    .unwrap();
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(key)
        .arg(model::PERSISTER_GROUP)
        .arg("crashed")
        .arg(0)
        .arg(&ids[0])
        .arg("RETRYCOUNT")
        .arg(3)
        .query_async(&mut conn)
        .await
        .unwrap();
    xadd(&settings, &[entry("\"fine\"")]);

    let persister = spawn_persister(settings.clone()).await;
    let dead = testkit::dead_letters(&settings, 1).await;
    assert_eq!(dead.len(), 1, "the over-delivered entry was dead-lettered");
    assert_eq!(wait_for_rows(&settings, 1).await, 1);
    persister.stop().await;
    // Both the claim and the new persister's pending-first read deliver the entry (the claim makes it
    // pending on that persister): whichever batch comes first moves it, the other finds it gone.
    let dead = testkit::stream::range(&mut testkit::redis(&settings), &model::dead_letter_key(key));
    assert_eq!(dead.len(), 1, "dead-lettered once");
    let source: String = redis::from_redis_value(dead[0].map["source_id"].clone()).unwrap();
    let reason: String = redis::from_redis_value(dead[0].map["reason"].clone()).unwrap();
    assert_eq!(source, ids[0]);
    // 4 deliveries by the claim, 5 when the pending-first read (after the claim) comes first.
    assert!(
        reason.contains("delivered 4 times") || reason.contains("delivered 5 times"),
        "{reason}"
    );
    assert_eq!(pending(&settings), 0);
    assert_eq!(
        testkit::count_rows(&settings.database_url),
        1,
        "only the fine one is stored"
    );
}

/// One entry appended and read by consumer `c` (so it is pending on `c`), and the connection that read it.
async fn one_entry_read_by_c(settings: &Settings) -> (ConnectionManager, Vec<group::Delivered>) {
    xadd(settings, &[entry("\"poison\"")]);
    let client = redis::Client::open(settings.redis_url.as_str()).unwrap();
    let mut conn: ConnectionManager = client.get_connection_manager().await.unwrap();
    let key = &settings.stream_key;
    group::ensure_group(&mut conn, key).await.unwrap();
    let read = group::read(&mut conn, key, "c", &Cursor::New, 10, 100, small_entries())
        .await
        .unwrap();
    (conn, read)
}

/// The race behind the test above, made certain: two batches of one consumer hold the same entry (a
/// claim, then a pending-first re-read). The first dead-letters it; the second must neither dead-letter
/// it again nor take it for a first delivery and store it.
#[tokio::test]
async fn an_entry_two_batches_hold_is_dead_lettered_once_and_left_alone_by_the_other() {
    let (settings, _cleanup) = setup();
    let (mut conn, first) = one_entry_read_by_c(&settings).await;
    let key = &settings.stream_key;
    let pending_first = Cursor::Pending("0-0".into());
    let mut second = group::read(
        &mut conn,
        key,
        "c",
        &pending_first,
        10,
        100,
        small_entries(),
    )
    .await
    .unwrap();
    assert_eq!((first.len(), second.len()), (1, 1));

    let d = &first[0];
    let moved = group::dead_letter(&mut conn, key, &d.raw_id, &d.fields, "first").await;
    assert!(moved.unwrap(), "the first batch moves it");
    let again = group::dead_letter(&mut conn, key, &d.raw_id, &d.fields, "second").await;
    assert!(!again.unwrap(), "the second finds it gone");
    let dead = testkit::stream::range(&mut testkit::redis(&settings), &model::dead_letter_key(key));
    assert_eq!(dead.len(), 1, "dead-lettered once");
    assert_eq!(pending(&settings), 0, "and acknowledged");

    claim::with_delivery_counts(&mut conn, key, "c", &mut second)
        .await
        .unwrap();
    assert_eq!(
        second[0].deliveries, 0,
        "the second batch has nothing to do"
    );
}

/// Redis does not undo a script's earlier writes when a later command fails: a dead letter that cannot be
/// written must leave the entry pending, not acknowledged and lost.
#[tokio::test]
async fn a_dead_letter_that_cannot_be_written_leaves_the_entry_pending() {
    let (settings, _cleanup) = setup();
    let (mut conn, read) = one_entry_read_by_c(&settings).await;
    let key = &settings.stream_key;
    // The dead-letter key holds something that is not a stream: its XADD fails.
    let _: () = redis::cmd("SET")
        .arg(model::dead_letter_key(key))
        .arg("not a stream")
        .query_async(&mut conn)
        .await
        .unwrap();
    let d = &read[0];
    let moved = group::dead_letter(&mut conn, key, &d.raw_id, &d.fields, "poison").await;
    assert!(moved.is_err(), "{moved:?}");
    assert_eq!(
        pending(&settings),
        1,
        "still pending, for the next delivery"
    );
}
