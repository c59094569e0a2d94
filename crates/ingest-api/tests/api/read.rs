//! `GET /messages` and `GET /messages/{id}`: paging, bad parameters, the committed watermark, and Postgres
//! away (reading in bounded memory is in `read_bounds.rs`).

use diesel::{PgConnection, RunQueryDsl};

use testkit::db::with_connection;
use testkit::procs::free_port;
use testkit::{stream_ids, test_settings, Relay};

/// Inserts `n` rows straight into the test's table: `payload_bytes` of JSON each, stream ids 1-0 … n-0.
pub fn insert_rows(conn: &mut PgConnection, n: i64, payload_bytes: usize) {
    diesel::sql_query(format!(
        "INSERT INTO messages (stream_ms, stream_seq, id, received_at, payload) \
         SELECT i, 0, gen_random_uuid(), now(), json_build_object('i', i, 'pad', repeat('x', {payload_bytes})) \
         FROM generate_series(1, {n}) AS i"
    ))
    .execute(conn)
    .unwrap();
}

pub fn next_link(res: &reqwest::Response) -> Option<String> {
    let link = res.headers().get("link")?.to_str().unwrap();
    assert!(link.ends_with("; rel=\"next\""), "{link}");
    Some(link[1..link.find('>').unwrap()].to_owned())
}

#[tokio::test]
async fn paging_walks_the_link_chain_to_exactly_the_full_set() {
    let app = Relay::ingest_only(test_settings()).await;
    with_connection(&app.settings, |conn| insert_rows(conn, 2345, 10)).await;
    let mut next = Some("/messages?limit=1000".to_owned());
    let (mut seen, mut pages) = (Vec::new(), 0);
    while let Some(path) = next {
        let res = app.get(&path).await;
        assert_eq!(res.status(), 200);
        next = next_link(&res);
        let page: Vec<serde_json::Value> = res.json().await.unwrap();
        assert!(!page.is_empty() && page.len() <= 1000);
        seen.extend(
            page.into_iter()
                .map(|m| m["payload"]["i"].as_i64().unwrap()),
        );
        pages += 1;
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        (1..=2345).collect::<Vec<_>>(),
        "every row once, in stream order"
    );
}

/// A full read spans many keyset pages (each read while the one before it is sent): every row once, in
/// stream order, one valid array, from the start and from an `after`.
#[tokio::test]
async fn a_full_read_of_many_pages_is_every_row_once_in_stream_order() {
    let app = Relay::ingest_only(test_settings()).await;
    // ~1.1 KB a row: about 470 rows to a 512 KiB page, so 5,000 rows are a dozen pages.
    with_connection(&app.settings, |conn| insert_rows(conn, 5000, 1000)).await;
    for (path, from) in [("/messages", 1), ("/messages?after=1234-0", 1235)] {
        let res = app.get(path).await;
        assert_eq!(res.status(), 200);
        assert!(
            res.headers().get("link").is_none(),
            "{path}: a full read has no next link"
        );
        let all: Vec<serde_json::Value> = res.json().await.unwrap();
        let seen: Vec<i64> = all
            .iter()
            .map(|m| m["payload"]["i"].as_i64().unwrap())
            .collect();
        assert_eq!(seen, (from..=5000).collect::<Vec<_>>(), "{path}");
    }
}

#[tokio::test]
async fn after_is_exclusive_and_compares_stream_ids_numerically() {
    let app = Relay::ingest_only(test_settings()).await;
    with_connection(&app.settings, |conn| insert_rows(conn, 12, 1)).await;
    // "9-0" < "10-0" numerically, though not as strings.
    let page = app.get_page("/messages?after=9-0&limit=10").await;
    assert_eq!(stream_ids(&page), ["10-0", "11-0", "12-0"]);
    let all = app.get_page("/messages?after=9-0").await;
    assert_eq!(all.len(), 3, "after works without limit too");
}

#[tokio::test]
async fn bad_after_or_limit_is_a_400_problem() {
    let app = Relay::ingest_only(test_settings()).await;
    for q in [
        "after=abc",
        "after=1-",
        "limit=0",
        "limit=1001",
        "limit=ten",
        "limit=-1",
        "after=1-0&limit=1.5",
    ] {
        let res = app.get(&format!("/messages?{q}")).await;
        assert_eq!(res.status(), 400, "{q}");
        assert_eq!(
            res.headers()["content-type"],
            "application/problem+json",
            "{q}"
        );
    }
}

#[tokio::test]
async fn one_message_by_id_or_404_or_400() {
    let app = Relay::ingest_only(test_settings()).await;
    with_connection(&app.settings, |conn| insert_rows(conn, 3, 1)).await;
    let all = app.get_messages().await;
    let id = all[1]["id"].as_str().unwrap();
    let res = app.get(&format!("/messages/{id}")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<serde_json::Value>().await.unwrap(), all[1]);
    let missing = app
        .get(&format!("/messages/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(app.get("/messages/not-a-uuid").await.status(), 400);
}

#[tokio::test]
async fn an_empty_table_reads_as_an_empty_array() {
    let app = Relay::ingest_only(test_settings()).await;
    assert_eq!(app.get("/messages").await.text().await.unwrap(), "[]");
    assert_eq!(
        app.get("/messages?limit=5").await.text().await.unwrap(),
        "[]"
    );
}

#[tokio::test]
async fn postgres_unreachable_makes_reads_a_503_while_posts_still_succeed() {
    let mut settings = test_settings();
    let free = free_port();
    let app = Relay::ingest_only(settings.clone()).await;
    // A second instance of ingest-api on the same stream whose database is a port where nothing listens.
    settings.database_url = format!("postgres://postgres@127.0.0.1:{free}/nowhere");
    settings.redis_timeout_ms = 500;
    let broken = testkit::spawn_ingest(settings).await;
    let address = broken.url();
    for path in [
        "/messages",
        "/messages?limit=10",
        &format!("/messages/{}", uuid::Uuid::now_v7()),
    ] {
        let res = app.get_url(format!("{address}{path}")).await;
        assert_eq!(res.status(), 503, "{path}");
        assert!(res.headers().contains_key("retry-after"));
    }
    let res = app
        .client
        .post(format!("{address}/messages"))
        .header("content-type", "application/json")
        .body("1")
        .send();
    assert_eq!(res.await.unwrap().status(), 202);
    assert_eq!(app.get_url(format!("{address}/readyz")).await.status(), 200);
}

#[tokio::test]
async fn paging_with_after_never_shows_rows_committed_ahead_of_an_uncommitted_batch() {
    let app = Relay::ingest_only(test_settings()).await;
    let key = app.settings.stream_key.clone();
    let ids = testkit::xadd(
        &app.settings,
        &(0..4)
            .map(|i| testkit::entry(&i.to_string()))
            .collect::<Vec<_>>(),
    );
    let mut redis = testkit::redis(&app.settings);
    let group = model_group();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg(&group)
        .arg("0")
        .query(&mut redis)
        .unwrap();
    // Replica A takes entries 0–1 and has not committed them; replica B takes 2–3, commits and acks.
    for consumer in ["a", "b"] {
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&group)
            .arg(consumer)
            .arg("COUNT")
            .arg(2)
            .arg("STREAMS")
            .arg(&key)
            .arg(">")
            .query(&mut redis)
            .unwrap();
    }
    commit_and_ack(&app, &mut redis, &group, &ids[2..]).await;

    // A tailing client: what it is shown now it will never be shown again after `after=`.
    let page = app.get_page("/messages?after=0-0&limit=10").await;
    assert!(
        page.is_empty(),
        "rows ahead of an uncommitted batch: {page:?}"
    );

    // A commits and acknowledges: now all four are a prefix that can no longer change.
    commit_and_ack(&app, &mut redis, &group, &ids[..2]).await;
    let page = app.get_page("/messages?after=0-0&limit=10").await;
    assert_eq!(stream_ids(&page), ids);
}

/// Stores the entries `which` (stream ids) as rows and acknowledges them in `group`: a replica's commit.
async fn commit_and_ack(app: &Relay, redis: &mut redis::Connection, group: &str, which: &[String]) {
    let values: Vec<String> = which
        .iter()
        .map(|id| {
            let (ms, seq) = id.split_once('-').unwrap();
            format!("({ms}, {seq}, gen_random_uuid(), now(), '1')")
        })
        .collect();
    let sql = format!(
        "INSERT INTO messages (stream_ms, stream_seq, id, received_at, payload) VALUES {}",
        values.join(", ")
    );
    testkit::db::execute(&app.settings, sql).await;
    let _: usize = redis::cmd("XACK")
        .arg(&app.settings.stream_key)
        .arg(group)
        .arg(which)
        .query(redis)
        .unwrap();
}

/// The persister's group name, as the contract names it.
fn model_group() -> String {
    "persister".to_owned()
}
