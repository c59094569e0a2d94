//! Recovery: a persister that dies between commit and `XACK` leaves pending entries that the next run of
//! the same replica stores again — as no-ops.

use std::time::Duration;

use persister::claim;
use persister::group::{self, Cursor};

use crate::small_entries;
use redis::aio::ConnectionManager;
use store::NewMessage;

use testkit::{
    entry, pending, poll_until, setup, spawn_persister, stream_len, wait_for_rows, xadd,
};

#[tokio::test]
async fn a_persister_killed_between_commit_and_ack_loses_and_duplicates_nothing() {
    let (mut settings, _cleanup) = setup();
    // No claims during the test: only the restarted replica's pending-first read can finish its batch.
    settings.claim_idle_ms = 3_600_000;
    testkit::db::prepare_database(&settings).await;
    // Every row Postgres commits is logged: a second insert of an id shows whatever the table's
    // constraints say (drop the unique index and this catches it).
    testkit::db::with_connection(&settings, |conn| testkit::db::log_inserts(conn).unwrap()).await;
    xadd(
        &settings,
        &(0..300)
            .map(|i| entry(&format!("{{\"i\":{i}}}")))
            .collect::<Vec<_>>(),
    );

    // The first life of consumer `settings.consumer_name`: it reads 200 entries and commits them, then dies
    // before XACK. These are the persister's own steps, run by hand so the crash lands exactly there.
    {
        let client = redis::Client::open(settings.redis_url.as_str()).unwrap();
        let mut conn: ConnectionManager = client.get_connection_manager().await.unwrap();
        group::ensure_group(&mut conn, &settings.stream_key)
            .await
            .unwrap();
        let batch = group::read(
            &mut conn,
            &settings.stream_key,
            &settings.consumer_name,
            &Cursor::New,
            200,
            100,
            small_entries(),
        )
        .await
        .unwrap();
        assert_eq!(batch.len(), 200);
        let rows: Vec<NewMessage> = batch
            .into_iter()
            .map(|d| NewMessage::from_entry(d.stream_id.unwrap(), d.entry.unwrap()))
            .collect();
        let url = settings.database_url.clone();
        tokio::task::spawn_blocking(move || {
            let mut pg = diesel::Connection::establish(&url).unwrap();
            store::write::store_batch(&mut pg, &rows).unwrap();
        })
        .await
        .unwrap();
    } // dropped: no XACK
    assert_eq!(pending(&settings), 200);
    assert_eq!(testkit::count_rows(&settings.database_url), 200);

    // The replica restarts under the same name: it drains its own pending entries, then the rest.
    let persister = spawn_persister(settings.clone()).await;
    assert_eq!(wait_for_rows(&settings, 300).await, 300);
    persister.stop().await;
    let inserts =
        testkit::db::with_connection(&settings, |conn| testkit::db::inserts_per_id(conn).unwrap())
            .await;
    let twice: Vec<_> = inserts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "redelivered entries inserted again: {twice:?}"
    );
    assert_eq!(inserts.len(), 300, "each entry inserted exactly once");
    assert_eq!(
        pending(&settings),
        0,
        "the restarted replica finished its own pending batch first (claims are off)"
    );
}

#[tokio::test]
async fn a_stopped_persister_resumes_where_it_left_off() {
    let (settings, _cleanup) = setup();
    xadd(
        &settings,
        &(0..100).map(|i| entry(&i.to_string())).collect::<Vec<_>>(),
    );
    let first = spawn_persister(settings.clone()).await;
    assert_eq!(wait_for_rows(&settings, 100).await, 100);
    first.stop().await;
    xadd(
        &settings,
        &(100..250)
            .map(|i| entry(&i.to_string()))
            .collect::<Vec<_>>(),
    );
    let second = spawn_persister(settings.clone()).await;
    assert_eq!(wait_for_rows(&settings, 250).await, 250);
    second.stop().await;
    assert_eq!(testkit::count_rows(&settings.database_url), 250);
    assert_eq!(pending(&settings), 0);
}

#[tokio::test]
async fn a_persister_recreates_its_group_when_redis_loses_it() {
    let (settings, _cleanup) = setup();
    xadd(&settings, &[entry("1")]);
    let persister = spawn_persister(settings.clone()).await;
    assert_eq!(wait_for_rows(&settings, 1).await, 1);
    // What a Redis restart without persistence looks like to the persister: the stream and group are gone.
    let mut conn = testkit::redis(&settings);
    let _: () = redis::cmd("DEL")
        .arg(&settings.stream_key)
        .query(&mut conn)
        .unwrap();
    xadd(&settings, &[entry("2"), entry("3")]);
    assert_eq!(
        wait_for_rows(&settings, 3).await,
        3,
        "entries after the loss are stored too"
    );
    persister.stop().await;
}

#[tokio::test]
async fn only_consumers_with_nothing_pending_are_removed_as_idle() {
    let (settings, _cleanup) = setup();
    xadd(&settings, &[entry("1"), entry("2")]);
    let client = redis::Client::open(settings.redis_url.as_str()).unwrap();
    let mut conn: ConnectionManager = client.get_connection_manager().await.unwrap();
    let key = &settings.stream_key;
    group::ensure_group(&mut conn, key).await.unwrap();
    // `gone` read one entry and acknowledged it; `busy` read one and did not.
    let gone = group::read(
        &mut conn,
        key,
        "gone",
        &Cursor::New,
        1,
        100,
        small_entries(),
    )
    .await
    .unwrap();
    group::ack(&mut conn, key, &[gone[0].raw_id.as_str()])
        .await
        .unwrap();
    group::read(
        &mut conn,
        key,
        "busy",
        &Cursor::New,
        1,
        100,
        small_entries(),
    )
    .await
    .unwrap();
    group::read(&mut conn, key, "me", &Cursor::New, 1, 100, small_entries())
        .await
        .unwrap();
    let removed = claim::remove_idle_consumers(&mut conn, key, "me", 0)
        .await
        .unwrap();
    assert_eq!(removed, vec!["gone".to_owned()]);
    assert_eq!(pending(&settings), 1, "busy's entry is still pending");
}

#[tokio::test]
async fn trimming_never_drops_a_pending_or_undelivered_entry_and_keeps_the_retention() {
    let (settings, _cleanup) = setup();
    let ids = xadd(
        &settings,
        &(0..10).map(|i| entry(&i.to_string())).collect::<Vec<_>>(),
    );
    let client = redis::Client::open(settings.redis_url.as_str()).unwrap();
    let mut conn: ConnectionManager = client.get_connection_manager().await.unwrap();
    let key = &settings.stream_key;
    let mut redis = testkit::redis(&settings);
    group::ensure_group(&mut conn, key).await.unwrap();
    // Entries 0-5 delivered, 0-2 acknowledged (3-5 pending), 6-9 never delivered.
    group::read(&mut conn, key, "c", &Cursor::New, 6, 100, small_entries())
        .await
        .unwrap();
    assert_eq!(
        trim_after_ack(&mut conn, &mut redis, key, &ids[..3], 0).await,
        (3, (7, ids[3].clone())),
        "the oldest pending entry is kept"
    );
    assert_eq!(
        trim_after_ack(&mut conn, &mut redis, key, &ids[3..6], 0).await,
        (3, (4, ids[6].clone())),
        "undelivered entries are kept"
    );

    let rest = group::read(&mut conn, key, "c", &Cursor::New, 10, 100, small_entries())
        .await
        .unwrap();
    let rest: Vec<String> = rest.into_iter().map(|d| d.raw_id).collect();
    assert_eq!(
        trim_after_ack(&mut conn, &mut redis, key, &rest, 3).await,
        (1, (3, ids[7].clone())),
        "STREAM_RETENTION entries stay for replay"
    );
    assert_eq!(trim(&mut conn, key, 3).await, 0);
}

/// Acknowledges `acked`, trims with `retention`; how many entries the trim removed, and then how many
/// the stream holds and the id of its first.
async fn trim_after_ack(
    conn: &mut ConnectionManager,
    redis: &mut redis::Connection,
    key: &str,
    acked: &[String],
    retention: u64,
) -> (u64, (usize, String)) {
    let acked: Vec<&str> = acked.iter().map(String::as_str).collect();
    group::ack(conn, key, &acked).await.unwrap();
    let removed = trim(conn, key, retention).await;
    let all = testkit::stream::range(redis, key);
    let first = all.first().map(|e| e.id.clone()).unwrap_or_default();
    (removed, (all.len(), first))
}

/// One trim as the persister runs it, 1000 entries at the most; how many it removed.
async fn trim(conn: &mut ConnectionManager, key: &str, retention: u64) -> u64 {
    persister::trim::trim_acknowledged(conn, key, retention, u64::MAX, 1000)
        .await
        .unwrap()
}

/// A Redis connection that adds up how many bytes of replies it passed on.
struct Metered<C> {
    inner: C,
    reply_bytes: usize,
}

impl<C: redis::aio::ConnectionLike + Send> redis::aio::ConnectionLike for Metered<C> {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let reply = self.inner.req_packed_command(cmd).await?;
            self.reply_bytes += format!("{reply:?}").len();
            Ok(reply)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let replies = self
                .inner
                .req_packed_commands(pipeline, offset, count)
                .await?;
            self.reply_bytes += format!("{replies:?}").len();
            Ok(replies)
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

#[tokio::test]
async fn a_trim_pass_never_fetches_the_entries_it_removes() {
    let (settings, _cleanup) = setup();
    let key = &settings.stream_key;
    // 300 acknowledged entries of 10 KB: 3 MB that the old pass read back to find one id.
    let pad = "x".repeat(10_000);
    xadd(
        &settings,
        &(0..300)
            .map(|i| entry(&format!(r#"{{"i":{i},"pad":"{pad}"}}"#)))
            .collect::<Vec<_>>(),
    );
    let client = redis::Client::open(settings.redis_url.as_str()).unwrap();
    let mut conn: ConnectionManager = client.get_connection_manager().await.unwrap();
    group::ensure_group(&mut conn, key).await.unwrap();
    let all = group::read(&mut conn, key, "c", &Cursor::New, 300, 100, small_entries())
        .await
        .unwrap();
    let acked: Vec<&str> = all.iter().map(|d| d.raw_id.as_str()).collect();
    group::ack(&mut conn, key, &acked).await.unwrap();

    let mut metered = Metered {
        inner: conn,
        reply_bytes: 0,
    };
    let removed = persister::trim::trim_acknowledged(&mut metered, key, 10, u64::MAX, 50_000)
        .await
        .unwrap();
    assert_eq!(removed, 290);
    assert!(
        metered.reply_bytes < 2_000,
        "the trim pass read {} bytes of replies",
        metered.reply_bytes
    );
}

#[tokio::test]
async fn one_trim_pass_removes_a_large_excess_slice_by_slice() {
    let (mut settings, _cleanup) = setup();
    settings.stream_retention = 1_000;
    let entries: Vec<_> = (0..16_000).map(|i| entry(&i.to_string())).collect();
    xadd(&settings, &entries);
    let persister = spawn_persister(settings.clone()).await;
    assert_eq!(wait_for_rows(&settings, 16_000).await, 16_000);
    // Passes come every 5 s, and a script walks at most 5,000 entries: the 15,000 over the retention
    // are gone after one pass of three slices, not after three passes.
    let left = poll_until(
        Duration::from_secs(8),
        || std::future::ready(stream_len(&settings)),
        |n| *n == 1_000,
    )
    .await;
    assert_eq!(left, 1_000, "one pass trims the whole excess");
    persister.stop().await;
}

/// Retention is counted in entries, but entries have sizes: 100,000 of 1 MiB would hold the stream far
/// over MAX_STREAM_BYTES with the persister caught up, and every post would be refused for good. Kept
/// entries yield to half of MAX_STREAM_BYTES.
#[tokio::test]
async fn retention_keeps_fewer_entries_when_they_would_take_more_than_half_of_max_stream_bytes() {
    let (mut settings, _cleanup) = setup();
    settings.stream_retention = 100_000;
    settings.max_stream_bytes = 8 * 1024 * 1024;
    // 240 entries of 100 KB, 24 MB: three times MAX_STREAM_BYTES, all far within the entry count.
    let pad = "x".repeat(100_000);
    let entries: Vec<_> = (0..240)
        .map(|i| entry(&format!(r#"{{"i":{i},"pad":"{pad}"}}"#)))
        .collect();
    xadd(&settings, &entries);
    let persister = spawn_persister(settings.clone()).await;
    assert_eq!(wait_for_rows(&settings, 240).await, 240);
    let half = settings.max_stream_bytes / 2;
    let bytes = poll_until(
        Duration::from_secs(12),
        || std::future::ready(testkit::stream::memory_usage(&settings)),
        |b| *b <= half,
    )
    .await;
    assert!(
        bytes <= half,
        "the stream still takes {bytes} bytes, over half of MAX_STREAM_BYTES ({half})"
    );
    let left = stream_len(&settings);
    assert!(
        (24..=40).contains(&left),
        "{left} entries kept: about as many as fit in half the bytes (about 36 of 115 KB each)"
    );
    persister.stop().await;
}
