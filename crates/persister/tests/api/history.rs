//! `HISTORY_RETENTION`: old messages leave Postgres in bounded batches, and the channel list follows.

use std::time::Duration;

use model::StreamId;
use store::NewMessage;
use testkit::db::with_connection;
use testkit::metrics::scrape;
use testkit::{entry, poll_until, setup, spawn_persister};

/// A row of `channel` received `age` ago (its stream position from the same moment).
fn row(channel: &str, age: Duration, seq: u64) -> NewMessage {
    let mut e = entry(&seq.to_string());
    e.channel = channel.parse().unwrap();
    e.received_at -= age;
    let ms = e.received_at.timestamp_millis() as u64;
    NewMessage::from_entry(StreamId::new(ms, seq), e)
}

#[tokio::test]
async fn messages_older_than_the_retention_are_deleted_and_the_channel_list_follows() {
    let (mut settings, _cleanup) = setup();
    settings.history_retention = "1h".parse().unwrap();
    testkit::db::prepare_database(&settings).await;
    let two_hours = Duration::from_secs(7200);
    let mut rows: Vec<NewMessage> = (0..12).map(|i| row("old", two_hours, i)).collect();
    rows.extend((0..3).map(|i| row("mixed", two_hours, 100 + i)));
    let newest_old = rows.iter().map(NewMessage::stream_id).max();
    rows.extend((0..2).map(|i| row("mixed", Duration::ZERO, 200 + i)));
    with_connection(&settings, move |conn| {
        store::write::store_batch(conn, &rows).unwrap();
    })
    .await;
    let persister = spawn_persister(settings.clone()).await;
    let left = poll_until(
        Duration::from_secs(15),
        || std::future::ready(testkit::count_rows(&settings.database_url)),
        |n| *n == 2,
    )
    .await;
    assert_eq!(left, 2, "only the two recent messages are kept");
    let channels =
        with_connection(&settings, |conn| store::read::channels(conn, None).unwrap()).await;
    let seen: Vec<_> = channels
        .iter()
        .map(|c| (c.channel.clone(), c.messages))
        .collect();
    assert_eq!(
        seen,
        [("mixed".to_owned(), 2)],
        "a channel left with none leaves the list"
    );
    // How far it deleted, for a replay that starts before it to announce the gap.
    let horizon = with_connection(&settings, |conn| store::retention::horizon(conn).unwrap()).await;
    assert_eq!(horizon, newest_old);
    let metrics = scrape(&persister.url()).await;
    assert_eq!(
        metrics.value("relay_persister_history_deleted_total", &[]),
        15.0
    );
    persister.stop().await;
}
