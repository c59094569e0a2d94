//! Storing: what arrives in Postgres, and what never can.

use model::{Settings, StreamId};
use store::NewMessage;
use testkit::db::with_connection;
use testkit::{entry, pending, setup, spawn_persister, wait_for_rows, xadd};

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
        assert_eq!(store::write::store_batch(conn, &rows[..6]).unwrap(), 6);
        // A redelivery that overlaps: 4 rows already there, 4 new ones.
        assert_eq!(store::write::store_batch(conn, &rows[2..]).unwrap(), 4);
        assert_eq!(store::write::store_batch(conn, &rows).unwrap(), 0);
        assert_eq!(testkit::count_rows(&url), 10);
    })
    .await;
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
async fn a_row_postgres_refuses_is_dead_lettered_and_the_rest_of_its_batch_is_stored() {
    let (settings, _cleanup) = setup();
    // Sabotage the database: a constraint that refuses one particular payload.
    testkit::db::prepare_database(&settings).await;
    with_connection(&settings, |conn| {
        diesel::RunQueryDsl::execute(
            diesel::sql_query("ALTER TABLE messages ADD CONSTRAINT no_poison CHECK (payload::text NOT LIKE '%poison%')"),
            conn,
        )
        .unwrap();
    })
    .await;
    let ids = xadd(
        &settings,
        &[
            entry("\"fine 1\""),
            entry("\"poison\""),
            entry("\"fine 2\""),
        ],
    );
    let persister = spawn_persister(settings.clone()).await;
    assert_eq!(wait_for_rows(&settings, 2).await, 2);
    let (source, reason) = the_dead_letter(&settings).await;
    assert_eq!(source, ids[1]);
    assert!(
        reason.contains("rejected by Postgres") && reason.contains("no_poison"),
        "{reason}"
    );
    persister.stop().await;
    assert_eq!(pending(&settings), 0);
    assert_eq!(testkit::count_rows(&settings.database_url), 2);
}

/// The one entry of the test's dead-letter stream: the id of the entry it stands for, and why.
async fn the_dead_letter(settings: &Settings) -> (String, String) {
    let dead = testkit::dead_letters(settings, 1).await;
    assert_eq!(dead.len(), 1);
    let field =
        |name: &str| -> String { redis::from_redis_value(dead[0].map[name].clone()).unwrap() };
    (field("source_id"), field("reason"))
}
