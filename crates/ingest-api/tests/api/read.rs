//! `GET /messages` and `GET /messages/{id}`: paging, bad parameters, and reading a large table in
//! bounded memory.

use diesel::{PgConnection, RunQueryDsl};

use testkit::db::{pg, with_connection};
use testkit::procs::{free_port, memory_kib, Service};
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

fn next_link(res: &reqwest::Response) -> Option<String> {
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

/// Reads `/messages` of 100,000 rows (~100 MiB of JSON) from the real ingest-api binary while sampling its
/// resident memory: a server that buffered the response would grow by the body's size.
#[test]
fn reading_100000_rows_streams_in_bounded_memory() {
    let settings = test_settings();
    store::prepare_database(&settings.database_url).unwrap();
    insert_rows(&mut pg(&settings.database_url).unwrap(), 100_000, 1000);
    let ingest = Service::start_program(
        "ingest-api",
        std::path::Path::new(env!("CARGO_BIN_EXE_ingest-api")),
        &testkit::procs::env_for(&settings),
    );
    let pid = ingest.pid();
    let baseline = memory_kib(pid).0;
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        loop {
            let rss = memory_kib(pid).0;
            peak = peak.max(rss);
            if rss == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        peak
    });
    let res = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .unwrap()
        .get(format!("{}/messages", ingest.url()))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    // Count the array's elements without keeping them: Vec<IgnoredAny> holds zero-sized values.
    let reader = std::io::BufReader::new(res);
    let items: Vec<serde::de::IgnoredAny> = serde_json::from_reader(reader).unwrap();
    assert_eq!(items.len(), 100_000);
    ingest.kill();
    let peak = sampler.join().unwrap();
    testkit::cleanup(&settings);
    let grown_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!(
        "ingest-api RSS: baseline {} KiB, peak {peak} KiB (+{grown_mib} MiB) for ~100 MiB of JSON",
        baseline
    );
    assert!(peak > 0, "the sampler never read the process");
    assert!(
        grown_mib < 32,
        "ingest-api grew by {grown_mib} MiB while streaming ~100 MiB"
    );
}

#[tokio::test]
async fn unknown_routes_are_problem_404s() {
    let app = Relay::ingest_only(test_settings()).await;
    let res = app.get("/nope").await;
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_and_docs_render_it_locally() {
    let app = Relay::ingest_only(test_settings()).await;
    let res = app.get("/openapi.json").await;
    assert_eq!(res.status(), 200);
    let doc: serde_json::Value = res.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // The document is collected from the app's own route registrations; the contract's routes are in it.
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/messages", "post"),
        ("/messages", "get"),
        ("/messages/{id}", "get"),
        ("/channels/{channel}/messages", "post"),
        ("/channels/{channel}/messages", "get"),
        ("/channels", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/docs", "get"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} is not documented"
        );
    }
    for schema in ["Message", "Accepted", "Problem", "ChannelInfo"] {
        assert!(
            doc["components"]["schemas"][schema]["example"].is_object(),
            "{schema} has an example"
        );
    }
    // Every documented path answers (with anything but the catch-all 404).
    for path in paths.keys() {
        let concrete = path
            .replace("{id}", &uuid::Uuid::now_v7().to_string())
            .replace("{channel}", "chat.room1");
        let res = app.get(&concrete).await;
        let body = res.text().await.unwrap();
        assert!(
            !body.contains("/problems/not-found\""),
            "{path} is documented but not routed"
        );
    }
    // Every example request is accepted with the documented status.
    let mut sent = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let Some(content) = op["requestBody"]["content"].as_object() else {
                continue;
            };
            let success = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .find(|s| s.starts_with('2'))
                .unwrap()
                .parse::<u16>()
                .unwrap();
            for (content_type, media) in content {
                let mut examples: Vec<serde_json::Value> = media["examples"]
                    .as_object()
                    .map(|e| e.values().map(|x| x["value"].clone()).collect())
                    .unwrap_or_default();
                examples.extend(media.get("example").cloned());
                assert!(
                    !examples.is_empty(),
                    "{method} {path} {content_type} has an example"
                );
                for example in examples {
                    let body = match (content_type.as_str(), &example) {
                        ("application/json", v) => v.to_string(),
                        (_, serde_json::Value::String(text)) => text.clone(),
                        (_, v) => v.to_string(),
                    };
                    let res = app
                        .client
                        .request(
                            method.to_uppercase().parse().unwrap(),
                            format!(
                                "{}{}",
                                app.ingest_url(),
                                path.replace("{channel}", "chat.room1")
                            ),
                        )
                        .header("content-type", content_type)
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(
                        res.status(),
                        success,
                        "{method} {path} {content_type} {example}"
                    );
                    sent += 1;
                }
            }
        }
    }
    assert!(sent >= 3, "the examples were sent");
    let docs = app.get("/docs").await;
    assert_eq!(docs.status(), 200);
    let html = docs.text().await.unwrap();
    assert!(html.contains("/openapi.json"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the docs page fetches nothing from outside"
    );
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

#[tokio::test]
async fn sixteen_readers_that_never_read_hold_no_connection_a_paged_read_needs() {
    let app = Relay::ingest_only(test_settings()).await;
    // 20,000 rows of 1 KB: far more than a stalled reader's socket buffers hold.
    with_connection(&app.settings, |conn| insert_rows(conn, 20_000, 1_000)).await;
    let addr = &app.ingest_url()["http://".len()..];
    let mut stalled = Vec::new();
    for _ in 0..16 {
        stalled.push(testkit::raw::Raw::stalled_get(addr, "/messages").await); // and never read
    }
    // Let every stalled response fill its buffers and stop.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let started = std::time::Instant::now();
    let res = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        app.get("/messages?limit=10"),
    )
    .await
    .expect("a paged read answered within a second");
    assert_eq!(res.status(), 200);
    let page: Vec<serde_json::Value> = res.json().await.unwrap();
    assert_eq!(page.len(), 10);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    drop(stalled);
}

/// `limit=1000` of 1 MiB messages would be a gibibyte buffered per reader: a page ends at
/// `MAX_PAGE_BYTES` instead (after the message that passes it), and the `Link` chain still walks every
/// message exactly once.
#[tokio::test]
async fn a_page_of_large_messages_ends_at_its_byte_bound_and_the_links_still_walk_every_message() {
    let app = Relay::ingest_only(test_settings()).await;
    with_connection(&app.settings, |conn| insert_rows(conn, 12, 1024 * 1024)).await;
    let first = app.get("/messages?limit=1000").await;
    assert_eq!(first.status(), 200);
    let mut next = next_link(&first);
    let page: Vec<serde_json::Value> = first.json().await.unwrap();
    let max = ingest_api::read::MAX_PAGE_BYTES / (1024 * 1024) + 1;
    assert!(
        page.len() <= max,
        "a page of {} messages of 1 MiB, over its byte bound",
        page.len()
    );
    assert!(next.is_some(), "a short page still names the next one");
    let mut seen: Vec<i64> = page
        .iter()
        .map(|m| m["payload"]["i"].as_i64().unwrap())
        .collect();
    while let Some(path) = next {
        let res = app.get(&path).await;
        next = next_link(&res);
        let page: Vec<serde_json::Value> = res.json().await.unwrap();
        assert!(page.len() <= max);
        seen.extend(page.iter().map(|m| m["payload"]["i"].as_i64().unwrap()));
    }
    assert_eq!(seen, (1..=12).collect::<Vec<_>>());
}
