//! Storing: what arrives in Postgres, and what never can.

use diesel::{Connection, PgConnection};
use model::StreamId;
use store::NewMessage;

use crate::helpers::{entry, pending, setup, wait_for_rows, xadd, RunningPersister};

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
    let persister = RunningPersister::start(settings.clone()).await;
    assert_eq!(wait_for_rows(&settings, 50).await, 50);
    let ready = reqwest::get(format!("http://127.0.0.1:{}/readyz", persister.port))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    persister.stop().await;
    assert_eq!(pending(&settings), 0, "every stored entry is acknowledged");
}

#[tokio::test]
async fn the_same_batch_stored_twice_leaves_one_row_each() {
    let (settings, _cleanup) = setup();
    let url = settings.database_url.clone();
    tokio::task::spawn_blocking(move || {
        store::prepare_database(&url).unwrap();
        let mut conn = PgConnection::establish(&url).unwrap();
        let rows: Vec<NewMessage> = (1..=10)
            .map(|i| NewMessage::from_entry(StreamId::new(i, 0), entry(&i.to_string())))
            .collect();
        assert_eq!(store::write::store_batch(&mut conn, &rows[..6]).unwrap(), 6);
        // A redelivery that overlaps: 4 rows already there, 4 new ones.
        assert_eq!(store::write::store_batch(&mut conn, &rows[2..]).unwrap(), 4);
        assert_eq!(store::write::store_batch(&mut conn, &rows).unwrap(), 0);
        assert_eq!(testkit::count_rows(&url), 10);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_undecodable_entry_goes_to_the_dead_letter_stream_and_its_neighbours_are_stored() {
    let (settings, _cleanup) = setup();
    xadd(&settings, &[entry("1")]);
    let mut conn = testkit::redis(&settings);
    let poison: String = redis::cmd("XADD")
        .arg(&settings.stream_key)
        .arg("*")
        .arg("v")
        .arg("1")
        .arg("id")
        .arg("not-a-uuid")
        .query(&mut conn)
        .unwrap();
    xadd(&settings, &[entry("3")]);
    let persister = RunningPersister::start(settings.clone()).await;
    assert_eq!(wait_for_rows(&settings, 2).await, 2);
    let dead = crate::helpers::dead_letters(&settings, 1).await;
    assert_eq!(dead.len(), 1);
    let source: String = redis::from_redis_value(dead[0].map["source_id"].clone()).unwrap();
    let reason: String = redis::from_redis_value(dead[0].map["reason"].clone()).unwrap();
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
async fn a_row_postgres_refuses_is_dead_lettered_and_the_rest_of_its_batch_is_stored() {
    let (settings, _cleanup) = setup();
    let url = settings.database_url.clone();
    // Sabotage the database: a constraint that refuses one particular payload.
    tokio::task::spawn_blocking(move || {
        store::prepare_database(&url).unwrap();
        let mut conn = PgConnection::establish(&url).unwrap();
        diesel::RunQueryDsl::execute(
            diesel::sql_query("ALTER TABLE messages ADD CONSTRAINT no_poison CHECK (payload::text NOT LIKE '%poison%')"),
            &mut conn,
        )
        .unwrap();
    })
    .await
    .unwrap();
    let ids = xadd(
        &settings,
        &[
            entry("\"fine 1\""),
            entry("\"poison\""),
            entry("\"fine 2\""),
        ],
    );
    let persister = RunningPersister::start(settings.clone()).await;
    assert_eq!(wait_for_rows(&settings, 2).await, 2);
    let dead = crate::helpers::dead_letters(&settings, 1).await;
    assert_eq!(dead.len(), 1);
    let source: String = redis::from_redis_value(dead[0].map["source_id"].clone()).unwrap();
    let reason: String = redis::from_redis_value(dead[0].map["reason"].clone()).unwrap();
    assert_eq!(source, ids[1]);
    assert!(
        reason.contains("rejected by Postgres") && reason.contains("no_poison"),
        "{reason}"
    );
    persister.stop().await;
    assert_eq!(pending(&settings), 0);
    assert_eq!(testkit::count_rows(&settings.database_url), 2);
}
