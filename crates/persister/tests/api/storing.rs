//! Storing: what arrives in Postgres, and what never can.

use model::StreamId;
use service::Settings;
use store::NewMessage;
use testkit::db::with_connection;
use testkit::{entry, pending, setup, spawn_persister, wait_for_rows, xadd, xadd_fields};

#[tokio::test]
async fn the_persister_creates_its_database_and_stores_what_was_posted_before_it_started() {
    let (settings, _cleanup) = setup();
    // The stream already holds entries and the database does not exist yet.
    xadd(
        &settings,
        &(0..50)
            .map(|i| entry(&format!("{{\"i\":{i}}}")))
            .collect::<Vec<_>>(),
    );
    let persister = spawn_persister(settings.clone()).await;
    assert_eq!(wait_for_rows(&settings, 50).await, 50);
    let ready = reqwest::get(format!("{}/readyz", persister.url()))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    persister.stop().await;
    assert_eq!(pending(&settings), 0, "every stored entry is acknowledged");
}

#[tokio::test]
async fn the_same_batch_stored_twice_leaves_one_row_each() {
    let (settings, _cleanup) = setup();
    testkit::db::prepare_database(&settings).await;
    let url = settings.database_url.clone();
    with_connection(&settings, move |conn| {
        let rows: Vec<NewMessage> = (1..=10)
            .map(|i| NewMessage::from_entry(StreamId::new(i, 0), entry(&i.to_string())))
            .collect();
        assert_eq!(store::write::store_batch(conn, &rows[..6]).unwrap().new, 6);
        // A redelivery that overlaps: 4 rows already there, 4 new ones.
        assert_eq!(store::write::store_batch(conn, &rows[2..]).unwrap().new, 4);
        assert_eq!(store::write::store_batch(conn, &rows).unwrap().new, 0);
        assert_eq!(testkit::count_rows(&url), 10);
    })
    .await;
}

/// The channels table is kept in the batch's transaction and counts each message once, whether the
/// batch went the fast way (COPY) or, redelivered, the deduplicating way.
#[tokio::test]
async fn each_channels_count_and_last_message_count_every_stored_message_once() {
    let (settings, _cleanup) = setup();
    testkit::db::prepare_database(&settings).await;
    with_connection(&settings, move |conn| {
        let rows: Vec<NewMessage> = (1..=10)
            .map(|i| {
                let mut e = entry(&i.to_string());
                e.channel = if i % 2 == 0 { "even" } else { "odd" }.parse().unwrap();
                NewMessage::from_entry(StreamId::new(i, 0), e)
            })
            .collect();
        store::write::store_batch(conn, &rows[..6]).unwrap();
        store::write::store_batch(conn, &rows[2..]).unwrap(); // a redelivery that overlaps
        store::write::store_batch(conn, &rows).unwrap();
        let channels = store::read::channels(conn, None).unwrap();
        let seen: Vec<_> = channels
            .iter()
            .map(|c| (c.channel.as_str(), c.messages, c.last_stream_ms))
            .collect();
        assert_eq!(seen, [("even", 5, 10), ("odd", 5, 9)]);
        // A batch claimed late (older positions committed after newer ones) leaves the last message.
        let late = NewMessage::from_entry(StreamId::new(0, 5), {
            let mut e = entry("0");
            e.channel = "odd".parse().unwrap();
            e
        });
        store::write::store_batch(conn, &[late]).unwrap();
        let odd = &store::read::channels(conn, Some("od")).unwrap()[0];
        assert_eq!((odd.messages, odd.last_stream_ms), (6, 9));
    })
    .await;
}

#[tokio::test]
async fn an_undecodable_entry_goes_to_the_dead_letter_stream_and_its_neighbours_are_stored() {
    let (settings, _cleanup) = setup();
    xadd(&settings, &[entry("1")]);
    let mut conn = testkit::redis(&settings);
    let poison = xadd_fields(
        &mut conn,
        &settings.stream_key,
        "*",
        [("v", "1"), ("id", "not-a-uuid")],
    );
    xadd(&settings, &[entry("3")]);
    let persister = spawn_persister(settings.clone()).await;
    assert_eq!(wait_for_rows(&settings, 2).await, 2);
    let (source, reason) = the_dead_letter(&settings).await;
    assert_eq!(source, poison);
    assert!(reason.contains("id"), "{reason}");
    persister.stop().await;
    assert_eq!(
        pending(&settings),
        0,
        "the dead-lettered entry is acknowledged too"
    );
}

#[tokio::test]
async fn a_check_violation_during_a_migration_holds_the_row_until_the_schema_takes_it() {
    let (mut settings, _cleanup) = setup();
    settings.claim_idle_ms = 200; // the held row comes back every half second
    settings.max_deliveries = 1_000;
    // Sabotage the database: a constraint that refuses one payload, as a half-done migration might.
    testkit::db::prepare_database(&settings).await;
    testkit::db::execute(
        &settings,
        "ALTER TABLE messages ADD CONSTRAINT no_poison CHECK (payload::text NOT LIKE '%poison%')",
    )
    .await;
    xadd(
        &settings,
        &[
            entry("\"fine 1\""),
            entry("\"poison\""),
            entry("\"fine 2\""),
        ],
    );
    let persister = spawn_persister(settings.clone()).await;
    assert_eq!(
        wait_for_rows(&settings, 2).await,
        2,
        "its neighbours are stored"
    );
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(
        pending(&settings),
        1,
        "the refused row is held, not acknowledged"
    );
    // The migration finishes.
    testkit::db::execute(&settings, "ALTER TABLE messages DROP CONSTRAINT no_poison").await;
    assert_eq!(
        wait_for_rows(&settings, 3).await,
        3,
        "stored once the schema takes it"
    );
    persister.stop().await;
    assert_eq!(pending(&settings), 0);
    assert!(
        testkit::dead_letters(&settings, 0).await.is_empty(),
        "nothing dead-lettered"
    );
}

#[tokio::test]
async fn a_payload_postgres_would_refuse_is_dead_lettered_without_asking_postgres() {
    let (settings, _cleanup) = setup();
    // Not JSON: only a writer that bypasses ingest-api's validation can put it there.
    let bad = entry("1");
    xadd(&settings, &[entry("\"fine 1\"")]);
    let mut conn = testkit::redis(&settings);
    let fields = bad.to_fields().into_iter().map(|(field, value)| {
        let value = if field == "payload" {
            "{\"unterminated\":".to_owned()
        } else {
            value
        };
        (field, value)
    });
    let poison = xadd_fields(&mut conn, &settings.stream_key, "*", fields);
    xadd(&settings, &[entry("\"fine 2\"")]);
    let persister = spawn_persister(settings.clone()).await;
    assert_eq!(wait_for_rows(&settings, 2).await, 2);
    let (source, reason) = the_dead_letter(&settings).await;
    assert_eq!(source, poison);
    // Our own words, checked before the row is sent: the decision never depends on Postgres' message
    // text, which follows its `lc_messages`.
    assert!(reason.contains("not valid JSON"), "{reason}");
    persister.stop().await;
    assert_eq!(pending(&settings), 0);
}

#[tokio::test]
async fn a_payload_postgres_takes_but_serde_values_would_not_is_stored_not_dead_lettered() {
    let (settings, _cleanup) = setup();
    // ingest-api accepts both (a 202 is a promise), and so does Postgres' `json` type.
    let payloads = [r#"{"big":1e400}"#, r#"["\ud800","\udc00x"]"#];
    xadd(&settings, &payloads.map(entry));
    let persister = spawn_persister(settings.clone()).await;
    assert_eq!(wait_for_rows(&settings, 2).await, 2);
    persister.stop().await;
    assert_eq!(pending(&settings), 0);
    let stored = with_connection(&settings, |conn| {
        #[derive(diesel::QueryableByName)]
        struct Payload {
            #[diesel(sql_type = diesel::sql_types::Text)]
            payload: String,
        }
        diesel::RunQueryDsl::load::<Payload>(
            diesel::sql_query(
                "SELECT payload::text AS payload FROM messages ORDER BY stream_ms, stream_seq",
            ),
            conn,
        )
        .unwrap()
        .into_iter()
        .map(|p| p.payload)
        .collect::<Vec<_>>()
    })
    .await;
    assert_eq!(stored, payloads);
}

#[tokio::test]
async fn a_different_message_reusing_a_stored_stream_position_is_dead_lettered_not_dropped() {
    let (settings, _cleanup) = setup();
    testkit::db::prepare_database(&settings).await;
    // Stored before Redis lost a second and reissued the id `5-0` to another message.
    let first = entry("\"the first at 5-0\"");
    let first_id = first.id;
    with_connection(&settings, move |conn| {
        store::write::store_batch(conn, &[NewMessage::from_entry(StreamId::new(5, 0), first)])
            .unwrap();
    })
    .await;
    let second = entry("\"another at 5-0\"");
    let mut conn = testkit::redis(&settings);
    xadd_fields(&mut conn, &settings.stream_key, "5-0", second.to_fields());
    xadd(&settings, &[entry("\"after\"")]);

    let persister = spawn_persister(settings.clone()).await;
    assert_eq!(wait_for_rows(&settings, 2).await, 2);
    let (source, reason) = the_dead_letter(&settings).await;
    assert_eq!(source, "5-0");
    assert!(reason.contains(&first_id.to_string()), "{reason}");
    persister.stop().await;
    assert_eq!(pending(&settings), 0);
}

#[tokio::test]
async fn a_copy_blocked_by_a_lock_neither_hangs_the_persister_nor_its_sigterm() {
    let (settings, _cleanup) = setup();
    testkit::db::prepare_database(&settings).await;
    // Another session holds the table, as DDL or VACUUM FULL would, until told to let go.
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let url = settings.database_url.clone();
    let holder = std::thread::spawn(move || {
        use diesel::Connection;
        let mut pg = testkit::db::pg(&url).unwrap();
        pg.transaction(|pg| {
            diesel::RunQueryDsl::execute(
                diesel::sql_query("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE"),
                pg,
            )?;
            locked_tx.send(()).unwrap();
            let _ = release_rx.recv_timeout(std::time::Duration::from_secs(60));
            diesel::QueryResult::Ok(())
        })
        .unwrap();
    });
    locked_rx.recv().unwrap();
    xadd(&settings, &[entry("1"), entry("2")]);
    let persister = spawn_persister(settings.clone()).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await; // the COPY is waiting on the lock now
                                                                 // SIGTERM's path: stop fails the test unless the service ends within 10 s.
    persister.stop().await;
    assert_eq!(
        pending(&settings),
        2,
        "nothing acknowledged that was not stored"
    );
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    let persister = spawn_persister(settings.clone()).await;
    assert_eq!(
        wait_for_rows(&settings, 2).await,
        2,
        "stored once the lock is gone"
    );
    persister.stop().await;
}

/// The one entry of the test's dead-letter stream: the id of the entry it stands for, and why.
async fn the_dead_letter(settings: &Settings) -> (String, String) {
    let dead = testkit::dead_letters(settings, 1).await;
    assert_eq!(dead.len(), 1);
    let field =
        |name: &str| -> String { redis::from_redis_value(dead[0].map[name].clone()).unwrap() };
    (field("source_id"), field("reason"))
}
